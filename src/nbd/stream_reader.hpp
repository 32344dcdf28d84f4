// The byte stream under an NBD connection and the one buffered reader both sides use:
// the client (protocols/nbd) for option replies and reply chunks, the server
// (exports/nbd) for options, request headers and write payloads.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include <asio/buffer.hpp>

#include "nbd/payload_pipe.hpp"
#include "netblk/runtime.hpp"

namespace netblk::nbd {

// A bidirectional byte stream. read_some returns at least one byte or throws (EOF too).
class Stream {
 public:
  virtual ~Stream() = default;
  virtual Task<std::size_t> read_some(std::span<std::byte> buf) = 0;
  virtual Task<void> write(const std::vector<asio::const_buffer>& buffers) = 0;
  // Idempotent; pending reads and writes fail.
  virtual void close() = 0;
  // The socket under the stream (-1 if none), and a wait until it can be read or written
  // (for TLS, which does its own non-blocking I/O on the socket).
  virtual int native_handle() { return -1; }
  virtual Task<void> wait_ready(bool /*write*/) { co_return; }
  // The socket when the stream's bytes are the socket's bytes (no TLS), so they may be
  // spliced out of it; -1 otherwise.
  virtual int plain_socket() { return -1; }
};

// Buffered reads over a Stream: small headers come from a buffer, large payloads are read
// directly into their destination.
class StreamReader {
 public:
  // `capacity`: the buffer's size. A read_exact() that still wants `direct` bytes or more
  // once the buffer is empty reads them straight into its destination (0: capacity / 2).
  explicit StreamReader(std::shared_ptr<Stream> stream, std::size_t capacity = 64 * 1024, std::size_t direct = 0)
      : stream_(std::move(stream)), buf_(capacity), direct_(direct ? direct : capacity / 2) {}

  std::size_t buffered() const noexcept { return end_ - pos_; }
  // The buffered bytes; valid until the next read.
  const std::byte* peek() const noexcept { return buf_.data() + pos_; }
  // Consumes `n` <= buffered() bytes; the span is valid until the next read.
  std::span<const std::byte> take(std::size_t n) noexcept {
    auto s = std::span<const std::byte>(buf_.data() + pos_, n);
    pos_ += n;
    if (pos_ == end_) pos_ = end_ = 0;
    return s;
  }
  // Makes `n` bytes buffered, reading what the stream has (at most the read-ahead limit
  // beyond them). The buffer grows to `n` when it is smaller: callers bound `n`.
  Task<void> fill(std::size_t n);
  // Grows the buffer to `capacity` bytes (never shrinks it), keeping what it holds. A
  // server starts each connection small and grows it once the handshake is done.
  void reserve(std::size_t capacity);
  Task<void> read_exact(std::span<std::byte> out);
  Task<void> skip(std::uint64_t n);
  // Reads `n` bytes into the file `fd` at `fd_offset` (pwrite semantics). From a plain
  // socket they are spliced through a pipe (the kernel copies them once, pipe to file);
  // otherwise they go through the buffer. When the file fails the stream stays in step
  // (the rest is consumed) and its errno is returned; 0 otherwise.
  Task<int> read_to_file(int fd, std::uint64_t fd_offset, std::uint64_t n);
  // Refills of the buffer read at most max(`bytes`, what is asked for); 0: fill it. While
  // payloads go to files, reading only a reply's header keeps its data for splice().
  void limit_readahead(std::size_t bytes) noexcept { readahead_limit_ = bytes; }
  // Continues on another stream (after STARTTLS); false if bytes were still buffered.
  bool reset_stream(std::shared_ptr<Stream> stream);

 private:
  std::shared_ptr<Stream> stream_;
  std::vector<std::byte> buf_;
  std::size_t direct_;
  std::size_t pos_ = 0, end_ = 0;
  std::size_t readahead_limit_ = 0;
  std::optional<PayloadPipe> pipe_;  // for read_to_file, made on first use
  bool splice_works_ = true;
};

}  // namespace netblk::nbd
