// The few text helpers netblk's messages and names are written with, as QEMU writes them:
// sizes, offsets, paths.
#pragma once
#include <cstdint>
#include <string>

namespace netblk {

// Formats a byte count the way qemu-img does: "1 GiB", "1.5 MiB", "512 B".
std::string human_size(std::uint64_t bytes);

// "0x" and the value in lower-case hex, as QEMU's messages print offsets.
std::string hex(std::uint64_t v);

// The directory part of a path: "" when it has none, "/" for a file in the root.
std::string directory_of(const std::string& path);

}  // namespace netblk
