// The NBD client protocol driver: nbd://, nbd+tcp://, nbd+unix://, nbds*:// and the legacy
// nbd:host:port names, or driver=nbd with QEMU's options.
//
// A node owns a Client shared with its background coroutines. The Client keeps one
// connection, or several (round-robin by load) when the server advertises multi-conn.
// When a connection drops, its requests wait for a new one and are sent again, so a
// server restart costs no data; the wait is bounded by reconnect-delay (netblk's default
// when not given: kDefaultReconnect), after which requests fail with EIO.
#include <algorithm>
#include <cstring>
#include <thread>

#include <asio/executor_work_guard.hpp>
#include <gnutls/gnutls.h>

#include "block/driver.hpp"
#include "block/pieces.hpp"
#include "core/backoff.hpp"
#include "core/deadline.hpp"
#include "core/log.hpp"
#include "protocols/nbd/nbd_config.hpp"
#include "protocols/nbd/nbd_connection.hpp"
#include "protocols/nbd/nbd_tls.hpp"

namespace netblk::nbd_client {
namespace {

using Clock = std::chrono::steady_clock;

// NBD compact headers carry 32-bit lengths; zero and trim requests are cut below that
// (by the node, at Limits::max_zero / max_discard; QEMU's client cuts them at the max
// block size; servers accept far more). Extended headers carry 64-bit lengths: no limit.
constexpr std::uint64_t kMaxZeroRequest = 1u << 30;

// Retries (open-timeout's attempts, reconnects): 50 ms, doubling to `cap`, until `give_up`.
BackoffPolicy retry_policy(std::chrono::milliseconds cap, std::chrono::milliseconds give_up) {
  return BackoffPolicy{.first = std::chrono::milliseconds(50), .cap = cap, .jitter = 0.0, .give_up = give_up};
}

// read_to_file() asks in requests of this size and splices their payloads into the file;
// a client has at most this many of them in flight per connection, whatever the number
// of callers. Measured copying 1 GiB from nbdkit into tmpfs (convert: 8 workers, 2 MiB
// chunks):
// - over a unix socket 256 KiB requests took 0.63 s against 0.72 s for 1 MiB (nbdkit
//   serves small ones from a buffer that stays in its cache);
// - over loopback TCP, medians of 21 interleaved runs: 8 requests of 1 MiB in flight
//   0.614 s, 8 of 512 KiB 0.603 s, 16 of 1 MiB 0.629 s; qemu-img (8 of 2 MiB) 0.637 s.
//   nbdkit sends the replies of a connection under one lock, so requests beyond what it
//   can send only add threads contending for it (its CPU per GiB: 0.51 s against 0.53 s).
//   8 MiB in flight keeps a link with a large bandwidth-delay product busy.
constexpr std::uint64_t kFilePieceUnix = 256u << 10, kFilePieceTcp = 1u << 20;
constexpr unsigned kFilePiecesInFlightUnix = 16, kFilePiecesInFlightTcp = 8;

unsigned file_pieces_in_flight(const NbdConfig& c) {
  return (c.address.type == NbdAddress::Type::unix_socket ? kFilePiecesInFlightUnix : kFilePiecesInFlightTcp) *
         std::max(c.connections, 1u);
}

class Client : public std::enable_shared_from_this<Client> {
 public:
  Client(Executor ex, NbdConfig config)
      : ex_(std::move(ex)),
        config_(std::move(config)),
        name_(display_name(config_)),
        changed_(ex_),
        sleeper_(ex_),
        file_pieces_(ex_, file_pieces_in_flight(config_)) {}

  const ExportInfo& info() const noexcept { return info_; }
  const NbdConfig& config() const noexcept { return config_; }
  const std::string& name() const noexcept { return name_; }
  // Bounds read_to_file()'s requests in flight over all its callers.
  AsyncSemaphore& file_pieces() noexcept { return file_pieces_; }

