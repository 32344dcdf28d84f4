#include "protocols/ssh/sftp_connection.hpp"

#include <poll.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include <asio/post.hpp>

#include "core/deadline.hpp"
#include "core/log.hpp"

namespace netblk::ssh {
namespace {

using Clock = std::chrono::steady_clock;

// Queued pieces smaller than this are gathered into one channel write (one SSH packet:
// OpenSSH's sshd takes 32768 bytes of channel data per packet); larger ones are written
// from the caller's buffer, and libssh cuts them into packets.
constexpr std::size_t kPacketData = 32 * 1024 - 64;
// libssh reads the socket 4 KiB at a time, and a read that ends inside an SSH packet hands
// over nothing; a receive goes on while the socket has bytes, but not forever without a
// whole packet.
constexpr int kEmptyReads = 256;
// Requests larger than this are not asked for, whatever the server allows.
constexpr std::uint64_t kMaxRequest = 1u << 20;

std::uint32_t open_flags(OpenMode mode) {
  switch (mode) {
    case OpenMode::read_only:
      return sftp::kOpenRead;
    case OpenMode::read_write:
      return sftp::kOpenRead | sftp::kOpenWrite;
    case OpenMode::create:
      break;
  }
  return sftp::kOpenWrite | sftp::kOpenCreate | sftp::kOpenTruncate;
}

bool readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) > 0 && p.revents != 0;
}

}  // namespace

void Request::reset() {
  done.reset();
  lost = false;
  why.clear();
  reply_type = 0;
  status = {};
  got = 0;
  body.clear();
  id = 0;
  unsent = 0;
}

Connection::Connection(Executor ex, std::shared_ptr<Session> session, std::string name,
                       std::chrono::seconds io_timeout)
    : ex_(std::move(ex)),
      session_(std::move(session)),
      name_(std::move(name)),
      io_timeout_(io_timeout),
      reader_([this](std::uint32_t id, std::uint32_t length) { return data_sink(id, length); }),
      last_progress_(Clock::now()),
      timer_(ex_),
      // The connection unwatches its socket before the session closes it.
      watcher_(ex_, [this](int, FdEvents) { pump(); }, FdWatcher::Options{.detect_replaced = false}) {}

Connection::~Connection() { watcher_.unwatch_all(); }

Task<std::shared_ptr<Connection>> Connection::open(Executor ex, SshConfig config, std::string name, OpenMode mode,
                                                   std::chrono::milliseconds limit) {
  auto setup = [config, name, limit] { return open_session(config, name, limit); };
  const std::string what = name + ": connecting";
  const auto wait = limit + std::chrono::seconds(2);
  std::shared_ptr<Session> session = co_await offload(std::move(setup), wait, what);
  ssh_set_blocking(session->session(), 0);
  auto conn = std::make_shared<Connection>(ex, std::move(session), name, config.io_timeout);
  conn->start();
  std::exception_ptr failure;
  Deadline guard(ex, limit, [conn] { conn->shutdown("timed out"); });
  try {
    co_await conn->start_sftp(config.path, mode);
  } catch (...) {
    failure = std::current_exception();
  }
  guard.cancel();
  if (guard.expired()) failure = std::make_exception_ptr(Error(ETIMEDOUT, name + ": starting SFTP timed out"));
  if (failure) {
    conn->shutdown("failed to start");
    std::rethrow_exception(failure);
  }
  co_return conn;
}

void Connection::start() {
  rewatch();
  asio::co_spawn(ex_, watchdog(shared_from_this()), asio::detached);
}

