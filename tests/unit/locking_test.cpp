// Image locking: the permissions each child is asked for (QEMU's rules), and locks between
// two users of one file in this process.
#include <gtest/gtest.h>

#include "helpers.hpp"
#include <unistd.h>

#include <string>

#include "block/locking.hpp"
#include "error_of.hpp"
#include "netblk/open.hpp"

using namespace netblk;
using netblk::test::error_of;

namespace {

constexpr unsigned CR = kPermConsistentRead, W = kPermWrite, WU = kPermWriteUnchanged, R = kPermResize;

struct TempImage {
  std::string path;
  TempImage() {
    char tmpl[] = "/tmp/netblk-unit-lock-XXXXXX";
    int fd = mkstemp(tmpl);
    path = tmpl;
    if (ftruncate(fd, 1 << 20) != 0) std::abort();
    close(fd);
  }
  ~TempImage() { unlink(path.c_str()); }
};

using netblk::test::open_sync;

DriveSpec raw_drive(const std::string& path, bool read_only) {
  DriveSpec s;
  s.filename = path;
  s.format = "raw";
  s.read_only = read_only;
  return s;
}

}  // namespace

// The bits qemu-img and qemu-nbd 7.2 were seen to lock (strace, /proc/locks) follow from these.
TEST(LockingRules, AsQemu) {
  // qcow2's file under a reader: consistent read; write and resize not shared.
  Permissions reader = locking::storage_child(locking::default_permissions(true), false);
  EXPECT_EQ(reader.perm, CR);
  EXPECT_EQ(reader.shared, CR | WU);
  // Under a writer: also write and resize.
  Permissions writer = locking::storage_child(locking::default_permissions(false), true);
  EXPECT_EQ(writer.perm, CR | W | R);
  EXPECT_EQ(writer.shared, CR | WU);
  // A backing file of a writer that shares everything: read, sharing everything.
  Permissions backing = locking::backing_child(Permissions{CR | W | R, kPermAll});
  EXPECT_EQ(backing.perm, CR);
  EXPECT_EQ(backing.shared, kPermAll);
  // ... of a user that lets nobody write: nobody may write the backing file either.
  backing = locking::backing_child(Permissions{CR, CR | WU});
  EXPECT_EQ(backing.shared, CR | WU);
  // raw's window keeps others from resizing; copy-on-read writes unchanged data.
  EXPECT_EQ(locking::window_child(Permissions{CR, kPermAll}).shared, kPermAll & ~R);
  Permissions cor = locking::copy_on_read_child(Permissions{CR | W, kPermAll});
  EXPECT_EQ(cor.perm, CR | W | WU);
  EXPECT_EQ(cor.shared, kPermAll);
}

// A copy's target cannot be opened over its own source in the same process, and the
// message says so; closing the source lets the writer in.
TEST(LockingFiles, SameImageTwiceInOneProcess) {
  TempImage img;
  DriveSpec source = raw_drive(img.path, true);
  source.permissions = Permissions{CR, CR | WU};
  auto src = open_sync(source);
  EXPECT_EQ(error_of([&] { open_sync(raw_drive(img.path, false)); }),
            "Could not open '" + img.path + "': Failed to get \"write\" lock. The image [" + img.path +
                "] is already in use by this command (is it both the source and the target?)");
  // Readers that share everything may come and go; file.locking=off takes no locks.
  EXPECT_NO_THROW(open_sync(raw_drive(img.path, true)));
  DriveSpec unlocked = raw_drive(img.path, false);
  unlocked.options["file"]["locking"] = "off";
  unlocked.options["file"]["filename"] = img.path;
  unlocked.filename.clear();
  EXPECT_NO_THROW(open_sync(unlocked));
  run_sync<int>([&]() -> Task<int> {
    co_await src->close();
    co_return 0;
  });
  EXPECT_NO_THROW(open_sync(raw_drive(img.path, false)));
}

TEST(LockingFiles, ForceShareOnlyReadOnly) {
  TempImage img;
  DriveSpec s = raw_drive(img.path, false);
  s.force_share = true;
  EXPECT_EQ(error_of([&] { open_sync(s); }),
            "Could not open '" + img.path + "': force-share=on can only be used with read-only images");
  s.read_only = true;
  EXPECT_NO_THROW(open_sync(s));
}
