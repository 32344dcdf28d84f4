// Node's shared wrappers: read-modify-write of unaligned writes on a node that demands
// alignment must not undo a concurrent write to the same block.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "netblk/node.hpp"

using namespace netblk;
using namespace std::chrono_literals;

namespace {

// 16 KiB in memory with 4 KiB request alignment; every read and write yields to the event
// loop first, so concurrent requests interleave the way a remote node's do.
class SlowAlignedNode final : public Node {
 public:
  explicit SlowAlignedNode(Executor ex) : Node(ex), bytes_(16 << 10) {
    size_ = bytes_.size();
    limits_.request_alignment = 4096;
  }
  std::string_view driver() const override { return "test"; }
  Json options() const override { return Json::object(); }
  const std::vector<std::byte>& bytes() const { return bytes_; }

 protected:
  Task<void> co_read(std::uint64_t offset, std::span<std::byte> buf) override {
    co_await sleep_for(1ms);
    std::copy_n(bytes_.begin() + static_cast<std::ptrdiff_t>(offset), buf.size(), buf.begin());
  }
  Task<void> co_write(std::uint64_t offset, std::span<const std::byte> buf, unsigned) override {
    co_await sleep_for(1ms);
    std::copy(buf.begin(), buf.end(), bytes_.begin() + static_cast<std::ptrdiff_t>(offset));
  }

 private:
  std::vector<std::byte> bytes_;
};

TEST(Node, ConcurrentUnalignedWritesToOneBlockBothLand) {
  std::vector<std::byte> result;
  run_sync<void>([&]() -> Task<void> {
    Executor ex = co_await asio::this_coro::executor;
    SlowAlignedNode node(ex);
    // Eight 512-byte writes into the same 4 KiB block, plus an aligned write of the next
    // block, all at once.
    std::vector<std::vector<std::byte>> pieces;
    for (int i = 0; i < 8; ++i) pieces.emplace_back(512, std::byte(0x10 + i));
    std::vector<std::byte> block(4096, std::byte{0x77});
    unsigned next = 0;
    co_await run_concurrently(
        9,
        [&]() -> Task<void> {
          const unsigned i = next++;
          if (i == 8) co_return co_await node.write(4096, block);
          co_await node.write(i * 512, pieces[i]);
        },
        [] {});
    result = node.bytes();
  });
  for (int i = 0; i < 8; ++i)
    for (int b = 0; b < 512; ++b) ASSERT_EQ(result[i * 512 + b], std::byte(0x10 + i)) << "piece " << i;
  for (int b = 0; b < 4096; ++b) ASSERT_EQ(result[4096 + b], std::byte{0x77});
}

// A node without FUA that records the order of what reaches it.
class RecordingNode final : public Node {
 public:
  explicit RecordingNode(Executor ex, bool fua) : Node(ex) {
    size_ = 1 << 20;
    limits_.request_alignment = 512;
    limits_.max_zero = 64 << 10;
    limits_.max_discard = 128 << 10;
    caps_.can_fua = fua;
    caps_.can_flush = true;
    caps_.can_zero = true;
    caps_.can_discard = true;
  }
  std::string_view driver() const override { return "test"; }
  Json options() const override { return Json::object(); }
  std::vector<std::string> calls;

 protected:
  Task<void> co_read(std::uint64_t, std::span<std::byte> buf) override {
    std::fill(buf.begin(), buf.end(), std::byte{0});
    co_return;
  }
  Task<void> co_write(std::uint64_t offset, std::span<const std::byte> buf, unsigned flags) override {
    co_await sleep_for(1ms);
    calls.push_back(entry("write", offset, buf.size(), flags));
  }
  Task<void> co_write_zeroes(std::uint64_t offset, std::uint64_t length, unsigned flags) override {
    co_await sleep_for(1ms);
    calls.push_back(entry("zero", offset, length, flags));
  }
  Task<void> co_discard(std::uint64_t offset, std::uint64_t length, unsigned flags) override {
    co_await sleep_for(1ms);
    calls.push_back(entry("discard", offset, length, flags));
  }
  Task<void> co_flush() override {
    co_await sleep_for(1ms);
    calls.push_back("flush");
  }

 private:
  static std::string entry(const char* what, std::uint64_t offset, std::uint64_t length, unsigned flags) {
    return std::string(what) + " " + std::to_string(offset) + "+" + std::to_string(length) +
           ((flags & kWriteFua) ? " fua" : "");
  }
};

std::vector<std::string> record(bool fua, const std::function<Task<void>(Node&)>& op) {
  std::vector<std::string> calls;
  run_sync<void>([&]() -> Task<void> {
    Executor ex = co_await asio::this_coro::executor;
    RecordingNode node(ex, fua);
    co_await op(node);
    calls = node.calls;
  });
  return calls;
}

TEST(Node, FuaWithoutDriverSupportIsAFlushBeforeCompletion) {
  std::vector<std::byte> data(1024, std::byte{1});
  EXPECT_EQ(record(false, [&](Node& n) { return n.write(0, data, kWriteFua); }),
            (std::vector<std::string>{"write 0+1024", "flush"}));
  EXPECT_EQ(record(false, [](Node& n) { return n.write_zeroes(0, 4096, kWriteFua); }),
            (std::vector<std::string>{"zero 0+4096", "flush"}));
  EXPECT_EQ(record(false, [](Node& n) { return n.discard(0, 4096, kWriteFua); }),
            (std::vector<std::string>{"discard 0+4096", "flush"}));
  // Unaligned head and tail, split middle: one flush after all of it.
  EXPECT_EQ(record(false, [](Node& n) { return n.write_zeroes(256, (128 << 10) + 100, kWriteFua); }),
            (std::vector<std::string>{"write 0+512", "zero 512+65536", "zero 66048+65024", "write 131072+512",
                                      "flush"}));
  // A discard that shrinks to nothing still honours FUA.
  EXPECT_EQ(record(false, [](Node& n) { return n.discard(10, 100, kWriteFua); }),
            (std::vector<std::string>{"flush"}));
}

TEST(Node, FuaReachesADriverThatHonoursIt) {
  std::vector<std::byte> data(1024, std::byte{1});
  EXPECT_EQ(record(true, [&](Node& n) { return n.write(0, data, kWriteFua); }),
            (std::vector<std::string>{"write 0+1024 fua"}));
  EXPECT_EQ(record(true, [](Node& n) { return n.write_zeroes(0, 4096, kWriteFua); }),
            (std::vector<std::string>{"zero 0+4096 fua"}));
  EXPECT_EQ(record(true, [](Node& n) { return n.discard(0, 4096, kWriteFua); }),
            (std::vector<std::string>{"discard 0+4096 fua"}));
  EXPECT_EQ(record(true, [](Node& n) { return n.write_zeroes(0, 4096); }), (std::vector<std::string>{"zero 0+4096"}));
}

TEST(Node, ZeroAndDiscardAreSplitAtTheDriversLimits) {
  EXPECT_EQ(record(true, [](Node& n) { return n.write_zeroes(0, 200 << 10); }),
            (std::vector<std::string>{"zero 0+65536", "zero 65536+65536", "zero 131072+65536", "zero 196608+8192"}));
  EXPECT_EQ(record(true, [](Node& n) { return n.discard(0, 300 << 10); }),
            (std::vector<std::string>{"discard 0+131072", "discard 131072+131072", "discard 262144+45056"}));
}

}  // namespace
