// The ftp and ftps drivers against real vsftpd daemons on 127.0.0.1 (their own configs in
// a TempDir): anonymous FTP, and implicit FTPS with a self-signed certificate (refused with
// sslverify on, read with it off). Every read is checked against the file's bytes, and
// qemu-img compare agrees with netblk compare on the FTP URL. (QEMU 7.2 opens ftps:// and
// then stalls on every read, so it is no oracle there.)
#include <gtest/gtest.h>

#include <memory>
#include <nlohmann/json.hpp>

#include "curl_checks.hpp"
#include "servers.hpp"
#include "vsftpd.hpp"

using namespace curltest;
using nlohmann::json;

namespace {

constexpr std::uint64_t kDiskSize = (6u << 20) + 777;
constexpr std::uint64_t kBigSize = 40u << 20;

// Two vsftpd, anonymous FTP and implicit FTPS, serving the same root; one pair for the
// whole binary.
struct Served {
  Served() {
    run({"mkdir", "-p", root});
    run({"chmod", "755", root});
    write_pattern_file(root + "/disk.img", kDiskSize, 11);
    write_pattern_file(root + "/big.img", kBigSize, 12);
    write_sparse_pattern(root + "/sparse.img");
    run({"chmod", "a+r", root + "/disk.img", root + "/big.img", root + "/sparse.img"});
    content = read_all(root + "/disk.img");
    ftp = std::make_unique<netblk::test::Vsftpd>(netblk::test::Vsftpd::Options{.root = root});
    ftps = std::make_unique<netblk::test::Vsftpd>(netblk::test::Vsftpd::Options{.root = root, .implicit_tls = true});
  }
  std::string ftp_url(const std::string& name) const { return ftp->url(name); }
  std::string ftps_spec(const std::string& name, bool verify) const {
    return "json:{\"file.driver\":\"ftps\",\"file.url\":\"" + ftps->url(name) +
           "\",\"file.sslverify\":" + (verify ? "true" : "false") + "}";
  }

  TempDir dir;
  std::string root = dir / "root", content;
  std::unique_ptr<netblk::test::Vsftpd> ftp, ftps;
};

Served* server = nullptr;
std::string setup_error;

class CurlFtp : public ::testing::Test {
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
    if (!server) GTEST_FAIL() << "vsftpd did not start: " << setup_error;
  }
};

}  // namespace

TEST_F(CurlFtp, FtpReadsTheRightBytes) {
  std::string url = server->ftp_url("disk.img");
  check_reads(named(url), server->content);
  check_convert({}, url, server->content);
  auto info = nb({"info", "--output=json", url});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(json::parse(info.out)["virtual-size"], kDiskSize);
  EXPECT_EQ(json::parse(info.out)["filename"], url);
  // Against a copy: vsftpd holds a whole-file lock on what it is sending, and netblk checks
  // image locks as qemu-img does.
  TempDir copy;
  write_file(copy / "disk.img", server->content);
  auto ours = nb({"compare", url, copy / "disk.img"}, 60s);
  EXPECT_EQ(ours.exit_code, 0) << ours.out << ours.err;
  auto theirs = run({"timeout", "90", "qemu-img", "compare", url, server->root + "/disk.img"}, 120s);
  EXPECT_EQ(theirs.exit_code, 0) << theirs.out << theirs.err;
  ours = nb({"compare", url, server->root + "/big.img"}, 60s);
  EXPECT_EQ(ours.exit_code, 1) << ours.err;
}

// Reads far beyond the stream's head (a range request of their own), then near the start,
// then a convert of the whole file.
static void check_far_reads(const std::string& spec, const std::string& want) {
  run_sync<void>([&]() -> Task<void> {
    auto node = co_await open_drive(named(spec));
    EXPECT_EQ(node->size(), kBigSize);
    Buffer b(1 << 20);
    for (std::uint64_t off : {kBigSize - (1u << 20), std::uint64_t{37} << 20, std::uint64_t{0}, std::uint64_t{5} << 20}) {
      co_await node->read(off, b.span());
      EXPECT_EQ(std::memcmp(b.data(), want.data() + off, b.size()), 0) << "at " << off;
    }
    co_await node->close();
  });
  check_convert({}, spec, want);
}

