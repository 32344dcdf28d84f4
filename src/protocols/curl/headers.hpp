// Pure parsing of what HTTP, FTP and TFTP servers answer, kept free of libcurl so that it
// can be unit-tested and fuzzed: response header lines (status, Content-Length,
// Content-Range, Accept-Ranges) and the parts of a URL the driver needs to name a drive
// without its password.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace netblk::curlproto {

// "bytes FIRST-LAST/TOTAL", "bytes */TOTAL" or "bytes FIRST-LAST/*".
struct ContentRange {
  std::optional<std::uint64_t> first, last;  // both or neither
  std::optional<std::uint64_t> total;
};
std::optional<ContentRange> parse_content_range(std::string_view value);

// The facts of one response, fed header line by header line as libcurl delivers them
// (each line with its CRLF). A status line ("HTTP/1.1 206 Partial Content", "HTTP/2 200")
// starts a new response, so after redirects and 100-continue only the last one counts.
// Header names are matched case-insensitively and whitespace around values is ignored.
struct ResponseFacts {
  int status = 0;  // 0 until a status line was seen (FTP/TFTP have none)
  std::optional<std::uint64_t> content_length;
  std::optional<ContentRange> content_range;
  bool accept_ranges = false;  // "Accept-Ranges: bytes"
  bool ranges_refused = false;  // "Accept-Ranges: none"
  void reset() { *this = ResponseFacts{}; }
};
void parse_header_line(std::string_view line, ResponseFacts& facts);

// Splits "name: value" (trimmed); false for a line that is not a header.
bool split_header(std::string_view line, std::string_view& name, std::string_view& value);
// Case-insensitive ASCII comparison.
bool iequals(std::string_view a, std::string_view b);
// A plain decimal number without sign or suffix, within uint64.
std::optional<std::uint64_t> parse_decimal(std::string_view text);

}  // namespace netblk::curlproto
