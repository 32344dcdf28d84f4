// Lazy backing files, `netblk pull` and `netblk serve --pull` on a qcow2 overlay over an
// http image (nginx): the overlay opens and reads what it holds with the web server gone;
// a pull killed at random moments and run again ends identical to the image, fetching
// little more than the image once (nginx's access log counts the bytes sent); serve --pull
// pulls everything in behind a reader and a writer, and afterwards the overlay needs no
// server.
#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <regex>
#include <thread>

#include "nginx.hpp"
#include "netblk_serve.hpp"
#include "servers.hpp"

using namespace netblk::test;

namespace {

struct Fixture {
  TempDir dir;
  std::string www = dir / "www";
  std::string base, overlay = dir / "ov.qcow2";
  std::unique_ptr<Nginx> web;

  explicit Fixture(std::uint64_t size) {
    run({"mkdir", "-p", www});
    base = www + "/disk.img";
    write_pattern_file(base, size, 7);
    // A zero run in the middle: it comes over as zero clusters, not fetched twice.
    run({"dd", "if=/dev/zero", "of=" + base, "bs=1M", "seek=2", "count=2", "conv=notrunc", "status=none"});
    web = std::make_unique<Nginx>(Nginx::Options{.root = www});
    auto r = run_netblk({"create", "-f", "qcow2", "-o",
                         "backing_file=json:{\"file.driver\":\"http\",, \"file.url\":\"" + web->url("/disk.img") +
                             "\",, \"file.readahead\":\"64k\"}",
                         "-F", "raw", overlay});
    if (r.exit_code != 0) throw std::runtime_error("create failed: " + r.err);
  }
  // Body bytes nginx sent so far, from its access log (the "combined" format).
  std::uint64_t bytes_sent() const {
    std::ifstream log(web->dir() / "access.log");
    static const std::regex kLine("\" [0-9]{3} ([0-9]+) \"");
    std::uint64_t total = 0;
    std::smatch m;
    for (std::string line; std::getline(log, line);)
      if (std::regex_search(line, m, kLine)) total += std::stoull(m[1]);
    return total;
  }
};

// Sound: no corruption; clusters a killed writer allocated but never recorded are leaks
// (qemu-img check's exit status 3), which check -r leaks then repairs.
void expect_qemu_check_sound(const std::string& image) {
  auto check = run({"qemu-img", "check", image});
  EXPECT_TRUE(check.exit_code == 0 || check.exit_code == 3) << check.out << check.err;
  auto repaired = run({"qemu-img", "check", "-r", "leaks", image});
  EXPECT_EQ(repaired.exit_code, 0) << repaired.out << repaired.err;
}

}  // namespace

// The backing file is opened on the first read that needs it: with the web server gone,
// info works, a read of what the overlay holds works, a read of what it lacks fails
// naming the backing file, and info --backing-chain says it could not be reached.
TEST(Pull, LazyBackingWithTheServerGone) {
  Fixture f(8 << 20);
  auto w = run({"qemu-io", "-f", "qcow2", f.overlay, "-c", "write -P 0x5a 1M 64k"});
  ASSERT_EQ(w.exit_code, 0) << w.out << w.err;
  f.web->stop();

  auto info = run_netblk({"info", f.overlay});
  EXPECT_EQ(info.exit_code, 0) << info.err;
  EXPECT_NE(info.out.find("backing file: json:"), std::string::npos) << info.out;
  auto chain = run_netblk({"info", "--backing-chain", f.overlay});
  EXPECT_EQ(chain.exit_code, 1);
  EXPECT_NE(chain.out.find("backing file: json:"), std::string::npos) << chain.out;
  EXPECT_EQ(chain.err.rfind("netblk: " + f.overlay + ": Could not open backing file: ", 0), 0u) << chain.err;
  EXPECT_EQ(std::count(chain.err.begin(), chain.err.end(), '\n'), 1) << chain.err;

  NetblkServe server({.args = {"-t", "-f", "qcow2", f.overlay}, .unix_socket = true});
  auto held = run({"qemu-io", "-f", "raw", server.url(), "-c", "read -P 0x5a 1M 64k"});
  EXPECT_EQ(held.exit_code, 0) << held.out << held.err;
  EXPECT_EQ(held.out.find("error"), std::string::npos) << held.out;
  auto lacking = run({"qemu-io", "-f", "raw", server.url(), "-c", "read 0 64k"});
  EXPECT_NE(lacking.out.find("read failed"), std::string::npos) << lacking.out << lacking.err;
  EXPECT_EQ(server.stop(SIGTERM), 0) << server.log();

  auto convert = run_netblk({"convert", "-O", "raw", f.overlay, f.dir / "out.raw"});
  EXPECT_EQ(convert.exit_code, 1);
  EXPECT_EQ(convert.err.rfind("netblk: " + f.overlay + ": Could not open backing file: ", 0), 0u) << convert.err;
  auto pull = run_netblk({"pull", f.overlay});
  EXPECT_EQ(pull.exit_code, 1);
  EXPECT_EQ(pull.err.rfind("netblk: " + f.overlay + ": Could not open backing file: ", 0), 0u) << pull.err;
}

