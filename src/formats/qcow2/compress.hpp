// qcow2 cluster compression: raw deflate (window 2^12, as QEMU) and zstd.
#pragma once
#include <cstddef>
#include <optional>
#include <span>

namespace netblk::qcow2 {

// Decompresses `in` into exactly `out.size()` bytes; false when the data is not a valid
// stream or yields fewer bytes. Trailing input after a complete cluster is ignored.
bool decompress(int type, std::span<const std::byte> in, std::span<std::byte> out);

// Compresses `in` into `out`; the compressed size, or nullopt when it does not fit `out`.
std::optional<std::size_t> compress(int type, std::span<const std::byte> in, std::span<std::byte> out);

}  // namespace netblk::qcow2
