#include "core/file_io.hpp"

#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace netblk {

int pwrite_fully(int fd, const void* data, std::size_t n, std::uint64_t offset) noexcept {
  const auto* p = static_cast<const char*>(data);
  while (n) {
    const ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(offset));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return w < 0 ? errno : ENOSPC;
    p += w;
    offset += static_cast<std::uint64_t>(w);
    n -= static_cast<std::size_t>(w);
  }
  return 0;
}

FileStreamWriter::FileStreamWriter(int fd, std::uint64_t fd_offset, std::size_t block, bool skip_zero_blocks)
    : fd_(fd), at_(fd_offset), block_(block ? block : 1), skip_zero_blocks_(skip_zero_blocks) {}

// Writes `head` then `run`, which follow each other in the file from `at`, in one call when
// both are there (a completed kept block and the whole blocks after it).
int FileStreamWriter::write_span(const std::byte* head, std::size_t head_len, const std::byte* run,
                                 std::size_t run_len, std::uint64_t at) noexcept {
  if (!head_len) return pwrite_fully(fd_, run, run_len, at);
  if (!run_len) return pwrite_fully(fd_, head, head_len, at);
  struct iovec iov[2] = {{const_cast<std::byte*>(head), head_len}, {const_cast<std::byte*>(run), run_len}};
  const ssize_t w = ::pwritev(fd_, iov, 2, static_cast<off_t>(at));
  if (w < 0 && errno != EINTR) return errno;
  // Short or interrupted: finish piecewise.
  std::size_t done = w > 0 ? static_cast<std::size_t>(w) : 0;
  if (done < head_len) {
    if (int e = pwrite_fully(fd_, head + done, head_len - done, at + done)) return e;
    done = head_len;
  }
  return pwrite_fully(fd_, run + (done - head_len), run_len - (done - head_len), at + done);
}

int FileStreamWriter::append(const void* data, std::size_t n) noexcept {
  if (error_) return error_;
  const auto* p = static_cast<const std::byte*>(data);
  appended_ += n;
  // Complete the kept block first; it is written together with the whole blocks after it.
  const std::byte* head = nullptr;
  std::size_t head_len = 0;
  if (kept_len_) {
    const std::size_t m = std::min(n, block_ - kept_len_);
    std::memcpy(kept_.data() + kept_len_, p, m);
    kept_len_ += m;
    p += m;
    n -= m;
    if (kept_len_ < block_) return 0;
    kept_len_ = 0;
    at_ += block_;
    if (!(skip_zero_blocks_ && is_zero({kept_.data(), block_}))) {
      head = kept_.data();
      head_len = block_;
    }
  }
  // Whole blocks straight from the piece: each run of blocks to write in one call.
  const std::size_t whole = n - n % block_;
  std::uint64_t span_at = at_ - head_len;
  std::size_t run = 0;  // the run being gathered starts at p + run
  for (std::size_t i = 0; skip_zero_blocks_ && i < whole; i += block_) {
    if (!is_zero({p + i, block_})) continue;
    if (head_len || i > run) {
      if ((error_ = write_span(head, head_len, p + run, i - run, span_at))) return error_;
    }
    head_len = 0;
    run = i + block_;
    span_at = at_ + run;
  }
  if (head_len || whole > run) {
    if ((error_ = write_span(head, head_len, p + run, whole - run, span_at))) return error_;
  }
  at_ += whole;
  // Keep the partial last block for the next piece.
  if (n > whole) {
    if (kept_.size() == 0) kept_ = Buffer(block_);
    std::memcpy(kept_.data(), p + whole, n - whole);
    kept_len_ = n - whole;
  }
  return 0;
}

int FileStreamWriter::finish() noexcept {
  if (error_ || !kept_len_) return error_;
  const std::size_t len = kept_len_;
  kept_len_ = 0;
  if (!(skip_zero_blocks_ && is_zero({kept_.data(), len}))) error_ = pwrite_fully(fd_, kept_.data(), len, at_);
  at_ += len;
  return error_;
}

}  // namespace netblk
