// The documented way to use a remote image: a local qcow2 overlay on an http backing file,
// exported with copy-on-read. Everything read is pulled into the overlay, so once it was
// all read the web server may go away. Also the same with a booting guest.
#include <gtest/gtest.h>

#include <regex>

#include "nginx.hpp"
#include "netblk_serve.hpp"
#include "servers.hpp"

using namespace netblk::test;

namespace {

constexpr std::uint64_t kSize = 24 << 20;

std::string sha256(const std::string& path) { return run({"sha256sum", path}).out.substr(0, 64); }

// The overlay alone, with its backing file cut off: what it did not pull in reads as zeroes.
std::string overlay_alone(const std::string& overlay) {
  return "json:{\"driver\":\"qcow2\",\"backing\":null,\"file\":{\"driver\":\"file\",\"filename\":\"" + overlay + "\"}}";
}

struct Fixture {
  TempDir dir;
  std::string www = dir / "www";
  std::string base, overlay = dir / "ov.qcow2";
  std::unique_ptr<Nginx> web;

  Fixture() {
    run({"mkdir", "-p", www});
    base = www + "/disk.img";
    write_pattern_file(base, kSize, 21);
    web = std::make_unique<Nginx>(Nginx::Options{.root = www});
    // The command from the documentation, commas in the json: name doubled.
    auto r = run_netblk({"create", "-f", "qcow2", "-o",
                         "backing_file=json:{\"file.driver\":\"http\",, \"file.url\":\"" + web->url("/disk.img") +
                             "\",, \"file.readahead\":\"64k\"}",
                         "-F", "raw", overlay});
    if (r.exit_code != 0) throw std::runtime_error("create failed: " + r.err);
  }
};

}  // namespace

TEST(OverlayHttp, CreateServeReadEverythingThenTheWebServerMayGo) {
  Fixture f;
  auto info = run_netblk({"info", "--output=json", f.overlay});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_NE(info.out.find("\"virtual-size\": " + std::to_string(kSize)), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("file.url"), std::string::npos) << info.out;
  EXPECT_EQ(run({"qemu-img", "check", f.overlay}).exit_code, 0);
  // qemu-img reads the same overlay (through our json: backing name) the same way.
  EXPECT_EQ(run({"timeout", "60", "qemu-img", "compare", "-f", "qcow2", "-F", "raw", f.overlay, f.base}).exit_code, 0);

  NetblkServe server({.args = {"-t", "-e", "0", "--drive", "file=" + f.overlay + ",format=qcow2,copy-on-read=on"}});
  std::string url = server.url();
  auto first = run_netblk({"compare", "-f", "raw", "-F", "raw", url, f.base});
  EXPECT_EQ(first.exit_code, 0) << first.out << first.err;

  f.web->stop();  // everything was read: the web server may go away
  auto second = run_netblk({"compare", "-f", "raw", "-F", "raw", url, f.base});
  EXPECT_EQ(second.exit_code, 0) << second.out << second.err;
  auto qemu = run({"timeout", "60", "qemu-img", "compare", "-f", "raw", "-F", "raw", url, f.base});
  EXPECT_EQ(qemu.exit_code, 0) << qemu.out << qemu.err;
  EXPECT_EQ(server.stop(SIGTERM), 0) << server.log();

  // The overlay itself now holds every byte, and is a sound qcow2 image.
  auto alone = run_netblk({"compare", "-F", "raw", overlay_alone(f.overlay), f.base});
  EXPECT_EQ(alone.exit_code, 0) << alone.out << alone.err;
  auto check = run({"qemu-img", "check", overlay_alone(f.overlay)});
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
}

TEST(OverlayHttp, GuestBootsFromTheOverlayAndPullsItIn) {
  Fixture f;
  std::string cache = std::string(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") + "/netblk-guest-cache";
  auto g = run({std::string(NETBLK_SOURCE_DIR) + "/tests/guest/make-guest.sh", cache}, std::chrono::seconds(300));
  ASSERT_EQ(g.exit_code, 0) << g.err;
  std::string want = sha256(f.base);
  NetblkServe server({.args = {"--drive", "file=" + f.overlay + ",format=qcow2,copy-on-read=on"}, .unix_socket = true});
  auto boot = run({"qemu-system-x86_64", "-M", "q35", "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot", "-nic",
                   "none", "-kernel", cache + "/vmlinuz", "-initrd", cache + "/initramfs.gz", "-append",
                   "console=ttyS0 quiet panic=-1 MARKER=cor1 MARKER_SECTOR=8192", "-drive",
                   "file=" + server.url() + ",format=raw,if=virtio"},
                  std::chrono::seconds(180));
  ASSERT_EQ(boot.exit_code, 0) << boot.out << boot.err;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(boot.out, m, std::regex("NETBLK-SUM ([0-9a-f]{64})"))) << boot.out;
  EXPECT_EQ(m[1].str(), want);
  EXPECT_NE(boot.out.find("NETBLK-MARKER-WRITTEN"), std::string::npos) << boot.out;
  // Without -t the export ends when the guest disconnects.
  EXPECT_EQ(server.process().wait(std::chrono::seconds(30)), 0) << server.log();
  f.web->stop();

  // After power-off the overlay holds everything the guest read, plus its write.
  std::string expected = f.dir / "expected.raw";
  run({"cp", f.base, expected});
  std::string marker = "netblk-marker-cor1";
  FILE* e = std::fopen(expected.c_str(), "r+b");
  ASSERT_TRUE(e);
  std::fseek(e, 8192 * 512, SEEK_SET);
  std::fwrite(marker.data(), 1, marker.size(), e);
  std::fclose(e);
  auto alone = run_netblk({"compare", "-F", "raw", overlay_alone(f.overlay), expected});
  EXPECT_EQ(alone.exit_code, 0) << alone.out << alone.err;
  EXPECT_EQ(run({"qemu-img", "check", overlay_alone(f.overlay)}).exit_code, 0);
}
