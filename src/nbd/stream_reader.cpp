#include "nbd/stream_reader.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <asio/error.hpp>
#include <cerrno>
#include <cstring>
#include <system_error>

#include "core/file_io.hpp"

namespace netblk::nbd {

void StreamReader::reserve(std::size_t capacity) {
  if (capacity > buf_.size()) buf_.resize(capacity);
}

Task<void> StreamReader::fill(std::size_t n) {
  if (buffered() >= n) co_return;
  reserve(n);
  if (buf_.size() - pos_ < n) {
    std::memmove(buf_.data(), buf_.data() + pos_, buffered());
    end_ -= pos_;
    pos_ = 0;
  }
  while (buffered() < n) {
    std::size_t room = buf_.size() - end_;
    if (readahead_limit_) room = std::min(room, std::max(n - buffered(), readahead_limit_));
    end_ += co_await stream_->read_some(std::span(buf_).subspan(end_, room));
  }
}

Task<void> StreamReader::read_exact(std::span<std::byte> out) {
  std::size_t done = std::min(out.size(), buffered());
  if (done) std::memcpy(out.data(), take(done).data(), done);
  while (done < out.size()) {
    const std::size_t want = out.size() - done;
    if (want >= direct_) {
      // Large payloads go straight to their destination.
      done += co_await stream_->read_some(out.subspan(done));
      continue;
    }
    co_await fill(want);
    std::memcpy(out.data() + done, take(want).data(), want);
    done += want;
  }
}

Task<void> StreamReader::skip(std::uint64_t n) {
  while (n) {
    const std::size_t step = static_cast<std::size_t>(std::min<std::uint64_t>(n, buf_.size()));
    co_await fill(step);
    take(step);
    n -= step;
  }
}

Task<int> StreamReader::read_to_file(int fd, std::uint64_t fd_offset, std::uint64_t n) {
  int error = 0;
  const auto keep = [&](int e) {
    if (!error) error = e;
  };
  const int socket = splice_works_ ? stream_->plain_socket() : -1;
  if (socket < 0) {
    while (n) {
      if (pos_ == end_) {
        pos_ = 0;
        end_ = co_await stream_->read_some(std::span(buf_).first(std::min<std::uint64_t>(n, buf_.size())));
      }
      const std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(n, end_ - pos_));
      if (!error) keep(pwrite_fully(fd, buf_.data() + pos_, k, fd_offset));
      pos_ += k;
      fd_offset += k;
      n -= k;
    }
    co_return error;
  }
  if (!pipe_) pipe_ = PayloadPipe::open();
  PayloadPipe& pipe = *pipe_;
  // The pipe's bytes go to the file at fd_offset; `n` more are to come after them.
  const auto drain = [&] {
    const std::size_t k = pipe.held;
    keep(pipe.drain_to(fd, fd_offset));
    if (pipe.broken()) {
      pipe_.reset();
      throw std::system_error(EIO, std::generic_category(), "emptying a pipe");
    }
    fd_offset += k;
  };
  while (n && pos_ < end_) {
    if (pipe.held >= pipe.room()) drain();
    const std::size_t k = std::min({static_cast<std::size_t>(n), end_ - pos_, pipe.room() - pipe.held});
    const ssize_t w = ::write(pipe.write_end(), buf_.data() + pos_, k);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) throw std::system_error(w < 0 ? errno : EIO, std::generic_category(), "writing to a pipe");
    pos_ += static_cast<std::size_t>(w);
    pipe.held += static_cast<std::size_t>(w);
    n -= static_cast<std::uint64_t>(w);
  }
  while (n) {
    if (pipe.held >= pipe.room()) drain();
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(n, pipe.room() - pipe.held));
    const ssize_t got =
        ::splice(socket, nullptr, pipe.write_end(), nullptr, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (got > 0) {
      pipe.held += static_cast<std::size_t>(got);
      n -= static_cast<std::uint64_t>(got);
      continue;
    }
    if (got == 0) throw std::system_error(asio::error::eof);
    if (errno == EINTR) continue;
    if (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP) {
      // A socket that takes no splice: the rest goes through the buffer, as later reads do.
      splice_works_ = false;
      drain();
      keep(co_await read_to_file(fd, fd_offset, n));
      co_return error;
    }
    if (errno != EAGAIN) throw std::system_error(errno, std::generic_category(), "splice");
    // EAGAIN: the socket is empty (empty the pipe meanwhile), or the pipe is full (its
    // pages only partly used).
    if (pipe.held) {
      drain();
      continue;
    }
    co_await stream_->wait_ready(false);
  }
  drain();
  co_return error;
}

bool StreamReader::reset_stream(std::shared_ptr<Stream> stream) {
  if (pos_ != end_) return false;
  stream_ = std::move(stream);
  return true;
}

}  // namespace netblk::nbd