Task<void> Connection::start_sftp(std::string path, OpenMode mode) {
  path_ = std::move(path);
  mode_ = mode;
  Request init(ex_);
  init.kind = Request::Kind::init;
  co_await call(init);
  if (init.got < sftp::kVersion)
    throw Error(ENOTSUP, name_ + ": the server speaks SFTP version " + std::to_string(init.got) + ", not 3");
  bool has_limits = false;
  for (const auto& [ext, data] : sftp::decode_extensions(init.body)) {
    if (ext == "fsync@openssh.com" && data == "1") has_fsync_ = true;
    if (ext == "limits@openssh.com" && data == "1") has_limits = true;
  }
  if (has_limits) {
    Request lim(ex_);
    lim.kind = Request::Kind::limits;
    co_await call(lim);
    if (lim.reply_type == sftp::kExtendedReply) {
      const sftp::Limits l = sftp::decode_limits(lim.body);
      std::uint64_t read = l.max_read ? l.max_read : kMaxRequest;
      std::uint64_t write = l.max_write ? l.max_write : kMaxRequest;
      if (l.max_packet) {
        read = std::min<std::uint64_t>(read, l.max_packet > 13 ? l.max_packet - 13 : 0);
        const auto head = sftp::write_header_size(sftp::kMaxHandle);
        write = std::min<std::uint64_t>(write, l.max_packet > head ? l.max_packet - head : 0);
      }
      max_read_ = static_cast<std::uint32_t>(std::clamp<std::uint64_t>(read, 512, kMaxRequest));
      max_write_ = static_cast<std::uint32_t>(std::clamp<std::uint64_t>(write, 512, kMaxRequest));
    }
  }
  Request open(ex_);
  open.kind = Request::Kind::open;
  co_await call(open);
  if (open.reply_type != sftp::kHandleReply) {
    const int err = open.reply_type == sftp::kStatusReply ? sftp::status_errno(open.status.code) : EPROTO;
    throw Error(err ? err : EIO,
                name_ + ": failed to open remote file '" + path_ + "': " + sftp::status_text(open.status));
  }
  handle_ = sftp::decode_handle(open.body);
  Request stat(ex_);
  stat.kind = Request::Kind::fstat;
  co_await call(stat);
  if (stat.reply_type != sftp::kAttrsReply)
    throw Error(EIO, name_ + ": failed to read file attributes: " + sftp::status_text(stat.status));
  const sftp::Attrs attrs = sftp::decode_attrs(stat.body);
  if (!attrs.size) throw Error(EIO, name_ + ": the server did not say how large the file is");
  file_size_ = *attrs.size;
  regular_ = attrs.permissions && S_ISREG(*attrs.permissions);
  NETBLK_LOG(debug, "{}: SFTP up: size {}, reads {} B, writes {} B, fsync {}", name_, file_size_, max_read_,
             max_write_, has_fsync_);
}

Task<void> Connection::call(Request& r) {
  r.reset();
  submit(r);
  co_await r.done.wait();
  if (r.lost) throw Error(ECONNRESET, name_ + ": " + r.why);
}

Task<void> Connection::truncate(std::uint64_t size) {
  Request r(ex_);
  r.kind = Request::Kind::fsetstat;
  r.size = size;
  co_await call(r);
  if (!r.ok()) {
    const int err = sftp::status_errno(r.status.code);
    throw Error(err ? err : EIO, name_ + ": failed to resize the remote file: " + sftp::status_text(r.status));
  }
}

Task<void> Connection::close_file() {
  if (!dead_ && !handle_.empty()) {
    Request r(ex_);
    r.kind = Request::Kind::close;
    r.reset();
    submit(r);
    co_await r.done.wait();
  }
  shutdown("closed");
}

std::vector<std::byte> Connection::encode(const Request& r) const {
  using K = Request::Kind;
  switch (r.kind) {
    case K::init:
      return sftp::encode_init();
    case K::limits:
      return sftp::encode_limits(r.id);
    case K::open:
      return sftp::encode_open(r.id, path_, open_flags(mode_),
                               mode_ == OpenMode::create ? std::optional<std::uint32_t>(0644) : std::nullopt);
    case K::fstat:
      return sftp::encode_fstat(r.id, handle_);
    case K::read:
      return sftp::encode_read(r.id, handle_, r.offset, r.length);
    case K::write:
      return sftp::encode_write_header(r.id, handle_, r.offset, r.length);
    case K::fsync:
      return sftp::encode_fsync(r.id, handle_);
    case K::fsetstat:
      return sftp::encode_fsetstat_size(r.id, handle_, r.size);
    case K::close:
      break;
  }
  return sftp::encode_close(r.id, handle_);
}

