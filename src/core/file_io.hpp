// Small helpers around file descriptors.
#pragma once
#include <cstddef>
#include <cstdint>

namespace netblk {

// pwrite() until all `n` bytes are written, retrying interrupted and short writes. Returns
// 0, or the errno of the call that failed (ENOSPC for a file that takes no more bytes).
int pwrite_fully(int fd, const void* data, std::size_t n, std::uint64_t offset) noexcept;

}  // namespace netblk
