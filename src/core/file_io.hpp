// Small helpers around file descriptors.
#pragma once
#include <cstddef>
#include <cstdint>

#include "netblk/buffer.hpp"

namespace netblk {

// pwrite() until all `n` bytes are written, retrying interrupted and short writes. Returns
// 0, or the errno of the call that failed (ENOSPC for a file that takes no more bytes).
int pwrite_fully(int fd, const void* data, std::size_t n, std::uint64_t offset) noexcept;

// Writes a byte stream that comes in pieces of any size (a transfer's body) into a file,
// from `fd_offset` on. Writes cover whole `block`s counted from the stream's start (a piece's
// partial last block is kept until the next piece completes it): a page-cache page written
// in part must first be zeroed, so the blocks should be multiples of the page size. With
// `skip_zero_blocks`, blocks that are all zero are left unwritten; use it only where the
// file range already reads as zeros (the blocks then stay holes, as a sparse copy wants).
class FileStreamWriter {
 public:
  FileStreamWriter(int fd, std::uint64_t fd_offset, std::size_t block, bool skip_zero_blocks);
  // Takes the next `n` bytes of the stream. Returns 0, or the errno of a failed write (the
  // writer then takes nothing more and returns that errno again).
  int append(const void* data, std::size_t n) noexcept;
  // Writes the kept partial block, if any. Returns 0 or the errno of a failed write.
  int finish() noexcept;
  // How many bytes the stream has given so far.
  std::uint64_t appended() const noexcept { return appended_; }

 private:
  int write_span(const std::byte* head, std::size_t head_len, const std::byte* run, std::size_t run_len,
                 std::uint64_t at) noexcept;

  int fd_;
  std::uint64_t at_;  // where the next whole block (the kept one, when there is one) goes
  std::size_t block_;
  bool skip_zero_blocks_;
  Buffer kept_;              // a partial block, allocated on first use
  std::size_t kept_len_ = 0;
  std::uint64_t appended_ = 0;
  int error_ = 0;
};

}  // namespace netblk
