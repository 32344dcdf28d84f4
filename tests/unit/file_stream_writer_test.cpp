// FileStreamWriter: a stream cut into pieces of any size lands in the file as one write of
// the whole would put it; with zero-block skipping, the all-zero blocks are left as holes and
// every other byte is written.
#include <fcntl.h>
#include <gtest/gtest.h>

#include "helpers.hpp"
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <vector>

#include "core/file_io.hpp"

namespace {

using netblk::FileStreamWriter;


std::vector<char> read_all(int fd, std::size_t n, std::uint64_t at) {
  std::vector<char> v(n);
  EXPECT_EQ(pread(fd, v.data(), n, static_cast<off_t>(at)), static_cast<ssize_t>(n));
  return v;
}

// Data blocks and zero blocks of 4 KiB (the pattern says which), with a short tail.
std::vector<char> stream_data(const std::vector<bool>& zero_blocks, std::size_t tail) {
  std::vector<char> v(zero_blocks.size() * 4096 + tail, 0);
  for (std::size_t i = 0; i < v.size(); ++i) {
    const std::size_t b = i / 4096;
    if (b < zero_blocks.size() && zero_blocks[b]) continue;
    v[i] = static_cast<char>(1 + (i * 13 + i / 4096) % 251);
  }
  return v;
}

// Gives `data` to the writer in pieces whose sizes come from `seed`.
void feed(FileStreamWriter& w, const std::vector<char>& data, unsigned seed) {
  std::srand(seed);
  std::size_t at = 0;
  while (at < data.size()) {
    std::size_t n = 1 + static_cast<std::size_t>(std::rand()) % 20000;
    if (std::rand() % 4 == 0) n = 1 + std::rand() % 7;
    n = std::min(n, data.size() - at);
    ASSERT_EQ(w.append(data.data() + at, n), 0);
    at += n;
  }
  ASSERT_EQ(w.finish(), 0);
  EXPECT_EQ(w.appended(), data.size());
}

TEST(FileStreamWriter, PiecesOfAnySizeLandWhole) {
  const int fd = netblk::test::unlinked_temp_file();
  ASSERT_GE(fd, 0);
  const std::vector<char> data = stream_data(std::vector<bool>(40, false), 1000);
  for (unsigned seed : {1u, 2u, 3u}) {
    ASSERT_EQ(ftruncate(fd, 0), 0);
    FileStreamWriter w(fd, 8192, 4096, false);
    feed(w, data, seed);
    EXPECT_EQ(read_all(fd, data.size(), 8192), data);
  }
  close(fd);
}

TEST(FileStreamWriter, ZeroBlocksAreLeftOutAndEverythingElseWritten) {
  const int fd = netblk::test::unlinked_temp_file();
  ASSERT_GE(fd, 0);
  std::vector<bool> zero(64, false);
  for (std::size_t i : {0u, 1u, 5u, 6u, 7u, 20u, 40u, 62u, 63u}) zero[i] = true;
  const std::vector<char> data = stream_data(zero, 0);
  for (unsigned seed : {4u, 5u, 6u}) {
    ASSERT_EQ(ftruncate(fd, 0), 0);
    ASSERT_EQ(ftruncate(fd, static_cast<off_t>(data.size())), 0);  // reads as zeros already
    FileStreamWriter w(fd, 0, 4096, true);
    feed(w, data, seed);
    EXPECT_EQ(read_all(fd, data.size(), 0), data);
    // Every zero block is a hole, every other block data.
    for (std::size_t b = 0; b < zero.size(); ++b) {
      const off_t pos = static_cast<off_t>(b * 4096);
      const off_t next_data = lseek(fd, pos, SEEK_DATA);
      if (zero[b]) EXPECT_NE(next_data, pos) << "block " << b;
      else EXPECT_EQ(next_data, pos) << "block " << b;
    }
  }
  close(fd);
}

TEST(FileStreamWriter, AShortLastBlockThatIsZeroIsLeftOut) {
  const int fd = netblk::test::unlinked_temp_file();
  ASSERT_GE(fd, 0);
  std::vector<char> data = stream_data({false, false}, 300);  // tail of 300 zero bytes
  ASSERT_EQ(ftruncate(fd, static_cast<off_t>(data.size())), 0);
  FileStreamWriter w(fd, 0, 4096, true);
  feed(w, data, 7);
  EXPECT_EQ(read_all(fd, data.size(), 0), data);
  close(fd);
}

TEST(FileStreamWriter, AFailedWriteIsReportedAndSticks) {
  const int fd = open("/dev/null", O_RDONLY);
  ASSERT_GE(fd, 0);
  FileStreamWriter w(fd, 0, 4096, false);
  std::vector<char> data(10000, 1);
  const int e = w.append(data.data(), data.size());
  EXPECT_EQ(e, EBADF);
  EXPECT_EQ(w.append(data.data(), 10), EBADF);
  EXPECT_EQ(w.finish(), EBADF);
  close(fd);
}

}  // namespace
