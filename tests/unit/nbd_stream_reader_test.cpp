// nbd::StreamReader, the buffered reader both NBD sides use: what it reads ahead, what it
// reads straight into its destination, and that every byte arrives in order.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <system_error>

#include "nbd/stream_reader.hpp"

using namespace netblk;
using netblk::nbd::Stream;
using netblk::nbd::StreamReader;

namespace {

// Bytes 0, 1, 2, ... (mod 251), handed out at most `chunk` a read; records each read's size.
class CountingStream final : public Stream {
 public:
  CountingStream(std::size_t size, std::size_t chunk) : size_(size), chunk_(chunk) {}
  Task<std::size_t> read_some(std::span<std::byte> buf) override {
    if (pos_ >= size_) throw std::system_error(asio::error::eof);
    const std::size_t n = std::min({buf.size(), size_ - pos_, chunk_});
    for (std::size_t i = 0; i < n; ++i) buf[i] = std::byte(static_cast<unsigned char>((pos_ + i) % 251));
    pos_ += n;
    asked.push_back(buf.size());
    co_return n;
  }
  Task<void> write(const std::vector<asio::const_buffer>&) override { co_return; }
  void close() override {}
  std::vector<std::size_t> asked;  // the room each read_some offered

 private:
  std::size_t size_, chunk_, pos_ = 0;
};

bool counts_from(std::span<const std::byte> bytes, std::size_t start) {
  for (std::size_t i = 0; i < bytes.size(); ++i)
    if (bytes[i] != std::byte(static_cast<unsigned char>((start + i) % 251))) return false;
  return true;
}

TEST(NbdStreamReader, FillTakeAndPeekKeepOrder) {
  auto stream = std::make_shared<CountingStream>(10000, 700);
  StreamReader reader(stream, 4096);
  run_sync<void>([&]() -> Task<void> {
    co_await reader.fill(1000);  // two reads of 700
    EXPECT_EQ(reader.buffered(), 1400u);
    EXPECT_EQ(*reader.peek(), std::byte{0});
    EXPECT_TRUE(counts_from(reader.take(1000), 0));
    // Near the end of the buffer: what is left moves to the front first.
    co_await reader.fill(4000);
    EXPECT_GE(reader.buffered(), 4000u);
    EXPECT_TRUE(counts_from(reader.take(4000), 1000));
    co_await reader.skip(3000);
    std::vector<std::byte> rest(2000);
    co_await reader.read_exact(rest);
    EXPECT_TRUE(counts_from(rest, 8000));
    EXPECT_EQ(reader.buffered(), 0u);
  });
}

TEST(NbdStreamReader, LargeReadsGoStraightToTheirDestination) {
  auto stream = std::make_shared<CountingStream>(1 << 20, 1 << 20);
  StreamReader reader(stream, 64 * 1024);  // direct from 32 KiB
  run_sync<void>([&]() -> Task<void> {
    std::vector<std::byte> small(100), large(200000);
    co_await reader.read_exact(small);  // fills the buffer: 64 KiB read ahead
    EXPECT_EQ(stream->asked.back(), 64u * 1024);
    co_await reader.read_exact(large);  // the buffered rest, then one read into `large`
    EXPECT_TRUE(counts_from(small, 0));
    EXPECT_TRUE(counts_from(large, 100));
    EXPECT_EQ(stream->asked.back(), 200000u - (64 * 1024 - 100));
  });
}

TEST(NbdStreamReader, ServerStyleReadsNeverReadAhead) {
  auto stream = std::make_shared<CountingStream>(1 << 20, 1 << 20);
  StreamReader reader(stream, 256 * 1024, 1);  // every read past the buffer is direct
  run_sync<void>([&]() -> Task<void> {
    std::vector<std::byte> payload(4096);
    co_await reader.read_exact(payload);
    EXPECT_EQ(stream->asked.back(), 4096u);
    EXPECT_EQ(reader.buffered(), 0u);
    EXPECT_TRUE(counts_from(payload, 0));
  });
}

TEST(NbdStreamReader, ReadaheadLimit) {
  auto stream = std::make_shared<CountingStream>(1 << 20, 1 << 20);
  StreamReader reader(stream, 64 * 1024);
  reader.limit_readahead(32);
  run_sync<void>([&]() -> Task<void> {
    std::vector<std::byte> header(16);
    co_await reader.read_exact(header);
    EXPECT_EQ(stream->asked.back(), 32u);
    EXPECT_EQ(reader.buffered(), 16u);
    co_await reader.fill(100);  // more than the limit: what is asked for
    EXPECT_EQ(stream->asked.back(), 84u);
  });
}

TEST(NbdStreamReader, ReadToFileThroughTheBuffer) {
  // A stream with no socket under it: the payload goes through the buffer into the file.
  auto stream = std::make_shared<CountingStream>(300000, 5000);
  StreamReader reader(stream, 64 * 1024);
  char path[] = "/tmp/netblk-reader-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  unlink(path);
  run_sync<void>([&]() -> Task<void> {
    std::vector<std::byte> head(10);
    co_await reader.read_exact(head);
    EXPECT_EQ(co_await reader.read_to_file(fd, 4096, 200000), 0);
    std::vector<std::byte> after(10);
    co_await reader.read_exact(after);
    EXPECT_TRUE(counts_from(after, 200010));
  });
  std::vector<std::byte> back(200000);
  ASSERT_EQ(pread(fd, back.data(), back.size(), 4096), 200000);
  EXPECT_TRUE(counts_from(back, 10));
  close(fd);
}

TEST(NbdStreamReader, ResetStreamOnlyWhenNothingIsBuffered) {
  auto first = std::make_shared<CountingStream>(100, 100);
  StreamReader reader(first, 4096);
  run_sync<void>([&]() -> Task<void> {
    std::vector<std::byte> some(10);
    co_await reader.read_exact(some);
  });
  EXPECT_FALSE(reader.reset_stream(std::make_shared<CountingStream>(10, 10)));
  reader.take(reader.buffered());
  EXPECT_TRUE(reader.reset_stream(std::make_shared<CountingStream>(10, 10)));
}

}  // namespace
