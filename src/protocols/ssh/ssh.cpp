// The SSH protocol driver: ssh://[USER@]HOST[:PORT]/PATH, or driver=ssh with QEMU's
// options, over SFTP. SSH itself (key exchange, ciphers, host keys, agent) is libssh's;
// the SFTP requests are netblk's own (sftp_codec), many in flight, each as large as the
// server allows (limits@openssh.com), on one channel driven from the event loop.
//
// A node owns a Client that keeps one connection. When it drops, the requests in flight
// wait for a new one (x-reconnect-delay, 300 s by default) and are sent again; past that
// they fail with EIO and a message that says why the server could not be reached.
#include <algorithm>
#include <atomic>
#include <thread>

#include <asio/executor_work_guard.hpp>
#include <asio/post.hpp>
#include <libssh/libssh.h>

#include "block/driver.hpp"
#include "block/pieces.hpp"
#include "core/backoff.hpp"
#include "core/log.hpp"
#include "protocols/ssh/sftp_connection.hpp"

namespace netblk::ssh {
namespace {

using Clock = std::chrono::steady_clock;

// One connection attempt (TCP, SSH, SFTP and the open) never takes longer than this.
constexpr std::chrono::milliseconds kAttemptLimit{30000};
// Requests in flight per connection, over all callers: as OpenSSH's sftp client (64
// requests of up to 255 KiB on OpenSSH 9.2).
constexpr unsigned kRequestsInFlight = 64;

// "NAME: " from the start of an error message, for quoting it after the name again.
std::string without_name(const std::string& message, const std::string& name) {
  return message.starts_with(name + ": ") ? message.substr(name.size() + 2) : message;
}

class Client : public std::enable_shared_from_this<Client> {
 public:
  Client(Executor ex, SshConfig config, OpenMode mode)
      : ex_(std::move(ex)),
        config_(std::move(config)),
        name_(display_name(config_)),
        mode_(mode),
        changed_(ex_),
        sleeper_(ex_),
        slots_(ex_, kRequestsInFlight) {}

  const Executor& executor() const noexcept { return ex_; }
  const SshConfig& config() const noexcept { return config_; }
  const std::string& name() const noexcept { return name_; }
  const Connection& connection() const noexcept { return *conn_; }

  Task<void> open() {
    std::shared_ptr<Connection> c = co_await Connection::open(ex_, config_, name_, mode_, kAttemptLimit);
    adopt(std::move(c));
  }

  // Runs `r` to its reply, on a new connection after a drop. The caller reads the reply.
  Task<void> run(Request& r, const char* what) {
    co_await slots_.acquire();
    const AsyncSemaphore::Permit permit(slots_);
    while (true) {
      std::shared_ptr<Connection> conn = co_await acquire(what);
      r.reset();
      conn->submit(r);
      co_await r.done.wait();
      if (!r.lost) co_return;
      if (config_.reconnect_delay.count() == 0)
        throw Error(EIO, name_ + ": " + what + " failed: the connection to the server was lost (" + r.why + ")");
    }
  }

  // The error for a reply that is not what `what` wanted.
  Error failure(const Request& r, const char* what) const {
    if (r.reply_type == sftp::kStatusReply) {
      const int err = sftp::status_errno(r.status.code);
      return Error(err ? err : EIO, name_ + ": " + what + " failed: " + sftp::status_text(r.status));
    }
    return Error(EPROTO, name_ + ": " + what + " failed: unexpected SFTP reply type " + std::to_string(r.reply_type));
  }

  Task<void> close() {
    closing_ = true;
    sleeper_.cancel();
    changed_.notify_all();
    if (conn_) co_await conn_->close_file();
  }

  void shutdown() {
    closing_ = true;
    sleeper_.cancel();
    if (conn_) conn_->shutdown("closed");
    changed_.notify_all();
  }

