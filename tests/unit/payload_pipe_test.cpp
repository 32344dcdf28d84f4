// PayloadPipe::drain_to(): the pipe's bytes land in the file at the offset; after a failed
// write the pipe is still emptied, so it stays usable.
#include <fcntl.h>
#include <gtest/gtest.h>

#include "helpers.hpp"
#include <unistd.h>

#include <cstdio>
#include <vector>

#include "nbd/payload_pipe.hpp"

namespace {

using netblk::nbd::PayloadPipe;


std::vector<char> pattern(std::size_t n, char seed) {
  std::vector<char> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<char>(seed + i * 7 + i / 4096);
  return v;
}

// Puts `data` into the pipe (non-blocking: at most its room).
void fill(PayloadPipe& pipe, const std::vector<char>& data) {
  ASSERT_LE(data.size(), pipe.room());
  std::size_t done = 0;
  while (done < data.size()) {
    const ssize_t w = write(pipe.write_end(), data.data() + done, data.size() - done);
    ASSERT_GT(w, 0);
    done += static_cast<std::size_t>(w);
  }
  pipe.held = data.size();
}

TEST(PayloadPipe, DrainsIntoTheFileAtTheOffset) {
  PayloadPipe pipe = PayloadPipe::open();
  ASSERT_GE(pipe.room(), std::size_t{32} << 10);
  const int fd = netblk::test::unlinked_temp_file();
  ASSERT_GE(fd, 0);
  const auto first = pattern(pipe.room(), 1), second = pattern(4000, 9);
  fill(pipe, first);
  EXPECT_EQ(pipe.drain_to(fd, 4096), 0);
  EXPECT_EQ(pipe.held, 0u);
  fill(pipe, second);
  EXPECT_EQ(pipe.drain_to(fd, 4096 + first.size()), 0);
  std::vector<char> back(first.size() + second.size());
  ASSERT_EQ(pread(fd, back.data(), back.size(), 4096), static_cast<ssize_t>(back.size()));
  EXPECT_TRUE(std::equal(first.begin(), first.end(), back.begin()));
  EXPECT_TRUE(std::equal(second.begin(), second.end(), back.begin() + static_cast<std::ptrdiff_t>(first.size())));
  close(fd);
}

TEST(PayloadPipe, FailedWriteEmptiesThePipe) {
  PayloadPipe pipe = PayloadPipe::open();
  const int fd = netblk::test::unlinked_temp_file();
  ASSERT_GE(fd, 0);
  char name[64];
  std::snprintf(name, sizeof name, "/proc/self/fd/%d", fd);
  const int read_only = open(name, O_RDONLY);
  ASSERT_GE(read_only, 0);
  fill(pipe, pattern(10000, 3));
  EXPECT_EQ(pipe.drain_to(read_only, 0), EBADF);
  EXPECT_EQ(pipe.held, 0u);
  EXPECT_FALSE(pipe.broken());
  // Nothing was left behind: the next payload lands whole.
  const auto next = pattern(5000, 5);
  fill(pipe, next);
  EXPECT_EQ(pipe.drain_to(fd, 0), 0);
  std::vector<char> back(next.size() + 1);
  EXPECT_EQ(pread(fd, back.data(), back.size(), 0), static_cast<ssize_t>(next.size()));
  back.pop_back();
  EXPECT_EQ(back, next);
  close(read_only);
  close(fd);
}

}  // namespace