  // Connects (retrying until open-timeout when given) and opens the extra multi-conn
  // connections.
  Task<void> open() {
    // open-timeout: attempts 50 ms apart, doubling to 1 s, until it has passed.
    const auto start = Clock::now();
    Backoff backoff(retry_policy(std::chrono::seconds(1), config_.open_timeout), start);
    const auto deadline = config_.open_timeout.count() ? backoff.deadline() : start + kAttemptTimeout;
    std::shared_ptr<Connection> first;
    while (true) {
      std::optional<std::chrono::milliseconds> delay;
      try {
        first = co_await connect_one(std::min(deadline, Clock::now() + kAttemptTimeout));
      } catch (const Error& e) {
        if (config_.open_timeout.count() == 0 || !(delay = backoff.next_delay())) throw;
        NETBLK_LOG(debug, "{}: {}; retrying", name_, e.what());
      }
      if (first) break;
      co_await sleep_for(*delay);
    }
    info_ = first->info();
    slots_.push_back(first);
    const bool multi = (info_.flags & nbd::kFlagCanMultiConn) && config_.connections > 1;
    if (multi) {
      // The others in parallel; a server that refuses more connections leaves us fewer.
      std::size_t waiting = config_.connections - 1;
      std::vector<std::shared_ptr<Connection>> extra(waiting);
      AsyncCondition all_done(ex_);
      auto self = shared_from_this();
      for (std::size_t i = 0; i < extra.size(); ++i) {
        asio::co_spawn(
            ex_,
            [self, i, &extra]() -> Task<void> {
              auto conn = co_await self->connect_one(Clock::now() + kAttemptTimeout);
              extra[i] = std::move(conn);
            },
            [&](std::exception_ptr e) {
              if (e) {
                try {
                  std::rethrow_exception(e);
                } catch (const std::exception& ex) {
                  NETBLK_LOG(debug, "{}: extra connection failed: {}", name_, ex.what());
                }
              }
              --waiting;
              all_done.notify_all();
            });
      }
      while (waiting) co_await all_done.wait();
      for (auto& c : extra)
        if (c) slots_.push_back(std::move(c));
    }
    reconnecting_.assign(slots_.size(), false);
    for (std::size_t i = 0; i < slots_.size(); ++i) watch(i);
    NETBLK_LOG(debug, "{}: {} connection(s), size {}, flags {}, structured {}, extended {}, block status {}", name_,
               slots_.size(), info_.size, info_.flags, info_.structured, info_.extended,
               info_.base_allocation.has_value());
  }

  // Runs one request to completion, on a new connection after a drop.
  Task<void> run(Pending& p, const char* what) {
    // A request is sent again after a drop until reconnect-delay has passed since the
    // first drop (0: fail at once, as QEMU's default).
    const auto budget = config_.reconnect_delay.value_or(kDefaultReconnect);
    std::optional<Clock::time_point> lost_since;
    while (true) {
      std::shared_ptr<Connection> conn = co_await acquire();
      conn->submit(p);
      co_await p.done.wait();
      if (p.lost) {
        const auto now = Clock::now();
        if (!lost_since) lost_since = now;
        if (now - *lost_since >= budget)
          throw Error(EIO, name_ + ": " + what + " failed: the connection to the server was lost (" + p.message + ")");
        continue;
      }
      if (p.file_write_failed) throw FileWriteError(p.error, name_ + ": " + p.message);
      if (p.error) {
        std::string msg = name_ + ": " + what + " failed: " + (p.message.empty() ? std::strerror(p.error) : p.message);
        throw Error(p.error, msg);
      }
      co_return;
    }
  }

  // Flush (when writable) and say goodbye on every connection; stops all coroutines.
  Task<void> close() {
    closing_ = true;
    sleeper_.cancel();
    for (auto& c : slots_)
      if (c) co_await c->disconnect();
    shutdown();
  }

  void shutdown() {
    closing_ = true;
    sleeper_.cancel();
    for (auto& c : slots_)
      if (c) c->shutdown("closed");
    changed_.notify_all();
  }

