// Node's shared wrappers: read-modify-write of unaligned writes on a node that demands
// alignment must not undo a concurrent write to the same block.
#include <gtest/gtest.h>

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

}  // namespace
