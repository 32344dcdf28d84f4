// Transmission: requests read as they arrive (bounded in count and bytes), checked, and
// run on the node one coroutine each; writes may land in place, reads may be answered
// from the file under the node.
#include "exports/nbd/connection.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <exception>

#include "core/log.hpp"
#include "core/mapping.hpp"

namespace netblk::nbd::server_detail {

Task<void> Connection::transmission() {
  auto self = shared_from_this();
  transmission_started_ = true;
  reader_.reserve(kInputCapacity);
  // push_out() sends with plain non-blocking syscalls (sendmsg, sendfile).
  std::error_code ec;
  socket_.native_non_blocking(true, ec);
  asio::co_spawn(server_->executor, [self]() { return self->writer(); }, asio::detached);
  try {
    co_await read_requests();
  } catch (const Disconnect& d) {
    NETBLK_LOG(info, "nbd: disconnecting client: {}", d.why);
    close_socket();
  } catch (const Error& e) {
    NETBLK_LOG(info, "nbd: disconnecting client: {}", e.what());
    close_socket();
  } catch (const std::system_error&) {
    // The client closed the connection (or stop() shut our side).
  }
}

Task<void> Connection::read_requests() {
  const std::size_t header_size = request_size(extended_);
  while (!dead_ && !stop_requested_) {
    while (!dead_ && (in_flight_ >= kMaxRequestsInFlight || bytes_in_flight_ >= kMaxBytesInFlight))
      co_await slots_.wait();
    if (dead_) co_return;
    co_await reader_.fill(header_size);
    Request request = decode_request(reader_.take(header_size), extended_);
    if (request.type == kCmdDisc) co_return;

    std::uint64_t payload = 0;
    if (request.type == kCmdWrite) payload = request.length;
    else if (extended_ && (request.flags & kCmdFlagPayloadLen)) payload = request.length;

    if (int err = validate(request)) {
      if (payload > UINT32_MAX) throw Disconnect{"request payload of " + std::to_string(payload) + " bytes"};
      if (payload) co_await reader_.skip(payload);
      Reply* reply = acquire_reply();
      finish_error(*reply, request, err, error_text(request, err));
      enqueue(reply);
      continue;
    }
    if (request.type == kCmdWrite && write_in_place(request)) continue;
    const bool payload_in_memory = request.type == kCmdWrite || request.type == kCmdRead;
    if (payload_in_memory) {
      // The server's budget (a write's payload stays in the socket meanwhile).
      while (!dead_ && !stop_requested_ && server_->bytes_in_flight > 0 &&
             server_->bytes_in_flight + request.length > kServerBytesInFlight)
        co_await server_->budget_freed.wait();
      if (dead_ || stop_requested_) co_return;
    }
    // Charged before the payload is read, so that no other connection's request can take
    // the same room meanwhile.
    Reply* reply = acquire_reply();
    if (payload_in_memory) charge(reply, request.length);
    Buffer data;
    if (request.type == kCmdWrite && request.length) {
      data = pool_.get(request.length);
      // A stream that ends inside the payload: the reply goes back, or the connection's
      // drain would wait for it for ever.
      std::exception_ptr cut_short;
      try {
        co_await reader_.read_exact(data.span().first(request.length));
      } catch (...) {
        cut_short = std::current_exception();
      }
      if (cut_short) {
        release_reply(reply);
        std::rethrow_exception(cut_short);
      }
    }
    asio::co_spawn(server_->executor, handle(shared_from_this(), request, reply, std::move(data)), asio::detached);
  }
}

// On a unix socket, a write whose payload is already buffered, to a range that lies in a
// writable file mapping (raw over a tmpfs file), is one copy from the input buffer (by
// the kernel, so that a kill leaves whole pages), answered at once: no buffer, no task.
// (Over TCP the faster answers left fewer replies per segment, and loopback TCP charges
// each segment's receive to its sender: 4k randwrite at QD32 went from 225k to 181k IOPS.
// So TCP keeps the general path.) False when the request needs the general path.
bool Connection::write_in_place(const Request& request) {
  if (!unix_socket_ || request.length == 0 || (request.flags & kCmdFlagFua) || reader_.buffered() < request.length)
    return false;
  auto span = node_.file_span(request.offset, request.length);
  if (!span || !span->writable) return false;
  if (!store_whole_pages(span->memory, reader_.peek(), request.length)) return false;
  reader_.take(request.length);
  Reply* reply = acquire_reply();
  finish_ok(*reply, request);
  enqueue(reply);
  return true;
}

// 0 when the request may run, else the NBD error to answer with.
int Connection::validate(const Request& r) const {
  std::uint16_t allowed = kCmdFlagFua;
  switch (r.type) {
    case kCmdRead:
      if (structured_) allowed |= kCmdFlagDf;
      break;
    case kCmdWrite:
    case kCmdFlush:
    case kCmdTrim:
    case kCmdCache:
      break;
    case kCmdWriteZeroes:
      allowed |= kCmdFlagNoHole | kCmdFlagFastZero;
      break;
    case kCmdBlockStatus:
      allowed |= kCmdFlagReqOne;
      break;
    default:
      return EINVAL;
  }
  if (r.flags & ~allowed) return EINVAL;
  if (config_.read_only && (r.type == kCmdWrite || r.type == kCmdTrim || r.type == kCmdWriteZeroes)) return EPERM;
  if ((r.type == kCmdRead || r.type == kCmdWrite) && r.length > kMaxBlockSize) return EOVERFLOW;
  if (r.type == kCmdFlush) return 0;
  const std::uint64_t size = node_.size();
  if (r.offset > size || r.length > size - r.offset)
    return (r.type == kCmdWrite || r.type == kCmdWriteZeroes) ? ENOSPC : EINVAL;
  if (r.type == kCmdBlockStatus) {
    if (!base_allocation_) return EINVAL;
    if (r.length == 0) return EINVAL;
  }
  return 0;
}

// The message sent with a validate() error (structured replies carry it to the user).
std::string Connection::error_text(const Request& r, int err) const {
  const std::string what = command_name(r.type);
  const std::uint64_t size = node_.size();
  if (r.type > kCmdBlockStatus || r.type == kCmdDisc) return "unknown or unsupported " + what;
  if (err == EPERM) return what + ": the export is read-only";
  if (err == EOVERFLOW)
    return what + ": length " + std::to_string(r.length) + " is over the maximum block size " +
           std::to_string(kMaxBlockSize);
  if (r.type != kCmdFlush && (r.offset > size || r.length > size - r.offset))
    return what + ": offset " + std::to_string(r.offset) + " + length " + std::to_string(r.length) +
           " is past the end of the export (" + std::to_string(size) + " bytes)";
  if (r.type == kCmdBlockStatus && !base_allocation_) return what + ": no meta context was negotiated";
  if (r.type == kCmdBlockStatus && r.length == 0) return what + ": zero length";
  return what + ": invalid flags " + std::to_string(r.flags);
}

Task<void> Connection::handle(std::shared_ptr<Connection> self, Request request, Reply* reply, Buffer data) {
  co_await self->execute(request, *reply, std::move(data));
  self->enqueue(reply);
}

Task<void> Connection::execute(const Request& r, Reply& reply, Buffer data) {
  try {
    switch (r.type) {
      case kCmdRead:
        co_await do_read(r, reply);
        co_return;
      case kCmdWrite:
        co_await node_.write(r.offset, data.span().first(r.length), (r.flags & kCmdFlagFua) ? kWriteFua : 0);
        pool_.put(std::move(data));
        break;
      case kCmdFlush:
        co_await node_.flush();
        break;
      case kCmdTrim:
        co_await node_.discard(r.offset, r.length, (r.flags & kCmdFlagFua) ? kWriteFua : 0);
        break;
      case kCmdWriteZeroes: {
        unsigned flags = 0;
        if (!(r.flags & kCmdFlagNoHole)) flags |= kZeroMayUnmap;
        if (r.flags & kCmdFlagFastZero) {
          if (!node_.caps().can_zero) throw Error(ENOTSUP, "NBD_CMD_WRITE_ZEROES: no fast zeroing on this export");
          flags |= kZeroFast;
        }
        if (r.flags & kCmdFlagFua) flags |= kWriteFua;
        co_await node_.write_zeroes(r.offset, r.length, flags);
        break;
      }
      case kCmdCache:
        break;  // advisory; the node has no cache to fill
      case kCmdBlockStatus:
        co_await do_block_status(r, reply);
        co_return;
    }
    finish_ok(reply, r);
  } catch (const Error& e) {
    pool_.put(std::move(data));
    reset_reply(reply);
    finish_error(reply, r, e.code(), e.what());
  } catch (const std::exception& e) {
    pool_.put(std::move(data));
    reset_reply(reply);
    finish_error(reply, r, EIO, e.what());
  }
}

Task<void> Connection::do_read(const Request& r, Reply& reply) {
  if (r.length == 0) {
    finish_ok(reply, r);
    co_return;
  }
  const std::size_t len = static_cast<std::size_t>(r.length);
  if (!tls_ && reply_from_file(r, reply, len)) co_return;
  // No block_status probe before reading: on some file systems (tmpfs) SEEK_HOLE scans
  // to the end of the file and costs far more than the read. A read that returns only
  // zeroes is still sent as a hole.
  Buffer buf = pool_.get(len);
  try {
    co_await node_.read(r.offset, buf.span().first(len));
  } catch (...) {
    pool_.put(std::move(buf));
    throw;
  }
  if (structured_ && is_zero(buf.span().first(len))) {
    pool_.put(std::move(buf));
    finish_hole(reply, r);
    co_return;
  }
  encode_read_header(reply, r, len);
  reply.data = std::move(buf);
  reply.data_len = len;
}

// A read of a node that lies in a file whose pages are in memory, answered without reading
// it here: large reads on unix sockets with sendfile (no copy in the server; push_out()),
// others from the file's mapping (one copy, into the socket). A large read of a range with
// no data goes out as a hole. False when the read needs a buffer: data still on the disk is
// read by the node, off the loop (sendfile would wait for the disk on the loop, and every
// other request with it).
bool Connection::reply_from_file(const Request& r, Reply& reply, std::size_t len) {
  auto span = node_.file_span(r.offset, len);
  if (!span) return false;
  const bool large = unix_socket_ && len >= kSendfileMinimum;
  if (!(span->memory && pages_in_memory(span->memory, len))) {
    // SEEK_DATA answers at once from a data offset (SEEK_HOLE, which scans tmpfs data, is
    // not asked).
    if (!large || !structured_) return false;
    const off_t data = ::lseek(span->fd, static_cast<off_t>(span->offset), SEEK_DATA);
    const bool no_data =
        (data < 0 && errno == ENXIO) || (data >= 0 && static_cast<std::uint64_t>(data) >= span->offset + len);
    if (no_data) finish_hole(reply, r);
    return no_data;
  }
  encode_read_header(reply, r, len);
  if (large) {
    reply.file_fd = span->fd;
    reply.file_offset = span->offset;
  } else {
    reply.mapped = span->memory;
  }
  reply.data_len = len;
  return true;
}

Task<void> Connection::do_block_status(const Request& r, Reply& reply) {
  BlockStatusChunk chunk;
  chunk.context_id = kBaseAllocationId;
  const std::uint64_t end = r.offset + r.length;
  // Compact descriptors hold 32-bit lengths: stay below 4 GiB per extent.
  const std::uint64_t max_extent = extended_ ? UINT64_MAX : 0xfffff000ull;
  std::uint64_t pos = r.offset;
  while (pos < end && chunk.extents.size() < kMaxExtents) {
    std::uint64_t want = std::min(end - pos, max_extent);
    ChainStatus cs = co_await chain_block_status(node_, pos, want);
    std::uint64_t flags = ((cs.status.flags & kStatusData) ? 0 : kStateHole) |
                          ((cs.status.flags & kStatusZero) ? kStateZero : 0);
    std::uint64_t len = std::min(cs.status.length, want);
    if (!chunk.extents.empty() && chunk.extents.back().flags == flags &&
        chunk.extents.back().length + len <= max_extent)
      chunk.extents.back().length += len;
    else
      chunk.extents.push_back({len, flags});
    pos += len;
    if (r.flags & kCmdFlagReqOne) break;
  }
  reply.tail.clear();
  encode_block_status(reply.tail, chunk, extended_);
  reply.head_len = encode_chunk_header(reply.head, extended_, kReplyFlagDone,
                                       extended_ ? kReplyTypeBlockStatusExt : kReplyTypeBlockStatus, r.cookie,
                                       r.offset, reply.tail.size());
}

}  // namespace netblk::nbd::server_detail
