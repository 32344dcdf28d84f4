// QEMU's scalar syntaxes, shared by every option reader and the CLI.
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

}  // namespace netblk
