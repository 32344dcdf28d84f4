#include "netblk/buffer.hpp"

#include <cstdlib>
#include <cstring>
#include <new>

namespace netblk {

void Buffer::Free::operator()(std::byte* p) const noexcept { std::free(p); }

Buffer::Buffer(std::size_t size) : size_(size) {
  void* p = nullptr;
  if (posix_memalign(&p, kAlignment, size ? size : 1) != 0) throw std::bad_alloc();
  data_.reset(static_cast<std::byte*>(p));
}

Buffer Buffer::zeroed(std::size_t size) {
  Buffer b(size);
  std::memset(b.data(), 0, size);
  return b;
}

bool is_zero(std::span<const std::byte> data) noexcept {
  const std::byte* p = data.data();
  std::size_t n = data.size();
  // Check a short head byte-wise, then compare the rest against itself shifted by 16 bytes:
  // if the first 16 bytes are zero and every byte equals the one 16 before it, all are zero.
  std::size_t head = n < 16 ? n : 16;
  for (std::size_t i = 0; i < head; ++i)
    if (p[i] != std::byte{0}) return false;
  if (n <= 16) return true;
  return std::memcmp(p, p + 16, n - 16) == 0;
}

}  // namespace netblk
