// Shared by the curl integration tests: sparse test data, and converts into tmpfs checked
// byte by byte and block by block. (Reads and converts checked against the served file are
// the drive checks' check_reads and check_convert.)
#pragma once
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "netblk/buffer.hpp"
#include "netblk/open.hpp"
#include "drive_checks.hpp"
#include "servers.hpp"

namespace curltest {
using namespace netblk;
using namespace netblk::test;
using namespace std::chrono_literals;

inline std::string read_all(const std::string& path) { return netblk::test::read_file(path); }
inline RunResult nb(const std::vector<std::string>& args, std::chrono::seconds timeout = std::chrono::seconds(120)) {
  return netblk::test::netblk(args, timeout);
}

// Data with zero runs of every kind: single 4 KiB blocks inside data, a run that starts and
// ends inside blocks, one across a 2 MiB chunk boundary, and a zero tail shorter than a
// block. The first block is data (qemu-img always allocates a new raw file's first block).
inline void write_sparse_pattern(const std::string& path) {
  std::string data((9u << 20) + 3000, '\0');
  std::mt19937_64 rng(5);
  for (auto& c : data) c = static_cast<char>(rng() | 1);
  auto zero = [&](std::uint64_t at, std::uint64_t n) { std::fill_n(data.begin() + static_cast<long>(at), n, '\0'); };
  for (std::uint64_t block : {3u, 17u, 18u, 300u, 1000u, 2047u}) zero(block * 4096, 4096);
  zero(40000, 12000);
  zero((2u << 20) - 100000, 3u << 20);
  zero((8u << 20) + 5000, 50000);
  zero(data.size() - 1500, 1500);
  write_file(path, data);
}

inline std::uint64_t allocated_bytes(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
  return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

// What a sparse copy of `content` takes in tmpfs: a page for every 4 KiB block (the last
// may be short) that holds a byte other than zero.
inline std::uint64_t nonzero_pages(const std::string& content) {
  std::uint64_t pages = 0;
  for (std::size_t at = 0; at < content.size(); at += 4096) {
    const std::size_t n = std::min<std::size_t>(4096, content.size() - at);
    if (content.find_first_not_of('\0', at) < at + n) ++pages;
  }
  return pages * 4096;
}

// Converts `source` into a raw file in tmpfs, where convert lets the source write into the
// target (Node::read_to_file): the bytes are `want`'s; -S 4k leaves every all-zero 4 KiB
// block unallocated and -S 0 allocates everything; a target that takes no more than 4 MiB
// (RLIMIT_FSIZE) fails the copy with one line naming it.
inline void check_convert_into_tmpfs(const std::string& source, const std::string& want) {
  TempDir out("/dev/shm");
  const std::string sparse = out / "sparse.raw", full = out / "full.raw", small = out / "small.raw";
  auto r = nb({"convert", "-O", "raw", source, sparse});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(read_all(sparse) == want) << "converted bytes differ for " << source;
  EXPECT_EQ(allocated_bytes(sparse), nonzero_pages(want)) << source;
  r = nb({"convert", "-S", "0", "-O", "raw", source, full});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(read_all(full) == want) << "converted bytes differ for " << source << " -S 0";
  EXPECT_GE(allocated_bytes(full), want.size()) << source;
  ASSERT_EQ(run({"truncate", "-s", std::to_string(want.size()), small}).exit_code, 0);
  r = run({"bash", "-c",
           "trap '' XFSZ; ulimit -f 4096; exec " + netblk_binary() + " convert -n -O raw '" + source + "' " + small},
          120s);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(r.err, "netblk: " + small + ": write failed: File too large\n");
}

// Bad names for the drive checks of a curl drive that serves `url` (http://127.0.0.1:PORT/...)
// as `driver`: its json: form with the port where nothing listens (and a 2 s timeout, for
// TFTP), with an option the driver does not take, and cut short; then `more`.
inline std::vector<std::string> bad_curl_names(const std::string& driver, const std::string& url,
                                               std::vector<std::string> more) {
  const auto port_at = url.find("127.0.0.1:") + 10;
  const std::string closed = url.substr(0, port_at) + std::to_string(free_port()) + url.substr(url.find('/', port_at));
  const std::string head = "json:{\"file.driver\":\"" + driver + "\",\"file.url\":\"";
  more.insert(more.end(), {head + closed + "\",\"file.timeout\":2}", head + url + "\",\"file.no-such-option\":1}",
                           head + url + "\""});
  return more;
}

// Points the helper library at the netblk binary of this build.
inline void use_this_build() {
#ifdef NETBLK_BINARY
  setenv("NETBLK_BINARY", NETBLK_BINARY, 0);
#endif
}

// A copy of `source` into `out` (netblk convert -O raw) during which the server crashes
// (`crash`, once the copy has run for `after`); `restart`, when given, starts it again a
// second later. Returns how the copy ended, and how long it took.
struct CrashResult {
  RunResult run;
  std::chrono::milliseconds took{};
};
inline CrashResult copy_through_a_crash(const std::string& source, const std::string& out,
                                        std::chrono::milliseconds after, const std::function<void()>& crash,
                                        const std::function<void()>& restart = {}) {
  const std::string log = out + ".log";
  const auto start = std::chrono::steady_clock::now();
  netblk::test::Process copy({netblk::test::netblk_binary(), "convert", "-O", "raw", source, out}, log);
  std::this_thread::sleep_for(after);
  EXPECT_TRUE(copy.running()) << "the copy ended before the server crashed: " << read_all(log);
  crash();
  if (restart) {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    restart();
  }
  CrashResult r;
  r.run.exit_code = copy.wait(std::chrono::seconds(180));
  r.run.err = read_all(log);
  r.took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  return r;
}

// The crash tests of a curl protocol: its server (`Server`, started from `options`) crashes
// during a copy of `name(server)` `after` it started and comes back a second later on the
// same port: the copy has `served_file`'s bytes. Then it crashes for good: a one-line
// error in bounded time.
template <class Server>
void check_server_crashes(typename Server::Options options, const std::function<std::string(const Server&)>& name,
                          const std::string& served_file, std::chrono::milliseconds after) {
  netblk::test::TempDir d;
  auto server = std::make_unique<Server>(options);
  options.port = server->port();
  const std::string source = name(*server);
  auto r = copy_through_a_crash(source, d / "out.raw", after, [&] { server->kill_tree(); },
                                [&] { server = std::make_unique<Server>(options); });
  EXPECT_EQ(r.run.exit_code, 0) << r.run.err;
  EXPECT_EQ(netblk::test::file_hash(d / "out.raw"), netblk::test::file_hash(served_file));
  auto gone = copy_through_a_crash(source, d / "gone.raw", after, [&] { server->kill_tree(); });
  netblk::test::expect_one_line_failure(gone.run, "the server gone for good");
  EXPECT_LT(gone.took, std::chrono::seconds(60));
}

}  // namespace curltest
