#include "core/file_io.hpp"

#include <unistd.h>

#include <cerrno>

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

}  // namespace netblk