 private:
  Task<std::shared_ptr<Connection>> connect_one(Clock::time_point deadline) {
    std::shared_ptr<Stream> stream = co_await connect_stream(config_.address, deadline, name_);
    // The handshake shares the deadline: a server that accepts and then says nothing
    // must not hang the open.
    Deadline limit(ex_, deadline, [stream] { stream->close(); });
    auto reader = std::make_unique<StreamReader>(stream);
    ExportInfo info;
    std::exception_ptr failure;
    try {
      info = co_await handshake(*reader, stream, config_, name_);
    } catch (...) {
      failure = std::current_exception();
    }
    limit.cancel();
    if (limit.expired()) {
      stream->close();
      throw Error(ETIMEDOUT, name_ + ": the NBD handshake timed out");
    }
    if (failure) {
      stream->close();
      try {
        std::rethrow_exception(failure);
      } catch (const std::system_error& e) {
        throw Error(ECONNRESET, name_ + ": NBD handshake failed: " +
                                    (e.code() == asio::error::eof ? std::string("the server closed the connection")
                                                                  : e.code().message()));
      }
    }
    auto conn = std::make_shared<Connection>(ex_, stream, std::move(reader), info, name_, config_.io_timeout);
    conn->start();
    co_return conn;
  }

  void watch(std::size_t slot) {
    std::weak_ptr<Client> weak = weak_from_this();
    slots_[slot]->on_dead = [weak, slot](const std::string& why) {
      if (auto self = weak.lock()) self->lost(slot, why);
    };
  }

  void lost(std::size_t slot, const std::string& why) {
    if (closing_) return;
    NETBLK_LOG(warn, "{}: connection lost ({}); reconnecting", name_, why);
    start_reconnect(slot, false);
    changed_.notify_all();
  }

  void start_reconnect(std::size_t slot, bool single_attempt) {
    if (reconnecting_[slot] || closing_) return;
    reconnecting_[slot] = true;
    auto self = shared_from_this();
    asio::co_spawn(ex_, [self, slot, single_attempt]() { return self->reconnect(slot, single_attempt); },
                   [self, slot](std::exception_ptr) {
                     self->reconnecting_[slot] = false;
                     self->changed_.notify_all();
                   });
  }

