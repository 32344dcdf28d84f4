// Shared by the curl integration tests: reads a drive with the library in many patterns
// and converts it with the CLI, checking every byte against the file it was served from.
#pragma once
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "netblk/buffer.hpp"
#include "netblk/open.hpp"
#include "servers.hpp"

namespace curltest {
using namespace netblk;
using namespace netblk::test;
using namespace std::chrono_literals;

inline std::string read_all(const std::string& path) { return netblk::test::read_file(path); }
inline RunResult nb(const std::vector<std::string>& args, std::chrono::seconds timeout = std::chrono::seconds(120)) {
  return netblk::test::netblk(args, timeout);
}

inline void check_reads(const DriveSpec& spec, const std::string& want) {
  run_sync<void>([&]() -> Task<void> {
    auto node = co_await open_drive(spec);
    EXPECT_EQ(node->size(), want.size());
    EXPECT_TRUE(node->read_only());
    auto expect_range = [&](std::uint64_t off, const Buffer& b, std::size_t n) {
      ASSERT_EQ(std::memcmp(b.data(), want.data() + off, n), 0) << "bytes differ at offset " << off << " length " << n;
    };
    // Sequential 4 KiB reads over the first 3 MiB.
    Buffer small(4096);
    for (std::uint64_t off = 0; off < (3u << 20); off += 4096) {
      co_await node->read(off, small.span());
      expect_range(off, small, 4096);
    }
    // Random reads, odd sizes and offsets, including the tail.
    std::mt19937_64 rng(42);
    Buffer big(3u << 20);
    for (int i = 0; i < 40; ++i) {
      std::uint64_t len = 1 + rng() % (i % 4 == 0 ? (3u << 20) : 70000);
      std::uint64_t off = rng() % (want.size() - len + 1);
      if (i == 5) off = want.size() - len;
      co_await node->read(off, big.span().subspan(0, len));
      expect_range(off, big, len);
    }
    // Many reads in flight at once.
    Executor ex = co_await asio::this_coro::executor;
    const int n = 12;
    int left = n;
    AsyncCondition all_done(ex);
    std::vector<Buffer> bufs;
    for (int i = 0; i < n; ++i) bufs.emplace_back(512 * 1024);
    std::exception_ptr failure;
    for (int i = 0; i < n; ++i) {
      std::uint64_t off = (static_cast<std::uint64_t>(i) * 491 * 1024) % (want.size() - 512 * 1024);
      asio::co_spawn(
          ex,
          [&, i, off]() -> Task<void> {
            co_await node->read(off, bufs[i].span());
            if (std::memcmp(bufs[i].data(), want.data() + off, bufs[i].size()) != 0)
              throw std::runtime_error("parallel read differs at " + std::to_string(off));
          },
          [&](std::exception_ptr e) {
            if (e && !failure) failure = e;
            --left;
            all_done.notify_all();
          });
    }
    while (left) co_await all_done.wait();
    if (failure) std::rethrow_exception(failure);
    co_await node->close();
  });
}

inline DriveSpec named(const std::string& name) {
  DriveSpec s;
  s.filename = name;
  s.read_only = true;
  return s;
}

// Converts `source` with netblk to a raw file and checks its bytes.
inline void check_convert(const std::vector<std::string>& extra, const std::string& source, const std::string& want) {
  TempDir out;
  std::vector<std::string> args = {"convert", "-O", "raw"};
  args.insert(args.end(), extra.begin(), extra.end());
  args.push_back(source);
  args.push_back(out / "out.raw");
  auto r = nb(args, 120s);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(read_all(out / "out.raw") == want) << "converted bytes differ for " << source;
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

// Points the helper library at the netblk binary of this build.
inline void use_this_build() {
#ifdef NETBLK_BINARY
  setenv("NETBLK_BINARY", NETBLK_BINARY, 0);
#endif
}

}  // namespace curltest
