// Connections of client libraries whose connecting call blocks and may never return
// (glfs_init, rados_connect): each is made once, on a thread of its own, and shared by every
// node of the process that names the same configuration.
#pragma once
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "netblk/error.hpp"
#include "netblk/runtime.hpp"

namespace netblk {

// The outcome of one connecting call. Handle is the library's connection (a pointer, null
// until made). A driver's connection derives from it, makes the connection in an init()
// that ends with finish(), and waiters learn the outcome through wait_for().
template <class Handle>
class SharedConnection {
 public:
  // True once finish() was called, false when `limit` passed first.
  bool wait_for(std::chrono::steady_clock::duration limit) {
    std::unique_lock lock(m_);
    return cv_.wait_for(lock, limit, [this] { return done_; });
  }
  bool failed() {
    std::lock_guard lock(m_);
    return done_ && !handle_;
  }
  bool ok() {
    std::lock_guard lock(m_);
    return handle_ != nullptr;
  }
  // Valid once ok() said true.
  Handle handle() const noexcept { return handle_; }
  int err() const noexcept { return err_; }
  const std::string& error() const noexcept { return error_; }

 protected:
  // The connection (or null), and else the errno and message of its failure.
  void finish(Handle handle, int err, std::string error) {
    {
      std::lock_guard lock(m_);
      handle_ = handle;
      err_ = err;
      error_ = std::move(error);
      done_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool done_ = false;
  Handle handle_ = nullptr;
  int err_ = 0;
  std::string error_;
};

// The connection for `key` into `out` (not returned: GCC 12 may destroy an object returned
// from a coroutine twice): the one made or being made, or else a new Conn on which
// `init(conn)` runs on a thread of its own, so that a call that never returns holds no pool
// thread nor keeps the process from exiting. A connection that failed is made again by the
// next caller. Waits at most `limit`, then throws ETIMEDOUT with `too_slow`; a failed
// connection throws its errno with "NAME: its message". The registry of each Conn type and
// its connections are never destroyed: no static destructor may run while the library's
// threads do.
template <class Conn, class Init>
Task<void> connect_shared(const std::string& key, Init init, std::chrono::steady_clock::duration limit,
                          const std::string& name, const std::string& too_slow, std::shared_ptr<Conn>& out) {
  struct Registry {
    std::mutex m;
    std::map<std::string, std::shared_ptr<Conn>> connections;
  };
  static auto* registry = new Registry;
  std::shared_ptr<Conn> conn;
  bool start = false;
  {
    std::lock_guard lock(registry->m);
    auto& slot = registry->connections[key];
    if (!slot || slot->failed()) {
      slot = std::make_shared<Conn>();
      start = true;
    }
    conn = slot;
  }
  if (start) std::thread([conn, init] { init(*conn); }).detach();
  auto wait = [conn, limit] { return conn->wait_for(limit); };
  const bool finished = co_await offload(std::move(wait));
  if (!finished) throw Error(ETIMEDOUT, too_slow);
  if (!conn->ok()) throw Error(conn->err(), name + ": " + conn->error());
  out = std::move(conn);
}

}  // namespace netblk
