// Opens a drive by any of QEMU's names with the installed netblk library and reads its
// first block. Usage: read_block NAME | read_block --image-opts KEY=VALUE,...
// Prints "SIZE BYTES-READ FIRST-BYTES-IN-HEX".
#include <cstdio>
#include <string>

#include <netblk/buffer.hpp>
#include <netblk/error.hpp>
#include <netblk/open.hpp>
#include <netblk/runtime.hpp>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s NAME | --image-opts KEY=VALUE,...\n", argv[0]);
    return 2;
  }
  netblk::DriveSpec spec;
  if (std::string(argv[1]) == "--image-opts" && argc > 2) spec = netblk::drive_from_image_opts(argv[2]);
  else spec.filename = argv[1];
  spec.read_only = true;
  try {
    const std::string line = netblk::run_sync<std::string>([&]() -> netblk::Task<std::string> {
      auto node = co_await netblk::open_drive(spec);
      const std::uint64_t size = node->size();
      const std::size_t n = size < 512 ? static_cast<std::size_t>(size) : 512;
      netblk::Buffer block(512);
      if (n) co_await node->read(0, block.span().subspan(0, n));
      co_await node->close();
      std::string out = std::to_string(size) + " " + std::to_string(n) + " ";
      char hex[3];
      for (std::size_t i = 0; i < n && i < 16; ++i) {
        std::snprintf(hex, sizeof hex, "%02x", static_cast<unsigned>(block.data()[i]));
        out += hex;
      }
      co_return out;
    });
    std::printf("%s\n", line.c_str());
  } catch (const netblk::Error& e) {
    std::fprintf(stderr, "read_block: %s\n", e.what());
    return 1;
  }
  return 0;
}