void Connection::submit(Request& r) {
  if (dead_) {
    r.lost = true;
    r.why = death_;
    r.done.set();
    return;
  }
  if (in_flight_.empty() && !init_) last_progress_ = Clock::now();
  if (r.kind == Request::Kind::init) {
    init_ = &r;
  } else {
    r.id = next_id_++;
    in_flight_[r.id] = &r;
  }
  enqueue(encode(r), {}, &r);
  if (r.kind == Request::Kind::write && !r.data.empty()) enqueue({}, r.data, &r);
  schedule_pump();
}

void Connection::enqueue(std::vector<std::byte> owned, std::span<const std::byte> view, Request* owner) {
  ++owner->unsent;
  out_.push_back(Segment{std::move(owned), view, 0, owner});
}

void Connection::schedule_pump() {
  // Requests submitted in one turn of the loop go out together, gathered into full packets.
  if (pump_posted_) return;
  pump_posted_ = true;
  asio::post(ex_, [self = shared_from_this()] {
    self->pump_posted_ = false;
    self->pump();
  });
}

void Connection::pump() {
  if (dead_) return;
  try {
    // Writes and reads feed each other (a window adjust read lets writes go on; a reply
    // frees room): go round while either moves. Any libssh call may take packets off the
    // socket into the channel's buffer, so a receive comes last: nothing is left there
    // when the connection waits for its socket.
    ssh_session s = session_->session();
    for (int round = 0; round < 64 && !dead_; ++round) {
      bool moved = false;
      if ((ssh_get_poll_flags(s) & SSH_WRITE_PENDING) && ssh_blocking_flush(s, 0) == SSH_ERROR)
        throw Error(ECONNRESET, "sending failed: " + session_->last_error());
      moved |= send();
      if (!dead_) moved |= receive();
      if (!moved || !has_output()) break;
    }
  } catch (const Error& e) {
    die(e.what(), true);
    return;
  }
  rewatch();
}

bool Connection::send() {
  ssh_channel ch = session_->channel();
  bool moved = false;
  // With the server's window closed a write would only poll the socket; a window adjust
  // comes in through receive().
  while (ssh_channel_window_size(ch) > 0) {
    std::span<const std::byte> chunk;
    bool direct = false;
    if (stage_off_ < stage_.size()) {
      chunk = std::span<const std::byte>(stage_).subspan(stage_off_);
    } else {
      stage_.clear();
      stage_off_ = 0;
      if (out_.empty()) break;
      const auto rest = out_.front().bytes().subspan(out_.front().done);
      if (rest.size() >= kPacketData) {
        chunk = rest;  // large data goes out from the caller's buffer
        direct = true;
      } else {
        while (!out_.empty() && stage_.size() < kPacketData) {
          Segment& f = out_.front();
          const auto piece = f.bytes().subspan(f.done);
          const std::size_t n = std::min(piece.size(), kPacketData - stage_.size());
          const std::size_t old = stage_.size();
          stage_.resize(old + n);
          std::memcpy(stage_.data() + old, piece.data(), n);
          f.done += n;
          if (f.done == f.bytes().size()) {
            handed_over(f);
            out_.pop_front();
          }
        }
        chunk = stage_;
      }
    }
    // libssh copies what the window takes into packets of its own and queues what the
    // socket does not take at once: the bytes are handed over.
    const auto len = static_cast<std::uint32_t>(std::min<std::size_t>(chunk.size(), 1u << 30));
    const int n = ssh_channel_write(ch, chunk.data(), len);
    if (n < 0) throw Error(ECONNRESET, "sending failed: " + session_->last_error());
    if (n == 0) break;
    moved = true;
    last_progress_ = Clock::now();
    if (direct) {
      Segment& f = out_.front();
      f.done += static_cast<std::size_t>(n);
      if (f.done == f.bytes().size()) {
        handed_over(f);
        out_.pop_front();
      }
    } else {
      stage_off_ += static_cast<std::size_t>(n);
    }
  }
  return moved;
}

void Connection::handed_over(Segment& s) {
  if (s.owner && s.owner->unsent) --s.owner->unsent;
}

