// kill -9 during concurrent random writes into a qcow2 image, many times over: after each
// kill `qemu-img check` finds no corruption (leaks are allowed), and every write that a
// completed flush covered reads back (checked against a model, through qemu-img).
//
// The writer is a forked child running the library; the parent never touches the library
// itself (so the child starts with a clean worker pool) and only runs qemu-img.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <random>
#include <set>
#include <thread>

#include "netblk/open.hpp"
#include "servers.hpp"

using namespace netblk::test;

namespace {

constexpr std::uint64_t kImageSize = 24u << 20;
constexpr std::uint64_t kSector = 512;
constexpr int kBatch = 8;  // concurrent, non-overlapping writes between flushes

struct Op {
  std::uint64_t offset, length;
  std::uint8_t value;  // fill byte; 0 for write_zeroes
  bool zeroes;
};

std::vector<Op> make_ops(std::uint64_t seed, std::size_t count) {
  std::mt19937_64 rng(seed);
  std::vector<Op> ops;
  while (ops.size() < count) {
    std::size_t batch_start = ops.size() / kBatch * kBatch;
    Op op;
    op.length = (1 + rng() % 128) * kSector;  // up to 64 KiB, unaligned to clusters
    op.offset = (rng() % ((kImageSize - op.length) / kSector)) * kSector;
    op.zeroes = rng() % 6 == 0;
    op.value = op.zeroes ? 0 : static_cast<std::uint8_t>(1 + (ops.size() % 250));
    bool overlaps = false;
    for (std::size_t i = batch_start; i < ops.size(); ++i)
      if (ops[i].offset < op.offset + op.length && op.offset < ops[i].offset + ops[i].length) overlaps = true;
    if (!overlaps) ops.push_back(op);
  }
  return ops;
}

// The child: writes batch after batch; after each flush reports the batch count on `fd`.
[[noreturn]] void writer(const std::string& image, const std::vector<Op>& ops, int fd) {
  try {
    netblk::run_sync<void>([&]() -> netblk::Task<void> {
      netblk::DriveSpec spec;
      spec.filename = image;
      spec.format = "qcow2";
      auto node = co_await netblk::open_drive(spec);
      for (std::size_t b = 0; b * kBatch < ops.size(); ++b) {
        std::size_t next = b * kBatch;
        co_await netblk::run_concurrently(
            kBatch,
            [&]() -> netblk::Task<void> {
              const Op& op = ops[next++];
              if (op.zeroes) {
                co_await node->write_zeroes(op.offset, op.length, netblk::kZeroMayUnmap);
              } else {
                std::vector<std::byte> buf(op.length, std::byte{op.value});
                co_await node->write(op.offset, buf);
              }
            },
            [] {});
        co_await node->flush();
        std::uint64_t flushed = b + 1;
        if (::write(fd, &flushed, sizeof flushed) != sizeof flushed) _exit(3);
      }
      co_await node->close();
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "writer: %s\n", e.what());
    _exit(2);
  }
  _exit(0);
}

std::string read_bytes(const std::string& path) { return read_file(path); }

// With `snapshots`, each round starts with an internal snapshot (qemu-img's) of what the
// image holds, so that the writer copies shared clusters and L2 tables; after each kill the
// snapshot still reads as it was taken.
void crash_loop(const std::string& create_opts, int rounds, std::uint64_t seed, bool snapshots = false) {
  TempDir dir;
  const std::string image = dir / "crash.qcow2";
  RunResult c = netblk::test::netblk({"create", "-f", "qcow2", "-o", create_opts, image, std::to_string(kImageSize)});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  std::string state(kImageSize, '\0');  // what the image held after the last round
  std::mt19937_64 rng(seed);
  for (int round = 0; round < rounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const std::vector<Op> ops = make_ops(seed * 1000 + round, 4000);
    const std::string snapshot = "r" + std::to_string(round);
    if (snapshots) {
      RunResult r = run({"qemu-img", "snapshot", "-c", snapshot, image});
      ASSERT_EQ(r.exit_code, 0) << r.err;
    }
    int pipefd[2];
    ASSERT_EQ(pipe2(pipefd, O_CLOEXEC), 0);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(pipefd[0]);
      writer(image, ops, pipefd[1]);
    }
    close(pipefd[1]);
    std::this_thread::sleep_for(std::chrono::milliseconds(30 + rng() % 400));
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status)) {
      ASSERT_EQ(WEXITSTATUS(status), 0) << "writer failed before the kill";
    }
    std::uint64_t flushed = 0, v;
    while (::read(pipefd[0], &v, sizeof v) == sizeof v) flushed = v;
    close(pipefd[0]);

