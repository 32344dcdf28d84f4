// Where a read's bytes go, for the streams and range requests that fill it.
#pragma once
#include <cstdint>
#include <cstring>
#include <span>

#include "core/file_io.hpp"

namespace netblk::curlproto {

// Where a read's bytes go: the caller's buffer, or a file through a FileStreamWriter (which
// takes them in order). A failed file write is kept; it ends the read.
struct ReadDestination {
  std::span<std::byte> buf;  // for a file: only its size counts
  FileStreamWriter* file = nullptr;
  int write_error = 0;
  std::uint64_t size() const { return buf.size(); }
  // Puts `n` bytes at `at` of the read (for a file, `at` follows what it has).
  void put(std::uint64_t at, const char* data, std::size_t n) {
    if (!file) std::memcpy(buf.data() + at, data, n);
    else if (!write_error) write_error = file->append(data, n);
  }
  static ReadDestination into_file(std::uint64_t length, FileStreamWriter& writer) {
    return {{static_cast<std::byte*>(nullptr), static_cast<std::size_t>(length)}, &writer};
  }
};

}  // namespace netblk::curlproto