  Task<void> reconnect(std::size_t slot, bool single_attempt) {
    // Attempts 50 ms apart, doubling to 2 s, until reconnect-delay has passed; close()
    // cuts a wait short.
    const auto budget = config_.reconnect_delay.value_or(kDefaultReconnect);
    const auto deadline = Clock::now() + budget;
    Backoff backoff(retry_policy(std::chrono::seconds(2), budget));
    while (!closing_) {
      try {
        auto conn = co_await connect_one(std::min(deadline, Clock::now() + kAttemptTimeout) +
                                         (single_attempt || budget.count() == 0 ? kAttemptTimeout : Clock::duration{}));
        if (conn->info().size != info_.size) {
          conn->shutdown("export size changed");
          throw Error(EIO, name_ + ": the export's size changed from " + std::to_string(info_.size) + " to " +
                               std::to_string(conn->info().size) + " bytes across a reconnect");
        }
        if (closing_) {
          conn->shutdown("closed");
          co_return;
        }
        slots_[slot] = std::move(conn);
        watch(slot);
        given_up_ = false;
        NETBLK_LOG(warn, "{}: reconnected", name_);
        co_return;
      } catch (const Error& e) {
        NETBLK_LOG(debug, "{}: reconnect failed: {}", name_, e.what());
        last_error_ = e.what();
      }
      if (single_attempt || budget.count() == 0) break;
      const auto delay = backoff.next_delay();
      if (!delay) break;
      sleeper_.expires_after(*delay);
      std::error_code ec;
      co_await sleeper_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    if (std::none_of(slots_.begin(), slots_.end(), [](auto& c) { return c->alive(); })) given_up_ = true;
  }

  // A live connection, the least loaded; waits while all are reconnecting.
  Task<std::shared_ptr<Connection>> acquire() {
    bool kicked = false;
    while (true) {
      std::shared_ptr<Connection> best;
      const std::size_t n = slots_.size();
      for (std::size_t k = 0; k < n; ++k) {
        auto& c = slots_[(next_ + k) % n];
        if (c->alive() && (!best || c->in_flight() < best->in_flight())) best = c;
      }
      if (best) {
        next_ = (next_ + 1) % n;
        co_return best;
      }
      if (closing_) throw Error(EIO, name_ + ": the connection is closed");
      const bool any_reconnecting = std::any_of(reconnecting_.begin(), reconnecting_.end(), [](bool b) { return b; });
      if (given_up_ && !any_reconnecting) {
        if (kicked) {
          throw Error(EIO, name_ + ": the connection to the server was lost" +
                               (last_error_.empty() ? std::string() : " (" + last_error_ + ")"));
        }
        // As QEMU after reconnect-delay: each new request tries once more.
        kicked = true;
        start_reconnect(0, true);
      } else if (!any_reconnecting) {
        for (std::size_t i = 0; i < n; ++i) start_reconnect(i, false);
      }
      co_await changed_.wait();
    }
  }

  Executor ex_;
  NbdConfig config_;
  std::string name_;
  ExportInfo info_;
  std::vector<std::shared_ptr<Connection>> slots_;
  std::vector<bool> reconnecting_;
  std::size_t next_ = 0;
  bool closing_ = false;
  bool given_up_ = false;
  std::string last_error_;
  AsyncCondition changed_;
  asio::steady_timer sleeper_;
  AsyncSemaphore file_pieces_;
};

// A second connection for read_to_file(), driven by a thread of its own. Over a unix
// socket the one event-loop thread splicing every payload is what bounds a copy: 1 GiB from
// nbdkit into tmpfs took 0.63-0.64 s on one thread and 0.54-0.56 s with every other read on
// a side thread (nbdcopy, four connections and threads: 0.56-0.74 s). Over loopback TCP it
// did not help (0.65-0.72 s against 0.62-0.67 s): the sender does most of the receiving
// work there, so it is not used for TCP.
class SideReceiver {
 public:
  explicit SideReceiver(NbdConfig config) : config_(std::move(config)), thread_([this] { ctx_.run(); }) {
    config_.connections = 1;
  }
  ~SideReceiver() {
    // The client lives on the side thread: shut it down there, then let the thread end.
    asio::post(ctx_, [this] {
      if (client_) client_->shutdown();
      client_.reset();
    });
    work_.reset();
    asio::post(ctx_, [this] { ctx_.stop(); });
    thread_.join();
  }
  SideReceiver(const SideReceiver&) = delete;
  SideReceiver& operator=(const SideReceiver&) = delete;

  // Connects; false when the server refuses a second connection.
  Task<bool> open() {
    co_return co_await asio::co_spawn(
        ctx_,
        [this]() -> Task<bool> {
          auto client = std::make_shared<Client>(ctx_.get_executor(), config_);
          try {
            co_await client->open();
          } catch (const std::exception& e) {
            NETBLK_LOG(debug, "{}: no second connection for file reads: {}", client->name(), e.what());
            co_return false;
          }
          client_ = std::move(client);
          co_return true;
        },
        asio::use_awaitable);
  }
  // Runs `work(client, executor)` on the side thread.
  template <class Work>
  Task<void> run(Work work) {
    co_await asio::co_spawn(ctx_, [this, work]() -> Task<void> { co_await work(*client_, ctx_.get_executor()); },
                            asio::use_awaitable);
  }
  Task<void> close() {
    co_await asio::co_spawn(
        ctx_,
        [this]() -> Task<void> {
          if (client_) co_await client_->close();
        },
        asio::use_awaitable);
  }

