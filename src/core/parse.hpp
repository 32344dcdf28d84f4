// QEMU's scalar syntaxes, shared by every option reader and the CLI, and the few text
// helpers (sizes, offsets, paths) its messages are written with.
#pragma once
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

namespace netblk {

// QEMU's size syntax: "512", "64k", "1.5G", "0x1000". Suffixes b k m g t p e (either case;
// k = 1024). A fraction needs a suffix and must come to whole bytes. Negative values,
// overflow past `max`, empty input and unknown suffixes throw Error naming `what` and the text.
std::uint64_t parse_size(std::string_view text, std::string_view what = "size",
                         std::uint64_t max = std::numeric_limits<std::int64_t>::max());

// QEMU's bool syntax: on/off, yes/no, true/false, y/n. Anything else throws Error.
bool parse_bool(std::string_view text, std::string_view what = "value");

// A plain non-negative decimal (or 0x hex) integer with bounds.
std::uint64_t parse_uint(std::string_view text, std::string_view what,
                         std::uint64_t max = std::numeric_limits<std::uint64_t>::max());

// Formats a byte count the way qemu-img does: "1 GiB", "1.5 MiB", "512 B".
std::string human_size(std::uint64_t bytes);

// "0x" and the value in lower-case hex, as QEMU's messages print offsets.
std::string hex(std::uint64_t v);

// The directory part of a path: "" when it has none, "/" for a file in the root.
std::string directory_of(const std::string& path);

}  // namespace netblk
