// store_whole_pages(), run_unless_sigbus() and pages_in_memory() on a shared mapping of a tmpfs file.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <vector>

#include "core/mapping.hpp"

namespace {

constexpr std::size_t kSize = 1 << 20;

// A 1 MiB tmpfs file, mapped. Its name is removed at once, so nothing is left behind even
// by a test process that dies (the death test).
struct MappedFile {
  int fd = -1;
  std::byte* map = nullptr;
  MappedFile() {
    char name[] = "/dev/shm/netblk-mapping-XXXXXX";
    fd = mkstemp(name);
    unlink(name);
    EXPECT_EQ(ftruncate(fd, kSize), 0);
    map = static_cast<std::byte*>(mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
    EXPECT_NE(map, MAP_FAILED);
  }
  ~MappedFile() {
    munmap(map, kSize);
    close(fd);
  }
};

// Reads [src, src + n) under run_unless_sigbus.
bool guarded_read(std::byte* dst, const std::byte* src, std::size_t n) {
  struct Copy {
    std::byte* dst;
    const std::byte* src;
    std::size_t n;
  } copy{dst, src, n};
  return netblk::run_unless_sigbus([](void* arg) {
    auto* c = static_cast<Copy*>(arg);
    std::memcpy(c->dst, c->src, c->n);
  }, &copy);
}

TEST(Mapping, StoreIntoAMappingLands) {
  MappedFile f;
  std::vector<std::byte> data(8192 + 100, std::byte{0x42});
  ASSERT_TRUE(netblk::store_whole_pages(f.map + 4096 - 50, data.data(), data.size()));
  std::vector<std::byte> back(data.size());
  ASSERT_EQ(pread(f.fd, back.data(), back.size(), 4096 - 50), static_cast<ssize_t>(back.size()));
  EXPECT_EQ(back, data);
}

TEST(Mapping, StorePastTheEndOfATruncatedFileFailsWithoutASignal) {
  MappedFile f;
  ASSERT_EQ(ftruncate(f.fd, 4096), 0);
  std::vector<std::byte> data(8192, std::byte{1});
  EXPECT_FALSE(netblk::store_whole_pages(f.map + 65536, data.data(), data.size()));
  EXPECT_FALSE(netblk::store_whole_pages(f.map, data.data(), data.size())) << "half past the end";
  EXPECT_TRUE(netblk::store_whole_pages(f.map, data.data(), 4096));
}

TEST(Mapping, GuardedReadPastTheEndFailsInsteadOfDying) {
  MappedFile f;
  ASSERT_EQ(ftruncate(f.fd, 4096), 0);
  std::vector<std::byte> data(4096);
  EXPECT_FALSE(guarded_read(data.data(), f.map + 65536, data.size()));
  // Again (the handler is still in place), and a good read after it.
  EXPECT_FALSE(guarded_read(data.data(), f.map + 65536, data.size()));
  EXPECT_TRUE(guarded_read(data.data(), f.map, data.size()));
}

TEST(Mapping, SigbusOutsideAGuardedRunStillKills) {
  EXPECT_EXIT(
      {
        MappedFile f;
        std::vector<std::byte> data(16);
        ASSERT_TRUE(guarded_read(data.data(), f.map, data.size()));  // installs the handler
        ASSERT_EQ(ftruncate(f.fd, 0), 0);
        volatile std::byte* p = f.map + 8192;
        *p = std::byte{1};
      },
      testing::KilledBySignal(SIGBUS), "");
}

TEST(Mapping, PagesInMemoryAreTheFilesData) {
  MappedFile f;
  EXPECT_FALSE(netblk::pages_in_memory(f.map, 4096)) << "a hole";
  ASSERT_EQ(pwrite(f.fd, "x", 1, 12288), 1);
  EXPECT_TRUE(netblk::pages_in_memory(f.map + 12288, 4096));
  EXPECT_TRUE(netblk::pages_in_memory(f.map + 12300, 10)) << "unaligned, inside a data page";
  EXPECT_FALSE(netblk::pages_in_memory(f.map + 8192, 8192)) << "half hole";
  // Asking allocated nothing.
  EXPECT_FALSE(netblk::pages_in_memory(f.map, 4096));
  EXPECT_FALSE(netblk::pages_in_memory(f.map, 65 * 4096)) << "over 64 pages";
}

}  // namespace
