// Working with shared mappings of files. A write to a shared mapping of a tmpfs file raises
// SIGBUS when the file system is full or the file was truncated by another process, where
// pwrite would have returned ENOSPC or written past the end; and touching a hole through a
// tmpfs mapping allocates a page for it, where pread would have read zeroes.
#pragma once
#include <cstddef>

namespace netblk {

// Copies `n` bytes from `src` into `dst`, which lies in a shared writable file mapping,
// through the kernel (process_vm_writev on this process): a process killed during the copy
// leaves each page it touched written whole or not at all, as pwrite does, where a store
// from user space may be cut off at any byte (a torn sector, which no disk leaves). Returns
// false when not every byte was copied (no space for a block, the file cut short, the
// system call refused): the caller redoes the whole write another way (pwrite) to get the
// real result or error. Raises no signal.
bool store_whole_pages(void* dst, const void* src, std::size_t n) noexcept;

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