 private:
  NbdConfig config_;
  asio::io_context ctx_{1};
  asio::executor_work_guard<asio::io_context::executor_type> work_ = asio::make_work_guard(ctx_);
  std::shared_ptr<Client> client_;
  std::thread thread_;
};

// Reads [offset, offset + length) into the file, `piece` bytes a request, `workers`
// requests at a time, on `client`'s executor `ex`.
Task<void> read_pieces_to_file(Client& client, Executor ex, std::uint64_t offset, std::uint64_t length, int fd,
                               std::uint64_t fd_offset, std::uint64_t piece, unsigned workers) {
  auto read_one = [&](std::uint64_t at, std::uint64_t n) -> Task<void> {
    co_await client.file_pieces().acquire();
    const AsyncSemaphore::Permit permit(client.file_pieces());
    Pending p(ex);
    p.request.type = nbd::kCmdRead;
    p.request.offset = offset + at;
    p.request.length = n;
    p.read_fd = fd;
    p.read_fd_offset = fd_offset + at;
    co_await client.run(p, "read");
  };
  co_await for_each_piece(length, piece, workers, read_one);
}

class NbdNode final : public Node {
 public:
  NbdNode(const OpenContext& ctx, std::shared_ptr<Client> client) : Node(ctx.executor), client_(std::move(client)) {
    const ExportInfo& info = client_->info();
    const std::uint16_t f = info.flags;
    size_ = info.size;
    caps_.read_only = ctx.read_only || (f & nbd::kFlagReadOnly);
    caps_.can_flush = f & nbd::kFlagSendFlush;
    caps_.can_fua = f & nbd::kFlagSendFua;
    caps_.can_zero = f & nbd::kFlagSendWriteZeroes;
    caps_.can_discard = f & nbd::kFlagSendTrim;
    caps_.has_block_status = info.base_allocation.has_value();
    caps_.can_multi_conn = f & nbd::kFlagCanMultiConn;
    // As QEMU: without a server minimum, 1 byte when the size or block status needs it.
    std::uint32_t min = info.have_block_sizes ? info.block_sizes.minimum : 0;
    if (!min) min = (size_ % 512 || info.base_allocation) ? 1 : 512;
    limits_.request_alignment = min;
    std::uint64_t max = info.have_block_sizes ? info.block_sizes.maximum : nbd::kMaxBlockSize;
    limits_.max_transfer = std::min<std::uint64_t>(max, nbd::kMaxBlockSize);
    limits_.max_transfer -= limits_.max_transfer % min;
    if (info.have_block_sizes) limits_.preferred_alignment = std::max<std::uint32_t>(info.block_sizes.preferred, min);
    if (!info.extended) limits_.max_zero = limits_.max_discard = kMaxZeroRequest - kMaxZeroRequest % min;
  }

  ~NbdNode() override { client_->shutdown(); }

  std::string_view driver() const override { return "nbd"; }
  Json options() const override { return canonical_options(client_->config()); }
  std::string plain_filename() const override { return nbd_client::plain_filename(client_->config()); }
  bool has_zero_init() const override { return false; }

 protected:
  Task<void> co_read(std::uint64_t offset, std::span<std::byte> buf) override {
    Pending p(executor());
    p.request.type = nbd::kCmdRead;
    p.request.offset = offset;
    p.request.length = buf.size();
    p.read_buf = buf;
    co_await client_->run(p, "read");
  }

  // Spliced payloads never pass through our memory, so zero blocks are not looked for here
  // (the caller finds them in the file afterwards).
  Task<FileRead> co_read_to_file(std::uint64_t offset, std::uint64_t length, int fd, std::uint64_t fd_offset,
                                 std::uint64_t) override {
    if (client_->config().tls) co_return FileRead::unsupported;  // TLS records cannot be spliced
    const bool unix_socket = client_->config().address.type == NbdAddress::Type::unix_socket;
    const std::uint64_t size = unix_socket ? kFilePieceUnix : kFilePieceTcp;
    const std::uint32_t align = limits().request_alignment;
    const std::uint64_t piece =
        std::min<std::uint64_t>(std::max<std::uint64_t>(align, size - size % align), limits().max_transfer);
    const auto workers = static_cast<unsigned>(
        std::min<std::uint64_t>((length + piece - 1) / piece, file_pieces_in_flight(client_->config())));
    // Every other call goes to the side connection, when there is one: a unix socket, a
    // server that allows several connections, a second CPU, and x-connections not set to 1.
    if (!side_tried_) {
      side_tried_ = true;
      const NbdConfig& c = client_->config();
      if (unix_socket && caps().can_multi_conn && std::thread::hardware_concurrency() >= 2 &&
          !(c.connections_given && c.connections == 1)) {
        auto side = std::make_unique<SideReceiver>(c);
        if (co_await side->open()) side_ = std::move(side);
      }
    }
    if (side_ && (side_turn_ = !side_turn_)) {
      co_await side_->run([=](Client& c, Executor ex) {
        return read_pieces_to_file(c, ex, offset, length, fd, fd_offset, piece, workers);
      });
    } else {
      co_await read_pieces_to_file(*client_, executor(), offset, length, fd, fd_offset, piece, workers);
    }
    co_return FileRead::written;
  }