    RunResult check = run({"qemu-img", "check", image});
    ASSERT_TRUE(check.exit_code == 0 || check.exit_code == 3) << "flushed batches " << flushed << "\n"
                                                              << check.out << check.err;
    std::printf("  %s round %d: killed after %llu flushed batches; qemu-img check exit %d\n", create_opts.c_str(), round,
                static_cast<unsigned long long>(flushed), check.exit_code);
    const std::string raw = dir / "now.raw";
    RunResult conv = run({"qemu-img", "convert", "-m", "1", "-O", "raw", image, raw});
    ASSERT_EQ(conv.exit_code, 0) << conv.err;
    const std::string now = read_bytes(raw);
    ASSERT_EQ(now.size(), kImageSize);

    // Per sector: the value after the flushed batches, or any value a later write could
    // have left there.
    const std::size_t sectors = kImageSize / kSector;
    std::vector<std::uint8_t> durable(sectors);
    for (std::size_t s = 0; s < sectors; ++s) durable[s] = static_cast<std::uint8_t>(state[s * kSector]);
    std::vector<std::set<std::uint8_t>> maybe(sectors);
    for (std::size_t i = 0; i < ops.size(); ++i) {
      const Op& op = ops[i];
      for (std::uint64_t s = op.offset / kSector; s < (op.offset + op.length) / kSector; ++s) {
        if (i / kBatch < flushed) {
          durable[s] = op.value;
          maybe[s].clear();  // a flushed write replaces what earlier unflushed ones left
        } else {
          maybe[s].insert(op.value);
        }
      }
    }
    std::size_t bad = 0;
    for (std::size_t s = 0; s < sectors && bad < 5; ++s) {
      const auto* p = reinterpret_cast<const std::uint8_t*>(now.data() + s * kSector);
      bool uniform = std::all_of(p, p + kSector, [&](std::uint8_t x) { return x == p[0]; });
      bool allowed = p[0] == durable[s] || maybe[s].count(p[0]);
      if (!uniform || !allowed) {
        ++bad;
        ADD_FAILURE() << "sector " << s << " holds " << int(p[0]) << (uniform ? "" : " (mixed)") << ", durable value "
                      << int(durable[s]) << ", flushed batches " << flushed;
      }
    }
    ASSERT_EQ(bad, 0u);
    if (snapshots) {
      RunResult snap = run({"qemu-img", "convert", "-O", "raw", "-l", "snapshot.name=" + snapshot, image, raw});
      ASSERT_EQ(snap.exit_code, 0) << snap.err;
      ASSERT_TRUE(read_bytes(raw) == state) << "snapshot " << snapshot << " changed";
    }
    state = now;
  }
  // Leaks from the kills are repaired by check -r leaks; then the image is clean.
  RunResult fix = netblk::test::netblk({"check", "-r", "leaks", image});
  EXPECT_EQ(fix.exit_code, 0) << fix.out << fix.err;
  RunResult final_check = run({"qemu-img", "check", image});
  EXPECT_EQ(final_check.exit_code, 0) << final_check.out << final_check.err;
}

TEST(Qcow2Crash, KilledWriterLeavesNoCorruption64k) { crash_loop("cluster_size=64k", 12, 1); }
TEST(Qcow2Crash, KilledWriterLeavesNoCorruptionSmallClusters) { crash_loop("cluster_size=4k,refcount_bits=2", 12, 2); }
TEST(Qcow2Crash, KilledWriterLeavesNoCorruptionV2) { crash_loop("compat=0.10,cluster_size=512", 8, 3); }

}  // namespace
TEST(Qcow2Crash, KilledWriterLeavesSnapshotsIntact) { crash_loop("cluster_size=4k", 8, 4, true); }
