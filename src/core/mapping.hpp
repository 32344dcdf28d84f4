// Working with shared mappings of files. A write to a shared mapping of a tmpfs file raises
// SIGBUS when the file system is full or the file was truncated by another process, where
// pwrite would have returned ENOSPC or written past the end; and touching a hole through a
// tmpfs mapping allocates a page for it, where pread would have read zeroes.
#pragma once
#include <cstddef>

namespace netblk {

// Copies `n` bytes from `src` to `dst`, where either may lie in a file mapping. Returns
// false when the copy raised SIGBUS: some bytes may then have been copied, so the caller
// redoes the whole operation another way (pwrite) to get the real result or error. Any
// other SIGBUS (one not raised inside this function) still ends the process.
bool copy_unless_sigbus(void* dst, const void* src, std::size_t n) noexcept;

// Runs fn(arg), which may read or write file mappings, and returns false when that raised
// SIGBUS (fn then stopped where it was). fn must not allocate, lock, or own anything that
// needs destroying: the signal leaves it by a jump.
bool run_unless_sigbus(void (*fn)(void*), void* arg) noexcept;

// True when every page of [p, p + n) in a file mapping is in memory (one mincore call), so
// reading it allocates nothing. On tmpfs a page is in memory exactly when it holds data
// (or was swapped out: false then, and the caller reads another way). Ranges of more than
// 64 pages are answered false.
bool pages_in_memory(const void* p, std::size_t n) noexcept;

}  // namespace netblk