  Task<void> co_write(std::uint64_t offset, std::span<const std::byte> buf, unsigned flags) override {
    forget_status();
    Pending p(executor());
    p.request.type = nbd::kCmdWrite;
    p.request.flags = (flags & kWriteFua) && caps().can_fua ? nbd::kCmdFlagFua : 0;
    p.request.offset = offset;
    p.request.length = buf.size();
    p.write_data = buf;
    co_await client_->run(p, "write");
  }

  Task<void> co_write_zeroes(std::uint64_t offset, std::uint64_t length, unsigned flags) override {
    forget_status();
    const std::uint16_t f = client_->info().flags;
    if (!(f & nbd::kFlagSendWriteZeroes)) {
      co_await Node::co_write_zeroes(offset, length, flags);
      co_return;
    }
    if ((flags & kZeroFast) && !(f & nbd::kFlagSendFastZero))
      throw Error(ENOTSUP, display_name() + ": the server has no fast zeroing");
    std::uint16_t cmd_flags = 0;
    if (!(flags & kZeroMayUnmap)) cmd_flags |= nbd::kCmdFlagNoHole;
    if (flags & kZeroFast) cmd_flags |= nbd::kCmdFlagFastZero;
    if ((flags & kWriteFua) && caps().can_fua) cmd_flags |= nbd::kCmdFlagFua;
    co_await ranged(nbd::kCmdWriteZeroes, cmd_flags, offset, length, "write zeroes");
  }

  Task<void> co_discard(std::uint64_t offset, std::uint64_t length, unsigned flags) override {
    forget_status();
    if (!caps().can_discard) co_return;
    const std::uint16_t cmd_flags = (flags & kWriteFua) && caps().can_fua ? nbd::kCmdFlagFua : 0;
    co_await ranged(nbd::kCmdTrim, cmd_flags, offset, length, "discard");
  }

  Task<void> co_flush() override {
    if (!caps().can_flush) co_return;
    Pending p(executor());
    p.request.type = nbd::kCmdFlush;
    co_await client_->run(p, "flush");
  }

  Task<BlockStatus> co_block_status(std::uint64_t offset, std::uint64_t length) override {
    if (!caps().has_block_status) co_return BlockStatus{length, kStatusData | kStatusAllocated, offset};
    while (true) {
      // The rest of an earlier reply answers without a round trip.
      if (offset >= cached_start_ && offset < cached_end_) {
        auto it = std::upper_bound(cached_ends_.begin(), cached_ends_.end(), offset);
        const auto i = static_cast<std::size_t>(it - cached_ends_.begin());
        co_return to_status(offset, std::min(cached_ends_[i] - offset, length), cached_flags_[i]);
      }
      // A request in flight that starts at or before us will most likely cover us.
      if (!status_busy_ || offset < busy_start_ || offset >= busy_end_) break;
      co_await status_changed_->wait();
    }
    // Ask for as much as one request can cover: servers answer a long data or hole run
    // with one extent, and the next calls are then answered from the cache (a scan per
    // 2 MiB chunk costs some servers a seek over the whole file each time).
    const std::uint32_t align = limits().request_alignment;
    std::uint64_t ask = size() - offset;
    if (!client_->info().extended) ask = std::min<std::uint64_t>(ask, 0xffffffffu - 0xffffffffu % align);
    ask = std::max(ask, length);
    Pending p(executor());
    p.request.type = nbd::kCmdBlockStatus;
    p.request.offset = offset;
    p.request.length = ask;
    const bool owner = !status_busy_;
    if (owner) {
      status_busy_ = true;
      busy_start_ = offset;
      busy_end_ = offset + ask;
    }
    const std::uint64_t generation = status_generation_;
    std::exception_ptr failure;
    try {
      co_await client_->run(p, "block status");
    } catch (...) {
      failure = std::current_exception();
    }
    if (owner) {
      status_busy_ = false;
      status_changed_->notify_all();
    }
    if (failure) std::rethrow_exception(failure);
    if (p.extents.empty() || p.extents.front().length == 0)
      throw Error(EIO, display_name() + ": block status: the server sent no extent");
    const std::uint64_t first_len = std::min<std::uint64_t>(p.extents.front().length, ask);
    const std::uint64_t first_flags = p.extents.front().flags;
    // A write while the request was out makes its answer stale.
    if (generation == status_generation_) remember(offset, ask, p.extents);
    co_return to_status(offset, std::min(first_len, length), first_flags);
  }

