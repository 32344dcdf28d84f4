// Drives a C library that owns its sockets (libcurl's multi_socket interface, libiscsi's
// iscsi_get_fd/iscsi_which_events/iscsi_service, a non-blocking SSH session) from the event
// loop: the library says which descriptors it wants to read or write, the watcher waits on
// them with Asio and hands back what happened. The library keeps owning its descriptors:
// the watcher never reads, writes or closes them.
//
// Contract:
//  - watch(fd, wanted) starts watching `fd`, or changes what is wanted (any time, as often
//    as the library likes; asking for what is already awaited costs nothing). The
//    callback gets (fd, happened) on the watcher's executor, never inside watch(), and
//    `happened` holds only directions that were wanted when their wait was armed. An error
//    or hang-up is reported as every wanted direction: the library's own read or write
//    then finds it.
//  - Waits are one-shot and re-armed by the watcher after the callback returns, for what
//    is wanted then. The callback may watch, unwatch or refresh any descriptor (its own
//    too); it must not destroy the watcher.
//  - A descriptor that is already ready is acted on at once: Asio's epoll reactor is
//    edge-triggered, so a socket that became ready before its wait was armed may never
//    produce another edge. Before each new wait a zero-timeout poll() looks, and a ready
//    descriptor's event is posted instead of awaited.
//  - unwatch(fd) stops watching: pending waits end without a callback, and the descriptor
//    is left open (Asio's release(), not close()). Unwatch before the library closes it.
//  - A library may put a new socket behind the same descriptor number (libiscsi's
//    reconnect dup2()s it onto the old one). epoll registers the open file, not the number,
//    so the old registration would never fire again. refresh(fd) registers the descriptor
//    anew; with Options::detect_replaced (the default) watch() and every re-arm also compare
//    fstat's st_dev/st_ino with those seen at registration and refresh by themselves. The
//    old socket must be closed by then (dup2 closes it when it held its last reference).
//  - Destroying the watcher with waits pending is safe: their handlers find it gone and do
//    nothing. It must be destroyed on its executor's thread (or with the loop stopped).
#pragma once
#include <functional>
#include <memory>
#include <unordered_map>

#include "netblk/runtime.hpp"

namespace netblk {

enum class FdEvents : unsigned char { none = 0, read = 1, write = 2, read_write = 3 };
constexpr FdEvents operator|(FdEvents a, FdEvents b) noexcept {
  return static_cast<FdEvents>(static_cast<unsigned>(a) | static_cast<unsigned>(b));
}
constexpr FdEvents operator&(FdEvents a, FdEvents b) noexcept {
  return static_cast<FdEvents>(static_cast<unsigned>(a) & static_cast<unsigned>(b));
}
constexpr bool has(FdEvents set, FdEvents e) noexcept { return (set & e) != FdEvents::none; }

class FdWatcher {
 public:
  using Callback = std::function<void(int fd, FdEvents happened)>;
  struct Options {
    // Check with fstat, whenever a wait is armed and on every watch(), whether the socket
    // behind a descriptor number was replaced (one system call each). A library that always
    // unwatches before it closes or reuses a descriptor (libcurl) can turn it off.
    bool detect_replaced = true;
  };

  FdWatcher(Executor executor, Callback on_event, Options options);
  FdWatcher(Executor executor, Callback on_event) : FdWatcher(std::move(executor), std::move(on_event), Options{}) {}
  ~FdWatcher();
  FdWatcher(const FdWatcher&) = delete;
  FdWatcher& operator=(const FdWatcher&) = delete;

  // Watches `fd` for `wanted` (FdEvents::none keeps it registered but asks for nothing).
  // Throws std::system_error when the descriptor cannot be registered (not open).
  void watch(int fd, FdEvents wanted);
  // Stops watching `fd` and leaves it open; no callback for it follows. No-op when unwatched.
  void unwatch(int fd);
  // Unwatches every descriptor (before the library closes them all).
  void unwatch_all();
  // The socket behind `fd` was replaced: registers it anew and arms what is wanted.
  void refresh(int fd);
  // Arms every watched descriptor's wanted waits that are not pending (looking first with
  // poll()), for when the library ran on its own outside a callback and may have used up
  // readiness that no wait will report.
  void rearm_all();
  bool watching(int fd) const { return watches_.count(fd) != 0; }

 private:
  struct Watch;
  struct Shared;
  std::shared_ptr<Watch> add(int fd, FdEvents wanted);
  void drop(Watch& w);
  void renew(std::shared_ptr<Watch>& slot);
  bool replaced(const Watch& w) const;
  void arm(const std::shared_ptr<Watch>& w);
  void wait(const std::shared_ptr<Watch>& w, FdEvents direction);
  void deliver(int fd, FdEvents happened);

  Executor executor_;
  Options options_;
  std::shared_ptr<Shared> shared_;  // the callback and an alive flag, for pending handlers
  std::unordered_map<int, std::shared_ptr<Watch>> watches_;
};

}  // namespace netblk