// A password stored in an overlay's backing name is never shown by info.
TEST_F(CurlFtp, InfoHidesAPasswordInAStoredBackingName) {
  TempDir dir;
  std::string url = server->ftp_url("disk.img");
  const std::string with_password = "ftp://anonymous:s3cret@" + url.substr(6);
  const std::string overlay = dir / "ov.qcow2";
  auto made = nb({"create", "-f", "qcow2", "-b", with_password, "-F", "raw", overlay});
  ASSERT_EQ(made.exit_code, 0) << made.err;
  for (const std::string output : {"human", "json"}) {
    auto info = nb({"info", "--output=" + output, overlay});
    ASSERT_EQ(info.exit_code, 0) << info.err;
    EXPECT_EQ(info.out.find("s3cret"), std::string::npos) << info.out;
    EXPECT_EQ(info.err.find("s3cret"), std::string::npos) << info.err;
    EXPECT_NE(info.out.find("ftp://anonymous@" + url.substr(6)), std::string::npos) << info.out;
  }
}

TEST_F(CurlFtp, ReadsFarAheadOfTheStream) {
  check_far_reads("json:{\"file.driver\":\"ftp\",\"file.url\":\"" + server->ftp_url("big.img") + "\"}",
                  read_all(server->root + "/big.img"));
}

TEST_F(CurlFtp, ImplicitFtpsVerifiesUnlessSslverifyOff) {
  auto verified = nb({"info", server->ftps_spec("disk.img", true)}, 60s);
  EXPECT_NE(verified.exit_code, 0);
  EXPECT_NE(verified.exit_code, 124);
  std::string spec = server->ftps_spec("disk.img", false);
  check_reads(named(spec), server->content);
  check_convert({}, spec, server->content);
  // Against a copy: vsftpd holds a whole-file lock on what it is sending, and netblk checks
  // image locks as qemu-img does.
  TempDir copy;
  write_file(copy / "disk.img", server->content);
  auto ours = nb({"compare", spec, copy / "disk.img"}, 60s);
  EXPECT_EQ(ours.exit_code, 0) << ours.out << ours.err;
}

TEST_F(CurlFtp, FtpsReadsFarAheadOfTheStream) {
  // FTPS reads like FTP: one stream, and range requests (fresh TLS connections) far from it.
  check_far_reads(server->ftps_spec("big.img", false), read_all(server->root + "/big.img"));
}

// Into tmpfs the stream's bytes go from libcurl's buffer into the target, over FTP and FTPS.
TEST_F(CurlFtp, ConvertWritesTheStreamIntoRawTarget) {
  const std::string want = read_all(server->root + "/sparse.img");
  check_convert_into_tmpfs(server->ftp_url("sparse.img"), want);
  check_convert_into_tmpfs(server->ftps_spec("sparse.img", false), want);
}

TEST_F(CurlFtp, MissingFileIsAnError) {
  auto r = nb({"info", server->ftp_url("no-such.img")}, 60s);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.exit_code, 124);
  EXPECT_NE(r.err.find("no-such.img"), std::string::npos) << r.err;
}

NETBLK_DRIVE_CHECKS(CurlFtp,
                    DriveCheckParam{"ftp",
                                    [] {
                                      auto& s = shared<Served>();
                                      const std::string url = s.ftp_url("disk.img");
                                      return DriveCase{.name = url,
                                                       .source = s.root + "/disk.img",
                                                       .bad_names = bad_curl_names(
                                                           "ftp", url,
                                                           {s.ftp_url("no-such.img"),
                                                            "json:{\"file.driver\":\"ftp\",\"file.url\":\"" + url +
                                                                "\",\"file.timeout\":\"soon\"}"})};
                                    }},
                    // QEMU 7.2 opens ftps:// and then stalls on every read: no oracle there.
                    DriveCheckParam{"ftps", [] {
                                      auto& s = shared<Served>();
                                      return DriveCase{
                                          .name = s.ftps_spec("disk.img", false),
                                          .source = s.root + "/disk.img",
                                          .bad_names = bad_curl_names(
                                              "ftps", s.ftps->url("disk.img"),
                                              {s.ftps_spec("disk.img", true), s.ftps_spec("no-such.img", false)}),
                                          .qemu_reads_it = false};
                                    }});

// vsftpd and its session processes killed (SIGKILL) during a copy and started again a
// second later on the same port: the copy completes with identical bytes. Killed for good:
// a one-line error in bounded time.
TEST_F(CurlFtp, ServerCrashDuringCopy) {
  check_server_crashes<netblk::test::Vsftpd>(
      {.root = server->root, .max_rate = 8 << 20}, [](const netblk::test::Vsftpd& ftp) { return ftp.url("big.img"); },
      server->root + "/big.img", 1500ms);
}
