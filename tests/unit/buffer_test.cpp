#include <gtest/gtest.h>

#include <cstring>

#include "netblk/buffer.hpp"

using namespace netblk;

TEST(Buffer, AlignedAndZeroDetection) {
  Buffer b = Buffer::zeroed(65536);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b.data()) % Buffer::kAlignment, 0u);
  EXPECT_TRUE(is_zero(b.span()));
  for (std::size_t pos : {0ul, 1ul, 15ul, 16ul, 17ul, 4095ul, 65535ul}) {
    b.data()[pos] = std::byte{1};
    EXPECT_FALSE(is_zero(b.span())) << pos;
    b.data()[pos] = std::byte{0};
  }
  EXPECT_TRUE(is_zero(b.span().subspan(0, 0)));
  EXPECT_TRUE(is_zero(b.span().subspan(0, 3)));
}
