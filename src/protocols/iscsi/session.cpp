#include "protocols/iscsi/session.hpp"

#include <poll.h>

#include <asio/ip/tcp.hpp>
#include <cstring>
#include <optional>
#include <system_error>
#include <vector>

#include "core/backoff.hpp"
#include "core/deadline.hpp"
#include "core/log.hpp"

namespace netblk::iscsi {
namespace {

using Clock = std::chrono::steady_clock;

// libiscsi's timeouts and reconnects are driven from iscsi_service(ctx, 0), about once a
// second (QEMU: EVENT_INTERVAL); NOP-Outs every 5 s, a reconnect after 3 unanswered (QEMU:
// NOP_INTERVAL, MAX_NOP_FAILURES).
constexpr auto kTick = std::chrono::seconds(1);
constexpr unsigned kNopEveryTicks = 5;
constexpr int kMaxNopFailures = 3;
// Connecting and logging in when no `timeout` bounds it.
constexpr auto kConnectTimeout = std::chrono::seconds(30);
// Unit attentions (a target restarted: power-on/reset) and BUSY / TASK SET FULL answers are
// retried this often, with backoff between the busy ones.
constexpr int kMaxRetries = 8;

FdEvents events_of(int poll_events) {
  return ((poll_events & POLLIN) ? FdEvents::read : FdEvents::none) |
         ((poll_events & POLLOUT) ? FdEvents::write : FdEvents::none);
}

// libiscsi's error text on one line (some of its messages end in a newline).
std::string one_line(const char* text) {
  std::string s = text ? text : "";
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s.empty() ? "unknown error" : s;
}

int header_digest_of(const std::string& d) {
  if (d == "crc32c") return ISCSI_HEADER_DIGEST_CRC32C;
  if (d == "none") return ISCSI_HEADER_DIGEST_NONE;
  if (d == "crc32c-none") return ISCSI_HEADER_DIGEST_CRC32C_NONE;
  return ISCSI_HEADER_DIGEST_NONE_CRC32C;
}

}  // namespace

struct Session::Op {
  explicit Op(const Executor& ex) : done(ex) {}
  Session* session = nullptr;
  scsi_task* task = nullptr;
  scsi_iovec iov{};  // the buffer libiscsi reads from or writes into
  std::vector<std::byte> spare;  // after a time-out: what `iov` points at instead
  AsyncEvent done;
  int status = -1;
  std::string error;       // libiscsi's error text when it called back with an error
  bool finished = false;   // libiscsi called back
  bool abandoned = false;  // the caller gave up (time-out): the callback frees it
};

Session::Session(Executor ex, IscsiConfig config)
    : ex_(std::move(ex)),
      config_(std::move(config)),
      name_(display_name(config_)),
      watcher_(ex_, [this](int, FdEvents happened) {
        service((has(happened, FdEvents::read) ? POLLIN : 0) | (has(happened, FdEvents::write) ? POLLOUT : 0));
      }),
      tick_timer_(ex_),
      connected_(std::make_unique<AsyncEvent>(ex_)) {}

Session::~Session() { close(); }

Task<void> Session::connect() {
  const auto limit = config_.timeout.count() ? std::chrono::duration_cast<Clock::duration>(config_.timeout)
                                             : std::chrono::duration_cast<Clock::duration>(kConnectTimeout);
  const auto deadline = Clock::now() + limit;
  const std::string where = config_.portal.describe();

  // Resolve first: libiscsi's own getaddrinfo would block the loop.
  auto resolver = std::make_shared<asio::ip::tcp::resolver>(ex_);
  std::string portal;
  {
    Deadline guard(ex_, deadline, [resolver] { resolver->cancel(); });
    std::error_code ec;
    auto results = co_await resolver->async_resolve(config_.portal.host, config_.portal.port,
                                                    asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      if (guard.expired()) throw Error(ETIMEDOUT, name_ + ": resolving " + where + " timed out");
      throw Error(EHOSTUNREACH, name_ + ": address resolution failed for " + where + ": " + ec.message());
    }
    for (const auto& entry : results) {
      const auto ep = entry.endpoint();
      if ((config_.portal.ipv4_only && !ep.address().is_v4()) || (config_.portal.ipv6_only && !ep.address().is_v6()))
        continue;
      const std::string host = ep.address().to_string();
      portal = (ep.address().is_v6() ? "[" + host + "]" : host) + ":" + std::to_string(ep.port());
      break;
    }
    if (portal.empty()) throw Error(EHOSTUNREACH, name_ + ": no usable address for " + where);
  }

  ctx_ = iscsi_create_context(config_.initiator_name.c_str());
  if (!ctx_) throw Error(ENOMEM, name_ + ": cannot create an iSCSI context");
  if (config_.transport == "iser" && iscsi_init_transport(ctx_, ISER_TRANSPORT) != 0)
    throw Error(ENOTSUP, name_ + ": the iser transport is not supported by this libiscsi");
  iscsi_set_targetname(ctx_, config_.target.c_str());
  iscsi_set_session_type(ctx_, ISCSI_SESSION_NORMAL);
  iscsi_set_header_digest(ctx_, static_cast<iscsi_header_digest>(header_digest_of(config_.header_digest)));
  if (!config_.user.empty() &&
      iscsi_set_initiator_username_pwd(ctx_, config_.user.c_str(), config_.password.c_str()) != 0)
    throw Error(EINVAL, name_ + ": cannot set the CHAP user and password");
  // Commands are timed by us (libiscsi 1.19 would not time parked ones, and frees a timed
  // out write while its data-out PDUs may still be queued).
  iscsi_set_timeout(ctx_, 0);

  if (iscsi_full_connect_async(ctx_, portal.c_str(), static_cast<int>(config_.lun), &Session::on_connected, this) != 0) {
    // libiscsi's iSER needs an RDMA device; without one it fails here, in RDMA's words.
    if (config_.transport == "iser")
      throw Error(ENOTSUP, name_ + ": the iser transport is not available here (it needs an RDMA device): " +
                               one_line(iscsi_get_error(ctx_)));
    throw Error(ECONNREFUSED, name_ + ": cannot connect to " + where + ": " + one_line(iscsi_get_error(ctx_)));
  }
  update_events();
  {
    auto self = shared_from_this();
    Deadline guard(ex_, deadline, [self] {
      if (!self->connect_done_) self->connected_->set();
    });
    co_await connected_->wait();
    if (!connect_done_) {
      close();
      throw Error(ETIMEDOUT, name_ + ": connecting and logging in to " + where + " timed out");
    }
  }
  if (connect_status_ != SCSI_STATUS_GOOD) {
    std::string why = connect_error_.empty() ? std::string("the session was closed") : connect_error_;
    close();
    throw Error(ECONNREFUSED, name_ + ": failed to connect to LUN: " + why);
  }
  NETBLK_LOG(debug, "{}: logged in as {}", name_, config_.initiator_name);
  start_tick();
}

void Session::on_connected(iscsi_context* ctx, int status, void*, void* self_ptr) {
  // Called again (with an error) when the first connection goes down later: only the
  // first call counts.
  auto* self = static_cast<Session*>(self_ptr);
  if (self->connect_done_) return;
  self->connect_done_ = true;
  self->connect_status_ = status;
  if (status != SCSI_STATUS_GOOD) self->connect_error_ = one_line(iscsi_get_error(ctx));
  self->connected_->set();
}

void Session::service(int revents) {
  if (!ctx_) return;
  if (iscsi_service(ctx_, revents) < 0) {
    // Only before the first login (libiscsi reconnects a logged-in session itself).
    NETBLK_LOG(debug, "{}: {}", name_, one_line(iscsi_get_error(ctx_)));
    if (!connect_done_) {
      connect_done_ = true;
      connect_status_ = SCSI_STATUS_ERROR;
      connect_error_ = one_line(iscsi_get_error(ctx_));
      connected_->set();
    }
  }
  update_events();
}

void Session::update_events() {
  if (!ctx_) return;
  const int fd = iscsi_get_fd(ctx_);
  if (fd != fd_) {
    if (fd_ >= 0) watcher_.unwatch(fd_);
    fd_ = fd;
  }
  if (fd_ < 0) return;
  // watch() also notices a socket dup2()ed onto the same number by a reconnect.
  try {
    watcher_.watch(fd_, events_of(iscsi_which_events(ctx_)));
  } catch (const std::system_error& e) {
    // A descriptor between two sockets: the tick looks again within a second.
    NETBLK_LOG(debug, "{}: cannot watch descriptor {}: {}", name_, fd_, e.what());
    watcher_.unwatch(fd_);
    fd_ = -1;
  }
}

void Session::start_tick() {
  tick_timer_.expires_after(kTick);
  std::weak_ptr<Session> weak = weak_from_this();
  tick_timer_.async_wait([weak](std::error_code ec) {
    if (ec) return;
    if (auto self = weak.lock()) self->tick();
  });
}

void Session::tick() {
  if (!ctx_) return;
  if (++ticks_ % kNopEveryTicks == 0 && iscsi_is_logged_in(ctx_)) {
    if (iscsi_get_nops_in_flight(ctx_) >= kMaxNopFailures) {
      NETBLK_LOG(debug, "{}: NOP timeout; reconnecting", name_);
      reconnect_wanted_ = true;
    } else if (iscsi_nop_out_async(ctx_, nullptr, nullptr, 0, nullptr) != 0) {
      NETBLK_LOG(debug, "{}: cannot send a NOP-Out: {}", name_, one_line(iscsi_get_error(ctx_)));
    }
  }
  if (reconnect_wanted_ && iscsi_is_logged_in(ctx_)) {
    reconnect_wanted_ = false;
    iscsi_reconnect(ctx_);
  }
  service(0);  // libiscsi's reconnect timing and timeout scan
  start_tick();
}

void Session::on_command(iscsi_context* ctx, int status, void*, void* op_ptr) {
  auto* op = static_cast<Op*>(op_ptr);
  op->status = status;
  if (status == SCSI_STATUS_ERROR || status == SCSI_STATUS_TIMEOUT) op->error = one_line(iscsi_get_error(ctx));
  op->finished = true;
  if (op->abandoned) {
    scsi_free_scsi_task(op->task);
    op->task = nullptr;
    op->session->ops_.erase(op);  // frees op
    return;
  }
  op->done.set();
}

std::string Session::failure_text(const Op& op) const {
  if (op.status == SCSI_STATUS_CHECK_CONDITION && op.task) {
    const scsi_sense& s = op.task->sense;
    return std::string(scsi_sense_key_str(s.key)) + " (" + scsi_sense_ascq_str(s.ascq) + ")";
  }
  if (op.status == SCSI_STATUS_CANCELLED) return "the command was cancelled";
  if (op.status == SCSI_STATUS_ERROR || op.status == SCSI_STATUS_TIMEOUT)
    return op.error.empty() ? std::string("the connection failed") : op.error;
  return "SCSI status " + std::to_string(op.status);
}

int Session::errno_of(const scsi_sense& sense) {
  switch (sense.key) {
    case SCSI_SENSE_NOT_READY:
      return EBUSY;
    case SCSI_SENSE_DATA_PROTECTION:
      return EACCES;
    case SCSI_SENSE_COMMAND_ABORTED:
      return ECANCELED;
    case SCSI_SENSE_ILLEGAL_REQUEST:
      switch (sense.ascq) {
        case SCSI_SENSE_ASCQ_LBA_OUT_OF_RANGE:
          return ENOSPC;
        case SCSI_SENSE_ASCQ_LOGICAL_UNIT_NOT_SUPPORTED:
          return ENOTSUP;
        case SCSI_SENSE_ASCQ_WRITE_PROTECTED:
          return EACCES;
        default:
          return EINVAL;
      }
    default:
      return EIO;
  }
}

Task<scsi_task*> Session::run(Submit submit, Payload payload, const char* what) {
  const auto start = Clock::now();
  Backoff busy(BackoffPolicy{.first = std::chrono::milliseconds(10), .cap = std::chrono::milliseconds(1000), .jitter = 0.0, .give_up = std::chrono::milliseconds(0)});
  for (int attempt = 0;; ++attempt) {
    if (!ctx_) throw Error(EIO, name_ + ": " + what + " failed: the session is closed");
    auto op = std::make_shared<Op>(ex_);
    op->session = this;
    op->task = submit(ctx_, &Session::on_command, op.get());
    if (!op->task) throw Error(EIO, name_ + ": " + what + " failed: " + one_line(iscsi_get_error(ctx_)));
    ops_.emplace(op.get(), op);
    if (!payload.in.empty()) {
      op->iov = scsi_iovec{payload.in.data(), payload.in.size()};
      scsi_task_set_iov_in(op->task, &op->iov, 1);
    } else if (!payload.out.empty()) {
      op->iov = scsi_iovec{const_cast<std::byte*>(payload.out.data()), payload.out.size()};
      scsi_task_set_iov_out(op->task, &op->iov, 1);
    }
    update_events();
    {
      std::optional<Deadline> limit;
      if (config_.timeout.count()) {
        std::weak_ptr<Op> weak = op;
        limit.emplace(ex_, start + config_.timeout, [weak] {
          if (auto o = weak.lock()) o->done.set();
        });
      }
      co_await op->done.wait();
    }
    if (!op->finished) {
      // Timed out. libiscsi may still use the task and its buffer (queued data-out PDUs,
      // a resend after a reconnect): both stay with the op, the buffer moved to a copy,
      // until libiscsi calls back or the context goes.
      op->abandoned = true;
      if (!payload.out.empty()) op->spare.assign(payload.out.begin(), payload.out.end());
      else op->spare.resize(payload.in.size());
      if (!op->spare.empty()) op->iov.iov_base = op->spare.data();
      reconnect_wanted_ = true;  // as QEMU: a command that times out makes the session reconnect
      throw Error(ETIMEDOUT, name_ + ": " + what + " timed out after " + std::to_string(config_.timeout.count()) +
                                 " s");
    }
    scsi_task* task = op->task;
    op->task = nullptr;
    ops_.erase(op.get());
    TaskPtr owned(task);
    const int status = op->status;
    if (status == SCSI_STATUS_GOOD) co_return owned.release();
    const bool unit_attention = status == SCSI_STATUS_CHECK_CONDITION && task->sense.key == SCSI_SENSE_UNIT_ATTENTION;
    const bool busy_answer = status == SCSI_STATUS_BUSY || status == SCSI_STATUS_TASK_SET_FULL;
    if ((unit_attention || busy_answer) && attempt < kMaxRetries) {
      NETBLK_LOG(debug, "{}: {}: {}; retrying", name_, what, failure_text(*op));
      owned.reset();
      if (busy_answer) co_await busy.wait();
      continue;
    }
    op->task = task;  // for the message
    std::string why = failure_text(*op);
    op->task = nullptr;
    int err = EIO;
    if (status == SCSI_STATUS_CHECK_CONDITION) err = errno_of(task->sense);
    throw Error(err, name_ + ": " + what + " failed: " + why);
  }
}

void Session::close() {
  tick_timer_.cancel();
  if (!ctx_) return;
  if (fd_ >= 0) watcher_.unwatch(fd_);
  fd_ = -1;
  iscsi_context* ctx = ctx_;
  ctx_ = nullptr;
  iscsi_destroy_context(ctx);  // calls back with CANCELLED for what a logged-in session held
  // What libiscsi never called back for: end it here.
  auto left = std::move(ops_);
  ops_.clear();
  for (auto& entry : left) {
    auto& op = entry.second;
    if (op->finished) continue;
    op->finished = true;
    op->status = SCSI_STATUS_CANCELLED;
    if (op->abandoned) {
      scsi_free_scsi_task(op->task);
      op->task = nullptr;
    } else {
      op->done.set();  // the waiting coroutine takes its task
    }
  }
  if (!connect_done_) {
    connect_done_ = true;
    connect_status_ = SCSI_STATUS_CANCELLED;
    connected_->set();
  }
}

}  // namespace netblk::iscsi
