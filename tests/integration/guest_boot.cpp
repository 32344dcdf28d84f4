// A real consumer: qemu-system-x86_64 boots a Debian kernel with a busybox initramfs (built
// by tests/guest/make-guest.sh) whose disk is `netblk serve`, over a unix socket and over
// TCP. The guest checksums its whole disk (must equal the host's), writes a marker and
// powers off; the marker must then be in the image.
#include <gtest/gtest.h>

#include <regex>

#include "netblk_serve.hpp"
#include "servers.hpp"

using namespace netblk::test;

namespace {

struct Guest {
  std::string kernel, initrd;
};

const Guest& guest() {
  static Guest g = [] {
    std::string cache = std::string(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") + "/netblk-guest-cache";
    auto r = run({std::string(NETBLK_SOURCE_DIR) + "/tests/guest/make-guest.sh", cache}, std::chrono::seconds(300));
    if (r.exit_code != 0) throw std::runtime_error("building the guest failed: " + r.err);
    return Guest{cache + "/vmlinuz", cache + "/initramfs.gz"};
  }();
  return g;
}

std::string sha256(const std::string& path) {
  auto r = run({"sha256sum", path});
  return r.out.substr(0, 64);
}

// Boots the guest on `drive` (a QEMU -drive file= value) and returns its serial output.
std::string boot(const std::string& drive, const std::string& marker, std::uint64_t marker_sector) {
  const Guest& g = guest();
  auto r = run({"qemu-system-x86_64", "-M", "q35", "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot", "-nic",
                "none", "-kernel", g.kernel, "-initrd", g.initrd, "-append",
                "console=ttyS0 quiet panic=-1 MARKER=" + marker + " MARKER_SECTOR=" + std::to_string(marker_sector),
                "-drive", "file=" + drive + ",format=raw,if=virtio,cache=writeback"},
               std::chrono::seconds(180));
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  return r.out;
}

std::string guest_sum(const std::string& console) {
  std::smatch m;
  static const std::regex re("NETBLK-SUM ([0-9a-f]{64})");
  return std::regex_search(console, m, re) ? m[1].str() : "(no checksum in the guest's output)";
}

std::string read_at(const std::string& path, std::uint64_t offset, std::size_t n) {
  std::string data = read_file(path);
  return offset + n <= data.size() ? data.substr(offset, n) : std::string();
}

}  // namespace

TEST(GuestBoot, OverUnixSocket) {
  TempDir dir;
  std::string image = dir / "disk.raw";
  write_pattern_file(image, 48 << 20, 7);
  std::string want = sha256(image);
  {
    NetblkServe server({.args = {"-t", "-f", "raw", image}, .unix_socket = true});
    std::string console = boot(server.url(), "unix1", 4096);
    EXPECT_EQ(guest_sum(console), want) << console;
    EXPECT_NE(console.find("NETBLK-MARKER-WRITTEN"), std::string::npos) << console;
    EXPECT_EQ(server.stop(SIGTERM), 0) << server.log();  // flushes and exits 0
  }
  EXPECT_EQ(read_at(image, 4096 * 512, 19), "netblk-marker-unix1");
}

TEST(GuestBoot, OverTcp) {
  TempDir dir;
  std::string image = dir / "disk.raw";
  write_pattern_file(image, 48 << 20, 8);
  std::string want = sha256(image);
  NetblkServe server({.args = {"-t", "-f", "raw", image}});
  std::string console = boot(server.url(), "tcp1", 4096);
  EXPECT_EQ(guest_sum(console), want) << console;
  EXPECT_NE(console.find("NETBLK-MARKER-WRITTEN"), std::string::npos) << console;
  EXPECT_EQ(server.stop(SIGTERM), 0) << server.log();
  EXPECT_EQ(read_at(image, 4096 * 512, 18), "netblk-marker-tcp1");
}
