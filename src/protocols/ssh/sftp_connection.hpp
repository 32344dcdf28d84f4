// One SFTP session with one open remote file, over a libssh channel driven from the event
// loop: requests are encoded by netblk's codec (sftp_codec), queued, and written to the
// channel as its window allows; replies are cut from the channel's bytes and matched to
// their requests by id, DATA straight into the reader's buffer. Any number of requests may
// be in flight (the Client bounds them). Nothing here waits for the server: libssh runs in
// non-blocking mode (it queues what the socket does not take at once and sends it when
// the socket is writable) and the FdWatcher wakes the connection when its socket is ready.
#pragma once
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/fd_watcher.hpp"
#include "netblk/runtime.hpp"
#include "protocols/ssh/sftp_codec.hpp"
#include "protocols/ssh/ssh_config.hpp"
#include "protocols/ssh/ssh_session.hpp"

namespace netblk::ssh {

enum class OpenMode { read_only, read_write, create };

// One request about the open file. It can be submitted again, unchanged, to a new
// connection after the old one was lost (the handle is the connection's).
struct Request {
  enum class Kind { init, limits, open, fstat, read, write, fsync, fsetstat, close };
  explicit Request(const Executor& ex) : done(ex) {}
  Kind kind = Kind::read;
  std::uint64_t offset = 0;
  std::uint32_t length = 0;         // read, write
  std::uint64_t size = 0;           // fsetstat
  std::span<std::byte> into;        // read: `length` bytes
  std::span<const std::byte> data;  // write: `length` bytes

  // The outcome, valid once `done` is set.
  AsyncEvent done;
  bool lost = false;  // the connection died first; `why` says how
  std::string why;
  std::uint8_t reply_type = 0;
  sftp::Status status;          // a STATUS reply
  std::uint32_t got = 0;        // DATA: bytes stored in `into`; VERSION: the version
  std::vector<std::byte> body;  // HANDLE, ATTRS, EXTENDED_REPLY, VERSION

  // The connection's bookkeeping.
  std::uint32_t id = 0;
  unsigned unsent = 0;  // queued pieces not yet handed to libssh

  // A read or write of `length` bytes at `offset`.
  void set_io(Kind k, std::uint64_t at, std::size_t bytes) {
    kind = k;
    offset = at;
    length = static_cast<std::uint32_t>(bytes);
  }
  // Ready to be submitted again.
  void reset();
  bool ok() const noexcept { return reply_type == sftp::kStatusReply && status.code == sftp::kOk; }
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  // Connects (SSH on a worker thread within `limit`, then SFTP on the loop), opens the
  // file and reads its size. Throws Error with a one-line message.
  static Task<std::shared_ptr<Connection>> open(Executor ex, SshConfig config, std::string name, OpenMode mode,
                                                std::chrono::milliseconds limit);

  Connection(Executor ex, std::shared_ptr<Session> session, std::string name, std::chrono::seconds io_timeout);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Queues `r` (its results reset by the caller); `r.done` is set when it is answered or
  // the connection dies. `r` must live until then.
  void submit(Request& r);
  bool alive() const noexcept { return !dead_; }
  // Called (posted, never from inside the connection) once when the connection dies.
  std::function<void(const std::string& why)> on_dead;
  // Fails every request in flight as lost, without calling on_dead.
  void shutdown(const std::string& why);
  // Closes the remote handle (best effort, bounded by the I/O timeout), then shuts down.
  Task<void> close_file();
  // FSETSTAT size: truncates or extends the file. Throws on failure.
  Task<void> truncate(std::uint64_t size);

  std::uint64_t file_size() const noexcept { return file_size_; }
  bool regular_file() const noexcept { return regular_; }
  bool has_fsync() const noexcept { return has_fsync_; }
  std::uint32_t max_read() const noexcept { return max_read_; }
  std::uint32_t max_write() const noexcept { return max_write_; }

 private:
  struct Segment {
    std::vector<std::byte> owned;
    std::span<const std::byte> view;  // used when `owned` is empty
    std::size_t done = 0;
    Request* owner = nullptr;
    std::span<const std::byte> bytes() const { return owned.empty() ? view : std::span<const std::byte>(owned); }
  };
  void start();
  Task<void> start_sftp(std::string path, OpenMode mode);
  // Submits and waits; throws Error(ECONNRESET) when the connection died first.
  Task<void> call(Request& r);
  std::vector<std::byte> encode(const Request& r) const;
  void enqueue(std::vector<std::byte> owned, std::span<const std::byte> view, Request* owner);
  void schedule_pump();
  void pump();
  bool send();     // true when libssh took bytes
  bool receive();  // true when bytes came in
  void handed_over(Segment& s);
  void dispatch(const sftp::Reply& reply);
  std::span<std::byte> data_sink(std::uint32_t id, std::uint32_t length);
  void die(const std::string& why, bool notify);
  void rewatch();
  Task<void> watchdog(std::shared_ptr<Connection> self);
  bool has_output() const noexcept { return stage_off_ < stage_.size() || !out_.empty(); }

  Executor ex_;
  std::shared_ptr<Session> session_;
  std::string name_;
  std::chrono::seconds io_timeout_;
  sftp::ReplyReader reader_;
  std::deque<Segment> out_;
  // Small pieces gathered into one channel packet; bytes from stage_off_ on are not yet
  // taken by libssh.
  std::vector<std::byte> stage_;
  std::size_t stage_off_ = 0;
  std::unordered_map<std::uint32_t, Request*> in_flight_;
  Request* init_ = nullptr;  // INIT awaiting VERSION (which has no id)
  std::uint32_t next_id_ = 1;
  bool pump_posted_ = false;
  bool dead_ = false;
  std::string death_;
  std::chrono::steady_clock::time_point last_progress_;
  asio::steady_timer timer_;

  std::string path_;
  OpenMode mode_ = OpenMode::read_only;
  std::string handle_;
  std::uint64_t file_size_ = 0;
  bool regular_ = false;
  bool has_fsync_ = false;
  std::uint32_t max_read_ = sftp::kDefaultReadWrite, max_write_ = sftp::kDefaultReadWrite;

  FdWatcher watcher_;  // last: destroyed first, before the session's socket closes
};

}  // namespace netblk::ssh
