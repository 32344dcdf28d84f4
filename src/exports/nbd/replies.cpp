// Replies: encoded into Reply slots, queued, and sent by one writer in batches with
// non-blocking sendmsg (sendfile for file data), or through the TLS session.
#include "exports/nbd/connection.hpp"

#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>

#include "core/log.hpp"

namespace netblk::nbd::server_detail {

void Connection::encode_read_header(Reply& reply, const Request& r, std::size_t len) {
  if (structured_) {
    reply.head_len = encode_chunk_header(reply.head, extended_, kReplyFlagDone, kReplyTypeOffsetData, r.cookie,
                                         r.offset, len + kOffsetDataPrefixSize);
    reply.head_len += encode_offset_data_prefix(std::span(reply.head).subspan(reply.head_len), r.offset);
  } else {
    reply.head_len = encode_simple_reply(reply.head, r.cookie, 0);
  }
}

void Connection::finish_hole(Reply& reply, const Request& r) {
  reply.head_len = encode_chunk_header(reply.head, extended_, kReplyFlagDone, kReplyTypeOffsetHole, r.cookie,
                                       r.offset, kOffsetHoleSize);
  reply.head_len += encode_offset_hole(std::span(reply.head).subspan(reply.head_len), r.offset,
                                       static_cast<std::uint32_t>(r.length));
}

void Connection::finish_ok(Reply& reply, const Request& r) {
  if (extended_ || (structured_ && r.type == kCmdRead))
    reply.head_len =
        encode_chunk_header(reply.head, extended_, kReplyFlagDone, kReplyTypeNone, r.cookie, r.offset, 0);
  else
    reply.head_len = encode_simple_reply(reply.head, r.cookie, 0);
}

void Connection::finish_error(Reply& reply, const Request& r, int err, const std::string& message) {
  std::uint32_t nbd_error = errno_to_nbd(err);
  if (nbd_error == 0) nbd_error = kEio;
  NETBLK_LOG(debug, "nbd: {} failed: {}", command_name(r.type), message);
  if (structured_) {
    reply.tail.clear();
    encode_error_chunk(reply.tail, ErrorChunk{nbd_error, message, std::nullopt});
    reply.head_len = encode_chunk_header(reply.head, extended_, kReplyFlagDone, kReplyTypeError, r.cookie, r.offset,
                                         reply.tail.size());
  } else {
    reply.head_len = encode_simple_reply(reply.head, r.cookie, nbd_error);
  }
}

// Sends queued replies without blocking: memory in one gathered sendmsg, read data that
// lies in a file with sendfile (the kernel passes the page-cache pages on; no copy
// through our buffers). True when the queue is empty; false when the socket is full or
// dead, and the writer has to wait.
bool Connection::push_out() {
  const int fd = socket_.native_handle();
  while (!queue_.empty()) {
    if (dead_) return false;
    Reply* front = queue_.front();
    ssize_t sent;
    std::size_t attempted;
    if (front->file_fd >= 0 && partial_ >= front->head_len) {
      const std::size_t done = partial_ - front->head_len;
      attempted = front->data_len - done;
      off_t offset = static_cast<off_t>(front->file_offset + done);
      sent = ::sendfile(fd, front->file_fd, &offset, attempted);
      if (sent == 0) {
        // The file shrank under us: what is past its end reads as zeroes.
        static const std::array<std::byte, 64 << 10> zeroes{};
        attempted = std::min(attempted, zeroes.size());
        sent = ::send(fd, zeroes.data(), attempted, MSG_DONTWAIT | MSG_NOSIGNAL);
      }
    } else {
      std::array<iovec, 3 * 32> iov;
      std::size_t n = 0, skip = partial_;
      attempted = 0;
      auto add = [&](const std::byte* p, std::size_t len) {
        if (len == 0) return;
        if (skip >= len) {
          skip -= len;
          return;
        }
        iov[n++] = iovec{const_cast<std::byte*>(p) + skip, len - skip};
        attempted += len - skip;
        skip = 0;
      };
      for (Reply* q : queue_) {
        if (n + 3 > iov.size()) break;
        add(q->head.data(), q->head_len);
        if (q->file_fd >= 0) break;
        add(q->mapped ? q->mapped : q->data.data(), q->data_len);
        add(q->tail.data(), q->tail.size());
      }
      msghdr msg{};
      msg.msg_iov = iov.data();
      msg.msg_iovlen = n;
      sent = ::sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    if (sent < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) close_socket();
      return false;
    }
    advance(static_cast<std::size_t>(sent));
    if (static_cast<std::size_t>(sent) < attempted) return false;
  }
  return true;
}

// `sent` more bytes of the queue went out: replies sent whole are released.
void Connection::advance(std::size_t sent) {
  std::size_t done = partial_ + sent;
  bool finished = false;
  while (!queue_.empty() && done >= reply_bytes(queue_.front())) {
    done -= reply_bytes(queue_.front());
    release_reply(queue_.front());
    queue_.pop_front();
    finished = true;
  }
  partial_ = done;
  if (finished) slots_.notify_all();
}

// With TLS every byte goes through the session: the queue is written as one batch.
Task<void> Connection::write_batch_tls() {
  std::deque<Reply*> batch;
  batch.swap(queue_);
  std::vector<asio::const_buffer> buffers;
  for (Reply* r : batch) {
    for (auto b : {asio::const_buffer(r->head.data(), r->head_len), asio::const_buffer(r->data.data(), r->data_len),
                   asio::const_buffer(r->tail.data(), r->tail.size())})
      if (b.size()) buffers.push_back(b);
  }
  try {
    co_await tls_->write(buffers);
  } catch (const std::exception& e) {
    NETBLK_LOG(debug, "nbd: writing replies failed: {}", e.what());
    close_socket();
  }
  for (Reply* r : batch) release_reply(r);
  slots_.notify_all();
}

Task<void> Connection::writer() {
  auto self = shared_from_this();
  while (true) {
    while (queue_.empty() && !dead_ && !(reading_done_ && in_flight_ == 0)) co_await queue_changed_.wait();
    if (queue_.empty()) break;
    if (dead_) {
      while (!queue_.empty()) {
        release_reply(queue_.front());
        queue_.pop_front();
      }
      partial_ = 0;
      slots_.notify_all();
      continue;
    }
    if (tls_) {
      co_await write_batch_tls();
      continue;
    }
    if (!push_out() && !dead_) {
      std::error_code ec;
      co_await socket_.async_wait(Socket::wait_write, asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        NETBLK_LOG(debug, "nbd: writing replies failed: {}", ec.message());
        close_socket();
      }
    }
  }
  writer_done_.set();
}

// Waits until every request has been answered (or, on a dead socket, dropped) and the
// writer has ended: no request may still be using the node when the server returns.
Task<void> Connection::drain() {
  reading_done_ = true;
  if (!writer_started()) co_return;
  while (in_flight_ > 0) co_await slots_.wait();
  queue_changed_.notify_all();
  co_await writer_done_.wait();
}

}  // namespace netblk::nbd::server_detail