// netblk pull killed (SIGKILL) at random moments and run again: the overlay stays a sound
// image, ends identical to the web server's, and the bytes fetched in all stay within 1.1x
// the image. NETBLK_PULL_KILLS sets how many kills (5 by default), NETBLK_PULL_MIB the
// image's size (512).
TEST(Pull, KilledAtRandomAndRunAgain) {
  const char* mib = std::getenv("NETBLK_PULL_MIB");
  const std::uint64_t kSize = std::uint64_t(mib ? std::atoi(mib) : 512) << 20;
  Fixture f(kSize);
  const char* env = std::getenv("NETBLK_PULL_KILLS");
  const int kills = env ? std::atoi(env) : 5;
  std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<int> delay_ms(10, 200);
  int killed = 0;
  for (int i = 0; i < kills; ++i) {
    Process p({netblk_binary(), "pull", f.overlay}, f.dir / ("pull" + std::to_string(i) + ".log"));
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
    if (p.running()) ++killed;
    p.stop(SIGKILL);
    auto check = run({"qemu-img", "check", "-U", f.overlay});
    EXPECT_EQ(check.exit_code, check.out.find("leaked clusters") != std::string::npos ? 3 : 0)
        << "after kill " << i << ": " << check.out << check.err;
  }
  auto last = run_netblk({"pull", "-p", f.overlay});
  ASSERT_EQ(last.exit_code, 0) << last.err;
  EXPECT_NE(last.out.find("(100.00/100%)"), std::string::npos) << last.out;
  const std::uint64_t sent = f.bytes_sent();
  std::cout << "[ pull     ] " << killed << " of " << kills << " runs killed mid-pull; " << sent
            << " bytes fetched for a " << kSize << "-byte image (" << double(sent) / kSize << "x)" << std::endl;
  EXPECT_LE(sent, kSize * 11 / 10);

  // Complete: the backing reference may go, and the image stands alone.
  auto drop = run_netblk({"pull", "--drop-backing", f.overlay});
  ASSERT_EQ(drop.exit_code, 0) << drop.err;
  EXPECT_EQ(f.bytes_sent(), sent) << "a complete overlay fetched more";
  f.web->stop();
  auto info = run({"qemu-img", "info", "--output=json", f.overlay});
  EXPECT_EQ(info.out.find("backing"), std::string::npos) << info.out;
  auto cmp = run({"qemu-img", "compare", "-f", "qcow2", "-F", "raw", f.overlay, f.base});
  EXPECT_EQ(cmp.exit_code, 0) << cmp.out << cmp.err;
  expect_qemu_check_sound(f.overlay);
}

