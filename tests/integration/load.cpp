// Copies under load: for every protocol with a real server here (NBD, HTTP, FTP, TFTP,
// iSCSI, SSH), NETBLK_LOAD_COPIES copies (3 by default; tests/load.sh runs 30) of one image
// with both CPUs kept busy by two spinning processes. Each copy runs under a 120 s timeout:
// a copy that hangs, fails or returns other bytes is counted and reported; all counts must
// be 0.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "nginx.hpp"
#include "qemu_nbd.hpp"
#include "servers.hpp"
#include "sshd.hpp"
#include "tftpd.hpp"
#include "tgtd.hpp"
#include "vsftpd.hpp"

using namespace netblk::test;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

constexpr std::uint64_t kImageSize = 32u << 20;
constexpr std::uint64_t kTftpImageSize = 8u << 20;  // lock-step blocks: slower by design

int copies() {
  const char* n = std::getenv("NETBLK_LOAD_COPIES");
  return n && std::atoi(n) > 0 ? std::atoi(n) : 3;
}

// Two processes that spin for as long as the object lives.
class BusyCpus {
 public:
  BusyCpus() {
    for (int i = 0; i < 2; ++i) spinners_.emplace_back(std::vector<std::string>{"sh", "-c", "while :; do :; done"});
  }

 private:
  std::vector<Process> spinners_;
};

// A root directory every server may read: 755 down to the image, which is world-readable.
struct Images {
  TempDir dir;
  std::string root = dir / "root";
  std::string image = root + "/disk.img";
  std::string small = root + "/small.img";
  Images() {
    std::filesystem::create_directories(root);
    ::chmod(root.c_str(), 0755);
    write_pattern_file(image, kImageSize, 41);
    write_pattern_file(small, kTftpImageSize, 42);
    ::chmod(image.c_str(), 0644);
    ::chmod(small.c_str(), 0644);
  }
};

// Runs the copies of `source` (a name netblk opens) and expects every one to finish in time
// with the bytes of `expected`.
void copy_under_load(const std::string& protocol, const std::string& source, const std::string& expected,
                     const std::vector<std::string>& extra_env = {}) {
  TempDir out;
  const auto want = file_hash(expected);
  int hangs = 0, failures = 0, mismatches = 0;
  std::string first_failure;
  BusyCpus busy;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < copies(); ++i) {
    const std::string target = out / "copy.raw";
    std::filesystem::remove(target);
    RunResult r = run({netblk_binary(), "convert", "-O", "raw", source, target}, 120s, extra_env);
    if (r.exit_code == 124) {
      ++hangs;
    } else if (r.exit_code != 0) {
      ++failures;
      if (first_failure.empty()) first_failure = r.err;
    } else if (file_hash(target) != want) {
      ++mismatches;
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("load: %-6s %d copies, %d hangs, %d failures, %d mismatches, %.1f s\n", protocol.c_str(), copies(),
              hangs, failures, mismatches, seconds);
  EXPECT_EQ(hangs, 0) << protocol;
  EXPECT_EQ(failures, 0) << protocol << ": " << first_failure;
  EXPECT_EQ(mismatches, 0) << protocol;
}

}  // namespace

TEST(Load, Nbd) {
  Images images;
  QemuNbd server({.file = images.image, .read_only = true});
  copy_under_load("nbd", server.url(), images.image);
}

TEST(Load, Http) {
  Images images;
  Nginx web({.root = images.root});
  copy_under_load("http", web.url("/disk.img"), images.image);
}

TEST(Load, Ftp) {
  Images images;
  Vsftpd ftp({.root = images.root});
  copy_under_load("ftp", ftp.url("disk.img"), images.image);
}

TEST(Load, Tftp) {
  Images images;
  Tftpd tftp({.root = images.root});
  copy_under_load("tftp", tftp.url("small.img"), images.small);
}

TEST(Load, Iscsi) {
  Images images;
  const std::string iqn = "iqn.2026-12.test.netblk:load";
  Tgtd tgt({Tgtd::Target{.iqn = iqn, .luns = {{.backing = images.image}}}});
  copy_under_load("iscsi", tgt.url(iqn, 1), images.image);
}

TEST(Load, Ssh) {
  Images images;
  Sshd sshd({});
  const json o = {{"driver", "ssh"},
                  {"server", {{"host", "127.0.0.1"}, {"port", std::to_string(sshd.port())}}},
                  {"path", images.image},
                  {"identity-file", sshd.client_key()},
                  {"host-key-check", {{"mode", "hash"}, {"type", "sha256"}, {"hash", sshd.host_key_hash("sha256")}}}};
  copy_under_load("ssh", "json:" + o.dump(), images.image);
}
