// Aligned, owned byte buffers for I/O (O_DIRECT needs 4 KiB alignment).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

namespace netblk {

class Buffer {
 public:
  static constexpr std::size_t kAlignment = 4096;
  Buffer() = default;
  // Uninitialized storage of `size` bytes aligned to kAlignment.
  explicit Buffer(std::size_t size);
  // Zero-filled storage.
  static Buffer zeroed(std::size_t size);

  std::byte* data() noexcept { return data_.get(); }
  const std::byte* data() const noexcept { return data_.get(); }
  std::size_t size() const noexcept { return size_; }
  std::span<std::byte> span() noexcept { return {data(), size_}; }
  std::span<const std::byte> span() const noexcept { return {data(), size_}; }

 private:
  struct Free {
    void operator()(std::byte* p) const noexcept;
  };
  std::unique_ptr<std::byte, Free> data_;
  std::size_t size_ = 0;
};

// True when every byte of `data` is zero (fast path for sparse detection).
bool is_zero(std::span<const std::byte> data) noexcept;

}  // namespace netblk