// --drop-backing on an overlay that still lacks clusters refuses, naming what is missing.
TEST(Pull, DropBackingNeedsACompleteOverlay) {
  Fixture f(4 << 20);
  auto w = run({"qemu-io", "-f", "qcow2", f.overlay, "-c", "write -P 0x11 0 64k"});
  ASSERT_EQ(w.exit_code, 0) << w.err;
  f.web->stop();
  auto drop = run_netblk({"pull", "--drop-backing", f.overlay});
  EXPECT_EQ(drop.exit_code, 1);
  auto info = run({"qemu-img", "info", "-U", "--output=json", f.overlay});
  EXPECT_NE(info.out.find("backing-filename"), std::string::npos) << info.out;
  auto notqcow2 = run_netblk({"pull", f.base});
  EXPECT_EQ(notqcow2.exit_code, 1);
  EXPECT_NE(notqcow2.err.find("pull needs a qcow2 overlay"), std::string::npos) << notqcow2.err;
}

// The headline: serve --pull while a client reads random blocks and writes some; once the
// pull says it is complete the web server goes; then info, convert and compare work on the
// overlay alone, and it is what the image was plus the client's writes.
TEST(Pull, ServePullBehindAClientThenNoServerNeeded) {
  constexpr std::uint64_t kSize = 64 << 20;
  Fixture f(kSize);
  {
    // A first server killed early: the next one resumes, fetching what is missing.
    NetblkServe first({.args = {"-t", "--pull", "-f", "qcow2", f.overlay}, .unix_socket = true});
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    first.stop(SIGKILL);
  }
  NetblkServe server({.args = {"-t", "--pull", "-f", "qcow2", f.overlay}, .unix_socket = true});

  std::mt19937 rng(20);
  std::uniform_int_distribution<std::uint64_t> block(0, kSize / 65536 - 1);
  std::vector<std::string> io = {"qemu-io", "-f", "raw", server.url()};
  std::vector<std::uint64_t> written;
  for (int i = 0; i < 200; ++i) {
    const std::uint64_t off = block(rng) * 65536;
    if (i % 25 == 0) {
      written.push_back(off);
      io.insert(io.end(), {"-c", "write -P 0x5a " + std::to_string(off) + " 64k"});
    } else {
      io.insert(io.end(), {"-c", "read " + std::to_string(off) + " 64k"});
    }
  }
  auto reader = run(io);
  ASSERT_EQ(reader.exit_code, 0) << reader.err;
  EXPECT_EQ(reader.out.find("failed"), std::string::npos) << reader.out;

  for (int i = 0; i < 600 && server.log().find("pull: complete") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_NE(server.log().find("pull: complete"), std::string::npos) << server.log();
  // The client's reads of what was not pulled yet go to the web server too.
  std::cout << "[ serve    ] " << f.bytes_sent() << " bytes fetched for a " << kSize << "-byte image" << std::endl;
  EXPECT_LE(f.bytes_sent(), kSize * 11 / 10 + 200 * 65536);
  f.web->stop();
  EXPECT_EQ(server.stop(SIGTERM), 0) << server.log();

  std::string expected = f.dir / "expected.raw";
  run({"cp", f.base, expected});
  for (std::uint64_t off : written) {
    auto w = run({"qemu-io", "-f", "raw", expected, "-c", "write -P 0x5a " + std::to_string(off) + " 64k"});
    ASSERT_EQ(w.exit_code, 0) << w.err;
  }
  auto info = run_netblk({"info", f.overlay});
  EXPECT_EQ(info.exit_code, 0) << info.err;
  auto convert = run_netblk({"convert", "-O", "raw", f.overlay, f.dir / "out.raw"});
  EXPECT_EQ(convert.exit_code, 0) << convert.err;
  auto ours = run_netblk({"compare", "-F", "raw", f.overlay, expected});
  EXPECT_EQ(ours.exit_code, 0) << ours.out << ours.err;
  auto converted = run({"cmp", f.dir / "out.raw", expected});
  EXPECT_EQ(converted.exit_code, 0) << converted.out;
  // qemu-img opens the (unreachable) backing file itself: the overlay alone.
  const std::string alone = "json:{\"driver\":\"qcow2\",\"backing\":null,\"file\":{\"driver\":\"file\",\"filename\":\"" +
                            f.overlay + "\"}}";
  auto theirs = run({"qemu-img", "compare", "-F", "raw", alone, expected});
  EXPECT_EQ(theirs.exit_code, 0) << theirs.out << theirs.err;
  expect_qemu_check_sound(alone);
}
