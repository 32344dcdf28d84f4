// Fuzzes the curl driver's response header parsing: arbitrary bytes split into lines as
// libcurl would deliver them, plus Content-Range values and URL redaction on their own.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "protocols/curl/headers.hpp"
#include "protocols/curl/url.hpp"
#include "spec/uri.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  netblk::curlproto::ResponseFacts facts;
  std::size_t pos = 0;
  while (pos < input.size()) {
    std::size_t nl = input.find('\n', pos);
    std::size_t end = nl == std::string_view::npos ? input.size() : nl + 1;
    netblk::curlproto::parse_header_line(input.substr(pos, end - pos), facts);
    pos = end;
  }
  if (facts.content_range && facts.content_range->first && facts.content_range->last &&
      *facts.content_range->last < *facts.content_range->first)
    __builtin_trap();
  if (auto cr = netblk::curlproto::parse_content_range(input)) {
    if (cr->total && cr->last && *cr->last >= *cr->total) __builtin_trap();
  }
  std::string redacted = netblk::spec::redact_password(std::string(input));
  (void)redacted;
  return 0;
}