bool Connection::receive() {
  ssh_channel ch = session_->channel();
  bool moved = false;
  int empty = 0;
  while (!dead_) {
    const auto buf = reader_.buffer();
    const auto want = static_cast<std::uint32_t>(std::min<std::size_t>(buf.size(), 1u << 30));
    const int n = ssh_channel_read_nonblocking(ch, buf.data(), want, 0);
    if (n == SSH_EOF) throw Error(ECONNRESET, "the server closed the SFTP channel");
    if (n < 0 && n != SSH_AGAIN) throw Error(ECONNRESET, "receiving failed: " + session_->last_error());
    if (n <= 0) {
      // Nothing whole yet: read on while the socket has more.
      if (++empty > kEmptyReads || !readable(session_->fd())) break;
      continue;
    }
    empty = 0;
    moved = true;
    last_progress_ = Clock::now();
    if (reader_.stored(static_cast<std::size_t>(n))) dispatch(reader_.reply());
  }
  return moved;
}

std::span<std::byte> Connection::data_sink(std::uint32_t id, std::uint32_t length) {
  auto it = in_flight_.find(id);
  if (it == in_flight_.end() || it->second->kind != Request::Kind::read || length > it->second->length)
    throw Error(EPROTO, "SFTP: DATA of " + std::to_string(length) + " bytes for request " + std::to_string(id) +
                            ", which did not ask for it");
  return it->second->into.first(length);
}

void Connection::dispatch(const sftp::Reply& reply) {
  Request* r = nullptr;
  if (reply.type == sftp::kVersionReply) {
    if (!init_) throw Error(EPROTO, "SFTP: an unexpected VERSION reply");
    r = std::exchange(init_, nullptr);
    r->got = reply.id;
  } else {
    auto it = in_flight_.find(reply.id);
    if (it == in_flight_.end()) throw Error(EPROTO, "SFTP: a reply to unknown request " + std::to_string(reply.id));
    r = it->second;
    in_flight_.erase(it);
    // A reply to a request not wholly sent would let its buffer go while still queued.
    if (r->unsent) throw Error(EPROTO, "SFTP: a reply to request " + std::to_string(reply.id) + " before it was sent");
    if (reply.type == sftp::kDataReply) r->got = reply.data_length;
  }
  r->reply_type = reply.type;
  if (reply.type == sftp::kStatusReply) r->status = sftp::decode_status(reply.body);
  else if (reply.type != sftp::kDataReply) r->body = reply.body;
  r->done.set();
}

void Connection::die(const std::string& why, bool notify) {
  if (dead_) return;
  dead_ = true;
  death_ = why;
  watcher_.unwatch_all();
  timer_.cancel();
  std::vector<Request*> lost;
  for (auto& [id, r] : in_flight_) lost.push_back(r);
  if (init_) lost.push_back(init_);
  in_flight_.clear();
  init_ = nullptr;
  out_.clear();
  stage_.clear();
  stage_off_ = 0;
  for (Request* r : lost) {
    r->lost = true;
    r->why = why;
    r->done.set();
  }
  if (notify && on_dead) asio::post(ex_, [cb = on_dead, why] { cb(why); });
}

void Connection::shutdown(const std::string& why) { die(why, false); }

void Connection::rewatch() {
  if (dead_) return;
  // Writability only while libssh has bytes the socket did not take.
  const bool write = ssh_get_poll_flags(session_->session()) & SSH_WRITE_PENDING;
  watcher_.watch(session_->fd(), write ? FdEvents::read_write : FdEvents::read);
}

Task<void> Connection::watchdog(std::shared_ptr<Connection> self) {
  const auto tick = std::min<std::chrono::steady_clock::duration>(std::chrono::seconds(1), io_timeout_);
  while (!dead_) {
    timer_.expires_after(tick);
    std::error_code ec;
    co_await timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (dead_) break;
    if ((!in_flight_.empty() || init_) && Clock::now() - last_progress_ > io_timeout_)
      die("no reply from the server for " + std::to_string(io_timeout_.count()) + " s", true);
  }
  (void)self;
}

}  // namespace netblk::ssh