 private:
  void adopt(std::shared_ptr<Connection> c) {
    std::weak_ptr<Client> weak = weak_from_this();
    // Only the current connection's death counts (an old one's may be reported late).
    c->on_dead = [weak, which = c.get()](const std::string& why) {
      if (auto self = weak.lock(); self && self->conn_.get() == which) self->lost(why);
    };
    conn_ = std::move(c);
    changed_.notify_all();
  }

  void lost(const std::string& why) {
    if (closing_) return;
    NETBLK_LOG(warn, "{}: connection lost ({}); reconnecting", name_, why);
    start_reconnect(false);
  }

  void start_reconnect(bool single_attempt) {
    if (reconnecting_ || closing_) return;
    reconnecting_ = true;
    auto self = shared_from_this();
    asio::co_spawn(ex_, [self, single_attempt]() { return self->reconnect(single_attempt); },
                   [self](std::exception_ptr) {
                     self->reconnecting_ = false;
                     self->changed_.notify_all();
                   });
  }

  Task<void> reconnect(bool single_attempt) {
    // Attempts 100 ms apart, doubling to 2 s, until x-reconnect-delay has passed.
    const auto budget = std::chrono::duration_cast<std::chrono::milliseconds>(config_.reconnect_delay);
    const auto deadline = Clock::now() + budget;
    Backoff backoff(BackoffPolicy{.first = std::chrono::milliseconds(100),
                                  .cap = std::chrono::seconds(2),
                                  .jitter = 0.2,
                                  .give_up = budget});
    const OpenMode mode = mode_ == OpenMode::create ? OpenMode::read_write : mode_;
    while (!closing_) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      const auto limit = single_attempt ? kAttemptLimit : std::clamp(left, std::chrono::milliseconds(1000), kAttemptLimit);
      try {
        std::shared_ptr<Connection> c = co_await Connection::open(ex_, config_, name_, mode, limit);
        if (closing_) {
          c->shutdown("closed");
          co_return;
        }
        given_up_ = false;
        adopt(std::move(c));
        NETBLK_LOG(warn, "{}: reconnected", name_);
        co_return;
      } catch (const Error& e) {
        last_error_ = without_name(e.what(), name_);
        NETBLK_LOG(debug, "{}: reconnect failed: {}", name_, last_error_);
      }
      if (single_attempt) break;
      const auto delay = backoff.next_delay();
      if (!delay) break;
      sleeper_.expires_after(*delay);
      std::error_code ec;
      co_await sleeper_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    given_up_ = true;
  }

  // The live connection; waits while it is being re-established.
  Task<std::shared_ptr<Connection>> acquire(const char* what) {
    bool kicked = false;
    while (true) {
      if (closing_) throw Error(EIO, name_ + ": " + what + " failed: the drive is closed");
      if (conn_ && conn_->alive()) co_return conn_;
      if (!reconnecting_) {
        if (given_up_) {
          if (kicked)
            throw Error(EIO, name_ + ": " + what + " failed: the connection to the server was lost and not " +
                                 "re-established within " + std::to_string(config_.reconnect_delay.count()) +
                                 " s (" + last_error_ + ")");
          // As the NBD client after reconnect-delay: each new request tries once more.
          kicked = true;
          start_reconnect(true);
        } else {
          start_reconnect(false);
        }
      }
      co_await changed_.wait();
    }
  }

