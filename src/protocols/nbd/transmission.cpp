// The transmission phase of a client connection: one writer gathering queued requests,
// one reader dispatching replies by cookie into the callers' buffers (or files), and a
// watchdog for a server that stops answering.
#include <algorithm>
#include <cstring>

#include "core/file_io.hpp"
#include "core/log.hpp"
#include "protocols/nbd/nbd_connection.hpp"

namespace netblk::nbd_client {
namespace {

using Clock = std::chrono::steady_clock;

// Longest block-status reply payload accepted (a 2^32-byte request at 4 KiB extents
// would be 8 MiB of descriptors; servers send far fewer).
constexpr std::uint64_t kMaxStatusPayload = 16u << 20;
// Longest error chunk: error, message length, message, offset.
constexpr std::uint64_t kMaxErrorPayload = 4 + 2 + nbd::kMaxStringLength + 8;

int pwrite_zeroes(int fd, std::uint64_t n, std::uint64_t offset) {
  static const std::array<std::byte, 64 * 1024> zeroes{};
  while (n) {
    const std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(n, zeroes.size()));
    if (int e = pwrite_fully(fd, zeroes.data(), k, offset)) return e;
    offset += k;
    n -= k;
  }
  return 0;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Transmission

Connection::Connection(Executor ex, std::shared_ptr<Stream> stream, std::unique_ptr<StreamReader> reader,
                       ExportInfo info, std::string name, std::chrono::seconds io_timeout)
    : ex_(std::move(ex)),
      stream_(std::move(stream)),
      reader_(std::move(reader)),
      info_(info),
      name_(std::move(name)),
      io_timeout_(io_timeout),
      send_ready_(ex_),
      watchdog_(ex_),
      last_activity_(Clock::now()) {}

Connection::~Connection() {
  if (stream_) stream_->close();
}

void Connection::start() {
  auto self = shared_from_this();
  auto ignore = [self](std::exception_ptr) {};
  asio::co_spawn(ex_, [self]() { return self->reader_loop(); }, ignore);
  asio::co_spawn(ex_, [self]() { return self->writer_loop(); }, ignore);
  asio::co_spawn(ex_, [self]() { return self->watchdog_loop(); }, ignore);
}

void Connection::protocol_error(const std::string& what) const {
  throw Error(EPROTO, name_ + ": NBD protocol error: " + what);
}

void Connection::submit(Pending& p) {
  p.reset();
  if (!alive_) {
    p.lost = true;
    p.message = "the connection was closed";
    p.done.set();
    return;
  }
  if (pending_.empty()) last_activity_ = Clock::now();
  p.request.cookie = next_cookie_++;
  p.header_size = nbd::encode_request(p.header, p.request, info_.extended);
  pending_.emplace(p.request.cookie, &p);
  if (p.read_fd >= 0) ++file_reads_;
  p.queued = true;
  send_queue_.push_back(&p);
  if (send_queue_.size() == 1) send_ready_.notify_all();
}

void Connection::finish(Pending& p) {
  p.replied = true;
  // A payload still being sent must not be released before the write is done.
  if (!p.queued) p.done.set();
}

void Connection::fail_all(const std::string& why, bool fatal) {
  // First what is being written: after this no pointer to a request is kept that its
  // owner could free once it is told.
  release_written();
  if (!alive_ && pending_.empty()) return;
  alive_ = false;
  stream_->close();
  watchdog_.cancel();
  send_ready_.notify_all();
  auto pending = std::move(pending_);
  pending_.clear();
  file_reads_ = 0;
  send_queue_.clear();
  for (auto& [cookie, p] : pending) {
    p->queued = false;
    if (fatal) {
      p->error = EIO;
      p->message = why;
    } else {
      p->lost = true;
      p->message = why;
    }
    p->done.set();
  }
  if (!notified_) {
    notified_ = true;
    if (on_dead) on_dead(why);
  }
}

void Connection::shutdown(const std::string& why) {
  notified_ = true;  // the owner asked: no callback
  fail_all(why, false);
}

Task<void> Connection::disconnect() {
  if (!alive_) co_return;
  if (pending_.empty()) {
    nbd::Request r;
    r.type = nbd::kCmdDisc;
    std::array<std::byte, nbd::kExtendedRequestSize> raw;
    std::size_t n = nbd::encode_request(raw, r, info_.extended);
    std::vector<asio::const_buffer> buffers{asio::buffer(raw.data(), n)};
    try {
      if (send_queue_.empty()) co_await stream_->write(buffers);
    } catch (const std::exception&) {
      // The server is gone already; nothing to say goodbye to.
    }
  }
  shutdown("connection closed");
}

Task<void> Connection::writer_loop() {
  auto self = shared_from_this();
  std::vector<asio::const_buffer> buffers;
  try {
    while (alive_) {
      if (send_queue_.empty()) {
        co_await send_ready_.wait();
        continue;
      }
      // Gather what is queued into one write: headers and payloads, bounded.
      buffers.clear();
      writing_.clear();
      std::size_t bytes = 0;
      std::size_t n = 0;
      for (; n < send_queue_.size() && n < 64 && bytes < (8u << 20); ++n) {
        Pending* p = send_queue_[n];
        buffers.emplace_back(p->header.data(), p->header_size);
        bytes += p->header_size;
        if (!p->write_data.empty()) {
          buffers.emplace_back(p->write_data.data(), p->write_data.size());
          bytes += p->write_data.size();
        }
        writing_.push_back(p);
      }
      send_queue_.erase(send_queue_.begin(), send_queue_.begin() + static_cast<std::ptrdiff_t>(n));
      co_await stream_->write(buffers);
      last_activity_ = Clock::now();
      release_written();
    }
  } catch (const std::exception& e) {
    fail_all(std::string("sending failed: ") + e.what(), false);
  }
}

void Connection::release_written() {
  // Requests answered while their payload was still going out may complete now.
  for (Pending* p : writing_) {
    p->queued = false;
    if (p->replied) p->done.set();
  }
  writing_.clear();
}

Task<void> Connection::watchdog_loop() {
  auto self = shared_from_this();
  const auto tick = std::max<Clock::duration>(std::chrono::milliseconds(250), io_timeout_ / 4);
  while (alive_) {
    watchdog_.expires_after(tick);
    std::error_code ec;
    co_await watchdog_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (!alive_) break;
    if (!pending_.empty() && Clock::now() - last_activity_ > io_timeout_) {
      NETBLK_LOG(warn, "{}: no answer from the server for {} s; reconnecting", name_, io_timeout_.count());
      fail_all("the server stopped answering", false);
    }
  }
}

Task<void> Connection::read_to_file(Pending& p, std::uint64_t at, std::uint64_t n) {
  failed_file_write(p, co_await reader_->read_to_file(p.read_fd, p.read_fd_offset + at, n));
}

void Connection::failed_file_write(Pending& p, int error) {
  if (!error || p.error) return;
  p.error = error;
  p.file_write_failed = true;
  p.message = std::string("writing the data to its file failed: ") + std::strerror(error);
}

Task<void> Connection::read_chunk(Pending& p, const nbd::ReplyHeader& h) {
  const std::uint16_t cmd = p.request.type;
  const std::uint64_t req_end = p.request.offset + p.request.length;
  switch (h.type) {
    case nbd::kReplyTypeNone:
      if (h.length != 0) protocol_error("NONE chunk with a payload");
      if (!(h.flags & nbd::kReplyFlagDone)) protocol_error("NONE chunk without the DONE flag");
      co_return;
    case nbd::kReplyTypeOffsetData: {
      if (cmd != nbd::kCmdRead) protocol_error("data chunk in reply to " + nbd::command_name(cmd));
      if (h.length < nbd::kOffsetDataPrefixSize) protocol_error("data chunk too short");
      std::array<std::byte, nbd::kOffsetDataPrefixSize> raw;
      co_await reader_->read_exact(raw);
      const std::uint64_t offset = netblk::load_be64(raw.data());
      const std::uint64_t n = h.length - nbd::kOffsetDataPrefixSize;
      if (offset < p.request.offset || offset > req_end || n > req_end - offset)
        protocol_error("data chunk outside the request");
      if (p.read_fd >= 0) {
        co_await read_to_file(p, offset - p.request.offset, n);
      } else {
        co_await reader_->read_exact(p.read_buf.subspan(offset - p.request.offset, n));
      }
      co_return;
    }
    case nbd::kReplyTypeOffsetHole: {
      if (cmd != nbd::kCmdRead) protocol_error("hole chunk in reply to " + nbd::command_name(cmd));
      if (h.length != nbd::kOffsetHoleSize) protocol_error("hole chunk of the wrong size");
      std::array<std::byte, nbd::kOffsetHoleSize> raw;
      co_await reader_->read_exact(raw);
      nbd::OffsetHole hole = nbd::decode_offset_hole(raw);
      if (hole.offset < p.request.offset || hole.offset > req_end || hole.length > req_end - hole.offset)
        protocol_error("hole chunk outside the request");
      if (p.read_fd >= 0) {
        failed_file_write(p, pwrite_zeroes(p.read_fd, hole.length, p.read_fd_offset + (hole.offset - p.request.offset)));
      } else {
        std::memset(p.read_buf.data() + (hole.offset - p.request.offset), 0, hole.length);
      }
      co_return;
    }
    case nbd::kReplyTypeBlockStatus:
    case nbd::kReplyTypeBlockStatusExt: {
      if (cmd != nbd::kCmdBlockStatus) protocol_error("block status chunk in reply to " + nbd::command_name(cmd));
      if (h.length > kMaxStatusPayload) protocol_error("block status chunk too long");
      std::vector<std::byte> payload(h.length);
      co_await reader_->read_exact(payload);
      nbd::BlockStatusChunk chunk = nbd::decode_block_status(payload, h.type);
      if (info_.base_allocation && chunk.context_id == *info_.base_allocation && p.extents.empty())
        p.extents = std::move(chunk.extents);
      co_return;
    }
    default:
      break;
  }
  if (!nbd::is_error_chunk(h.type)) protocol_error("unknown chunk type " + std::to_string(h.type));
  if (h.length > kMaxErrorPayload) protocol_error("error chunk too long");
  std::vector<std::byte> payload(h.length);
  co_await reader_->read_exact(payload);
  std::uint32_t nbd_error = nbd::kEio;
  std::string message;
  if (h.type == nbd::kReplyTypeError || h.type == nbd::kReplyTypeErrorOffset) {
    nbd::ErrorChunk e = nbd::decode_error_chunk(payload, h.type);
    nbd_error = e.error;
    message = e.message;
  } else if (payload.size() >= 4) {
    nbd_error = netblk::load_be32(payload.data());  // an error type we do not know: keep its errno
  }
  if (nbd_error == 0) protocol_error("error chunk without an error");
  if (!p.error) {
    p.error = nbd::nbd_to_errno(nbd_error);
    p.message = message;
  }
}

Task<void> Connection::reader_loop() {
  auto self = shared_from_this();
  std::array<std::byte, nbd::kMaxReplyHeaderSize> raw;
  // A reply's header and a data chunk's offset: what to read before a payload for a file.
  const std::size_t header_bytes =
      info_.extended ? nbd::kExtendedReplySize + nbd::kOffsetDataPrefixSize
                     : (info_.structured ? nbd::kStructuredReplySize + nbd::kOffsetDataPrefixSize : nbd::kSimpleReplySize);
  try {
    while (alive_) {
      reader_->limit_readahead(file_reads_ ? header_bytes : 0);
      co_await reader_->read_exact(std::span<std::byte>(raw.data(), 4));
      const std::size_t size = nbd::reply_header_size(netblk::load_be32(raw.data()));
      if (size == 0) protocol_error("invalid reply magic");
      co_await reader_->read_exact(std::span<std::byte>(raw.data() + 4, size - 4));
      const nbd::ReplyHeader h = nbd::decode_reply_header(std::span<const std::byte>(raw.data(), size));
      last_activity_ = Clock::now();
      auto it = pending_.find(h.cookie);
      if (it == pending_.end()) protocol_error("reply for an unknown cookie " + std::to_string(h.cookie));
      Pending& p = *it->second;
      bool last = true;
      if (h.kind == nbd::ReplyKind::simple) {
        if (info_.extended) protocol_error("simple reply after extended headers were negotiated");
        if (h.error) {
          p.error = nbd::nbd_to_errno(h.error);
        } else if (p.request.type == nbd::kCmdRead && p.read_fd >= 0) {
          co_await read_to_file(p, 0, p.request.length);
        } else if (p.request.type == nbd::kCmdRead) {
          co_await reader_->read_exact(p.read_buf);
        }
      } else {
        if (!info_.structured) protocol_error("structured reply that was not negotiated");
        if ((h.kind == nbd::ReplyKind::extended) != info_.extended) protocol_error("reply header of the wrong kind");
        co_await read_chunk(p, h);
        last = h.flags & nbd::kReplyFlagDone;
      }
      if (last) {
        pending_.erase(h.cookie);
        if (p.read_fd >= 0) --file_reads_;
        finish(p);
      }
    }
  } catch (const Error& e) {
    fail_all(e.what(), e.code() == EPROTO);
  } catch (const std::system_error& e) {
    const bool eof = e.code() == asio::error::eof;
    fail_all(eof ? "the server closed the connection" : std::string("receiving failed: ") + e.code().message(), false);
  } catch (const std::exception& e) {
    fail_all(std::string("receiving failed: ") + e.what(), false);
  }
}

}  // namespace netblk::nbd_client
