// Fuzzes json: names: parsing, merging nested and dotted keys, and opening the resulting
// option tree far enough to validate it (a file that does not exist; no I/O happens).
#include <cstddef>
#include <cstdint>
#include <string>

#include "netblk/open.hpp"
#include "spec/tree.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string text = "json:" + std::string(reinterpret_cast<const char*>(data), size);
  try {
    netblk::Json tree = netblk::spec::parse_json_name(text);
    netblk::Json copy = tree;
    netblk::spec::merge(copy, netblk::Json::object());
  } catch (const netblk::Error&) {
  }
  return 0;
}