  Executor ex_;
  SshConfig config_;
  std::string name_;
  OpenMode mode_;
  std::shared_ptr<Connection> conn_;
  bool reconnecting_ = false;
  bool given_up_ = false;
  bool closing_ = false;
  std::string last_error_;
  AsyncCondition changed_;
  asio::steady_timer sleeper_;
  AsyncSemaphore slots_;
};

// The thread a node's SSH traffic runs on, with an io_context of its own: the caller's loop
// may then block for a while (convert writes its target file from the loop) without the
// connection stalling, and decryption overlaps the caller's work. Reading 256 MiB into a
// file on disk took 1.33 s with the connection on the caller's loop and OpenSSH's sftp
// 0.95 s (decisions.md, "SFTP on libssh's channel").
class IoThread {
 public:
  IoThread()
      : thread_([this] {
          ctx_.run();
          ran_out_ = true;
        }) {}
  ~IoThread() {
    work_.reset();
    // Let run() end by itself once nothing is left: a worker-pool thread that has just
    // completed an offload() for this context still holds, and then releases, its claim on
    // it. Stopping at once and destroying the context under that thread crashed a failed
    // open about one time in ten under load. What has not ended within 50 ms is stopped.
    for (int i = 0; i < 50 && !ran_out_; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (!ran_out_) asio::post(ctx_, [this] { ctx_.stop(); });  // after whatever was posted before
    thread_.join();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));  // the releasing thread leaves stop()
  }
  IoThread(const IoThread&) = delete;
  IoThread& operator=(const IoThread&) = delete;
  Executor executor() { return ctx_.get_executor(); }

 private:
  asio::io_context ctx_{1};
  asio::executor_work_guard<asio::io_context::executor_type> work_ = asio::make_work_guard(ctx_);
  std::atomic<bool> ran_out_{false};
  std::thread thread_;  // last: runs ctx_
};

class SshNode final : public Node {
 public:
  SshNode(const OpenContext& ctx, std::unique_ptr<IoThread> io, std::shared_ptr<Client> client)
      : Node(ctx.executor), io_(std::move(io)), client_(std::move(client)), no_flush_(ctx.cache_no_flush) {
    const Connection& c = client_->connection();
    size_ = c.file_size();
    regular_ = c.regular_file();
    caps_.read_only = ctx.read_only;
    caps_.can_flush = true;
    caps_.can_grow = !ctx.read_only;  // SFTP writes past the end extend the file
    limits_.request_alignment = 1;
  }
  ~SshNode() override {
    // The client (its timers, its connection) is shut down and destroyed on its thread,
    // before that thread's io_context goes: its timers must not outlive their service.
    asio::post(io_->executor(), [client = std::move(client_)] { client->shutdown(); });
    io_.reset();  // runs the shutdown, then stops the thread
  }

  std::string_view driver() const override { return "ssh"; }
  Json options() const override { return canonical_options(client_->config()); }
  std::string plain_filename() const override { return ssh::plain_filename(client_->config()); }
  // A regular file created (or extended) by truncation reads as zeroes.
  bool has_zero_init() const override { return regular_; }

 protected:
  Task<void> co_read(std::uint64_t offset, std::span<std::byte> buf) override {
    auto work = [this, offset, buf]() { return read_all(offset, buf); };
    co_await on_io_thread(std::move(work));
  }

  Task<void> co_write(std::uint64_t offset, std::span<const std::byte> buf, unsigned) override {
    auto work = [this, offset, buf]() { return write_all(offset, buf); };
    co_await on_io_thread(std::move(work));
  }

  Task<void> co_flush() override {
    if (no_flush_ || read_only()) co_return;
    auto work = [this]() { return fsync(); };
    co_await on_io_thread(std::move(work));
  }

  Task<void> co_close() override {
    auto work = [client = client_]() { return client->close(); };
    co_await on_io_thread(std::move(work));
  }

 private:
  // Runs `work` (a coroutine) on the connection's thread; resumes here.
  template <class Work>
  Task<void> on_io_thread(Work work) {
    const Executor ex = io_->executor();  // named: not a temporary in the co_await (GCC 12)
    co_await asio::co_spawn(ex, std::move(work), asio::use_awaitable);
  }

  // The work itself, on the I/O thread.
  Task<void> read_all(std::uint64_t offset, std::span<std::byte> buf) {
    auto read_one = [this, buf, offset](std::uint64_t at, std::uint64_t n) {
      return read_piece(offset + at, buf.subspan(at, n));
    };
    // The Client bounds all callers' requests together.
    co_await for_each_piece(buf.size(), client_->connection().max_read(), kRequestsInFlight, read_one);
  }

