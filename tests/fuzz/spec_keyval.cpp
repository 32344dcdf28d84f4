// Fuzzes the k=v,k=v parser and the dotted-key tree builder (--image-opts, --drive, -o,
// --object): any input is a tree or an Error, never a crash.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "netblk/open.hpp"
#include "spec/tree.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    netblk::Json tree = netblk::spec::parse_keyval(text);
    // Round trip: flattening and crumpling again gives the same tree.
    netblk::Json again = netblk::spec::crumple(netblk::spec::flatten(tree));
    if (again != tree) __builtin_trap();
  } catch (const netblk::Error&) {
  }
  try {
    netblk::drive_from_drive_opts(text);
  } catch (const netblk::Error&) {
  }
  return 0;
}