  Task<void> co_close() override {
    forget_status();
    if (side_) co_await side_->close();
    co_await client_->close();
  }

 private:
  static BlockStatus to_status(std::uint64_t offset, std::uint64_t length, std::uint64_t flags) {
    unsigned s = kStatusAllocated;
    if (!(flags & nbd::kStateHole)) s |= kStatusData;
    if (flags & nbd::kStateZero) s |= kStatusZero;
    return BlockStatus{length, s, offset};
  }

  void forget_status() {
    cached_start_ = cached_end_ = 0;
    ++status_generation_;
  }

  void remember(std::uint64_t offset, std::uint64_t ask, const std::vector<nbd::Extent>& extents) {
    cached_ends_.clear();
    cached_flags_.clear();
    std::uint64_t pos = offset;
    for (const auto& e : extents) {
      if (e.length == 0 || pos >= offset + ask) break;
      pos += std::min<std::uint64_t>(e.length, offset + ask - pos);
      cached_ends_.push_back(pos);
      cached_flags_.push_back(e.flags);
    }
    cached_start_ = offset;
    cached_end_ = pos;
  }

  // One zero or trim request (the node has cut it to limits().max_zero / max_discard).
  Task<void> ranged(std::uint16_t type, std::uint16_t flags, std::uint64_t offset, std::uint64_t length,
                    const char* what) {
    Pending p(executor());
    p.request.type = type;
    p.request.flags = flags;
    p.request.offset = offset;
    p.request.length = length;
    co_await client_->run(p, what);
  }

  std::shared_ptr<Client> client_;
  std::unique_ptr<SideReceiver> side_;  // read_to_file()'s second connection
  bool side_tried_ = false, side_turn_ = false;
  // The last block status reply: extents ending at cached_ends_[i] with cached_flags_[i].
  std::vector<std::uint64_t> cached_ends_;
  std::vector<std::uint64_t> cached_flags_;
  std::uint64_t cached_start_ = 0, cached_end_ = 0;
  std::uint64_t status_generation_ = 0;
  bool status_busy_ = false;
  std::uint64_t busy_start_ = 0, busy_end_ = 0;
  std::unique_ptr<AsyncCondition> status_changed_ = std::make_unique<AsyncCondition>(executor());
};

Task<std::unique_ptr<Node>> open_nbd(const OpenContext& ctx, spec::Options& o) {
  NbdConfig config = config_from_options(o);
  check_tls_config(config);
  auto client = std::make_shared<Client>(ctx.executor, std::move(config));
  co_await client->open();
  auto node = std::make_unique<NbdNode>(ctx, client);
  co_return node;
}

const DriverRegistration kNbd{ProtocolDriver{
    .name = "nbd",
    .prefixes = {"nbd", "nbd+tcp", "nbd+unix", "nbds", "nbds+tcp", "nbds+unix"},
    .parse_filename = parse_filename,
    .open = open_nbd,
    .create = {},
    .library_version = [] { return std::string("netblk's own client, GnuTLS ") + gnutls_check_version(nullptr); },
}};

}  // namespace
}  // namespace netblk::nbd_client