  Task<void> write_all(std::uint64_t offset, std::span<const std::byte> buf) {
    auto write_one = [this, buf, offset](std::uint64_t at, std::uint64_t n) {
      return write_piece(offset + at, buf.subspan(at, n));
    };
    co_await for_each_piece(buf.size(), client_->connection().max_write(), kRequestsInFlight, write_one);
  }

  Task<void> fsync() {
    if (!client_->connection().has_fsync())
      throw Error(ENOTSUP, client_->name() + ": flush failed: the server does not offer fsync@openssh.com, so " +
                               "writes cannot be made durable (cache=unsafe, or cache.no-flush=on, skips flushes)");
    Request r(client_->executor());
    r.kind = Request::Kind::fsync;
    co_await client_->run(r, "flush");
    if (!r.ok()) throw client_->failure(r, "flush");
  }

  Task<void> read_piece(std::uint64_t offset, std::span<std::byte> into) {
    // A server may send fewer bytes than asked: ask again for the rest.
    while (!into.empty()) {
      Request r(client_->executor());
      r.set_io(Request::Kind::read, offset, into.size());
      r.into = into;
      co_await client_->run(r, "read");
      if (r.reply_type == sftp::kStatusReply && r.status.code == sftp::kEof) {
        std::fill(into.begin(), into.end(), std::byte{0});  // past the end of a shrunk file
        co_return;
      }
      if (r.reply_type != sftp::kDataReply || r.got == 0) throw client_->failure(r, "read");
      offset += r.got;
      into = into.subspan(r.got);
    }
  }

  Task<void> write_piece(std::uint64_t offset, std::span<const std::byte> data) {
    Request r(client_->executor());
    r.set_io(Request::Kind::write, offset, data.size());
    r.data = data;
    co_await client_->run(r, "write");
    if (!r.ok()) throw client_->failure(r, "write");
  }

  std::unique_ptr<IoThread> io_;
  std::shared_ptr<Client> client_;
  bool no_flush_ = false;
  bool regular_ = false;
};

Task<std::unique_ptr<Node>> open_ssh(const OpenContext& ctx, spec::Options& o) {
  SshConfig config = config_from_options(o);
  prepare_library();
  auto io = std::make_unique<IoThread>();
  auto client = std::make_shared<Client>(io->executor(), std::move(config),
                                         ctx.read_only ? OpenMode::read_only : OpenMode::read_write);
  auto start = [client]() { return client->open(); };
  std::exception_ptr failure;
  try {
    const Executor io_ex = io->executor();  // named: not a temporary in the co_await (GCC 12)
    co_await asio::co_spawn(io_ex, std::move(start), asio::use_awaitable);
  } catch (...) {
    failure = std::current_exception();
  }
  if (failure) {
    asio::post(io->executor(), [client = std::move(client)] { client->shutdown(); });  // as ~SshNode
    io.reset();
    std::rethrow_exception(failure);
  }
  auto node = std::make_unique<SshNode>(ctx, std::move(io), client);
  co_return node;
}

// `netblk create` over SSH: creates (or truncates) the remote file and sets its size.
Task<void> create_ssh(const OpenContext& ctx, spec::Options& o, std::uint64_t size) {
  SshConfig config = config_from_options(o);
  prepare_library();
  const std::string name = display_name(config);
  std::shared_ptr<Connection> conn = co_await Connection::open(ctx.executor, config, name, OpenMode::create,
                                                               kAttemptLimit);
  std::exception_ptr failure;
  try {
    co_await conn->truncate(size);
  } catch (...) {
    failure = std::current_exception();
  }
  co_await conn->close_file();
  if (failure) std::rethrow_exception(failure);
}

const DriverRegistration kSsh{ProtocolDriver{
    .name = "ssh",
    .prefixes = {"ssh"},
    .parse_filename = parse_filename,
    .open = open_ssh,
    .create = create_ssh,
    .library_version = [] { return std::string("libssh ") + ssh_version(0); },
}};

}  // namespace
}  // namespace netblk::ssh
