// The tftp driver against a real in.tftpd (tftpd-hpa) on 127.0.0.1: TFTP has no ranges,
// so one transfer (blksize 65464, tsize for the size) fills the stream cache and reads
// wait for it. QEMU has no TFTP, so the oracle is the file itself.
#include <gtest/gtest.h>

#include <memory>
#include <nlohmann/json.hpp>

#include "curl_checks.hpp"
#include "servers.hpp"
#include "tftpd.hpp"

using namespace curltest;
using nlohmann::json;

namespace {

constexpr std::uint64_t kDiskSize = (6u << 20) + 4321;
constexpr std::uint64_t kLargeSize = (40u << 20) + 999;

// in.tftpd serving root/; one for the whole binary.
struct Served {
  Served() {
    run({"mkdir", "-p", root});
    run({"chmod", "755", root});
    write_pattern_file(root + "/disk.img", kDiskSize, 21);
    write_file(root + "/empty.img", "");
    // Larger than what the stream keeps in memory: early bytes come back from the cache file.
    write_pattern_file(root + "/large.img", kLargeSize, 22);
    write_sparse_pattern(root + "/sparse.img");
    run({"chmod", "a+r", root + "/disk.img", root + "/empty.img", root + "/large.img", root + "/sparse.img"});
    content = read_all(root + "/disk.img");
    tftpd = std::make_unique<netblk::test::Tftpd>(netblk::test::Tftpd::Options{.root = root});
  }
  std::string url(const std::string& name) const { return tftpd->url(name); }

  TempDir dir;
  std::string root = dir / "root", content;
  std::unique_ptr<netblk::test::Tftpd> tftpd;
};

Served* server = nullptr;
std::string setup_error;

class CurlTftp : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    use_this_build();
    try {
      server = &shared<Served>();
    } catch (const std::exception& e) {
      setup_error = e.what();
    }
  }
  void SetUp() override {
    if (!server) GTEST_FAIL() << "in.tftpd did not start: " << setup_error;
  }
};

}  // namespace

TEST_F(CurlTftp, ReadsTheRightBytes) {
  std::string url = server->url("disk.img");
  check_reads(named(url), server->content);
  check_convert({}, url, server->content);
  auto info = nb({"info", "--output=json", url});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(json::parse(info.out)["virtual-size"], kDiskSize);
  EXPECT_EQ(json::parse(info.out)["filename"], url);
  // Against a copy: in.tftpd holds a whole-file lock on what it is sending, and netblk checks
  // image locks as qemu-img does.
  TempDir copy;
  write_file(copy / "disk.img", server->content);
  auto ours = nb({"compare", url, copy / "disk.img"}, 60s);
  EXPECT_EQ(ours.exit_code, 0) << ours.out << ours.err;
  auto json_form = nb({"info", "--output=json", "json:{\"file.driver\":\"tftp\",\"file.url\":\"" + url +
                                                    "\",\"file.timeout\":3}"});
  ASSERT_EQ(json_form.exit_code, 0) << json_form.err;
  EXPECT_EQ(json::parse(json_form.out)["virtual-size"], kDiskSize);
}

// Into tmpfs the stream writes each block into the target itself (after acknowledging it).
TEST_F(CurlTftp, ConvertWritesBlocksIntoRawTarget) {
  check_convert_into_tmpfs(server->url("sparse.img"), read_all(server->root + "/sparse.img"));
}

TEST_F(CurlTftp, EmptyFile) {
  auto info = nb({"info", "--output=json", server->url("empty.img")}, 60s);
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(json::parse(info.out)["virtual-size"], 0);
}

TEST_F(CurlTftp, MissingFileIsAnError) {
  auto start = std::chrono::steady_clock::now();
  auto r = nb({"info", server->url("no-such.img")}, 60s);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.exit_code, 124);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);
}

TEST_F(CurlTftp, NothingListeningFailsWithinTheTimeout) {
  auto start = std::chrono::steady_clock::now();
  auto r = nb({"info", "json:{\"file.driver\":\"tftp\",\"file.url\":\"tftp://127.0.0.1:" +
                           std::to_string(free_port()) + "/x.img\",\"file.timeout\":2}"},
              60s);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.exit_code, 124);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 30s);
}

TEST_F(CurlTftp, LargeFileReadsFromMemoryAndTheCacheFile) {
  // Random reads over 40 MiB: the stream passes the end, and reads far behind it come from
  // the cache file, some across the edge between the file and the pieces still in memory.
  std::string url = server->url("large.img");
  std::string want = read_all(server->root + "/large.img");
  check_reads(named(url), want);
  check_convert({}, url, want);
}

TEST_F(CurlTftp, ReadsBackWhatTheStreamGaveAway) {
  // Bytes handed straight to a waiting read are not cached; reading them again streams
  // the file once more to fill those holes, and from then on everything is cached.
  std::string want = read_all(server->root + "/large.img");
  run_sync<void>([&]() -> Task<void> {
    auto node = co_await open_drive(named(server->url("large.img")));
    Buffer b(3u << 20);
    auto check = [&](std::uint64_t off, std::size_t len) -> Task<void> {
      co_await node->read(off, b.span().first(len));
      EXPECT_EQ(std::memcmp(b.data(), want.data() + off, len), 0) << "at " << off << " length " << len;
    };
    co_await check(std::uint64_t{1} << 20, 2u << 20);            // waited for: given away
    co_await check((std::uint64_t{1} << 20) + 4321, 1u << 20);   // again: the refill
    co_await check(0, 3u << 20);                                  // across memory and refilled bytes
    co_await check(std::uint64_t{30} << 20, 3u << 20);           // ahead again, after the refill
    co_await check((std::uint64_t{30} << 20) + 99, 2u << 20);    // cached this time
    co_await node->close();
  });
}

// QEMU has no TFTP: qemu-img is the oracle for local files only.
NETBLK_DRIVE_CHECKS(CurlTftp, DriveCheckParam{"tftp", [] {
                      auto& s = shared<Served>();
                      const std::string url = s.url("disk.img");
                      return DriveCase{.name = url,
                                       .source = s.root + "/disk.img",
                                       .bad_names = bad_curl_names("tftp", url,
                                                                   {s.url("no-such.img"),
                                                                    "json:{\"file.driver\":\"tftp\",\"file.url\":\"" +
                                                                        url + "\",\"file.timeout\":-1}"}),
                                       .qemu_reads_it = false};
                    }});

// in.tftpd and its transfer processes killed (SIGKILL) during a copy and started again a
// second later on the same port: the copy completes with identical bytes. Killed for good:
// a one-line error in bounded time. Small blocks make the copy last long enough.
TEST_F(CurlTftp, ServerCrashDuringCopy) {
  // A 1 s timeout: over UDP, silence is how a crash shows.
  check_server_crashes<netblk::test::Tftpd>(
      {.root = server->root, .max_blksize = 512},
      [](const netblk::test::Tftpd& tftp) {
        return "json:{\"file.driver\":\"tftp\",\"file.url\":\"" + tftp.url("large.img") + "\",\"file.timeout\":1}";
      },
      server->root + "/large.img", 300ms);
}
