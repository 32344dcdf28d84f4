// Image locking as QEMU does it, so that netblk, qemu-img, qemu-nbd and QEMU see each other's
// users of an image: the permissions each kind of child is asked for (QEMU's
// bdrv_default_perms() and the filters' own rules) and the file locks that stand for them
// (file-posix's lock bytes, OFD locks, which belong to one open file, not to a process).
#pragma once
#include <sys/types.h>

#include <string>

#include "netblk/node.hpp"

namespace netblk::locking {

// What users who read and write a whole image ask of it by default: consistent reads, and
// writes unless read-only; everything shared (qemu-img's and qemu-io's images).
Permissions default_permissions(bool read_only);

// What a format that keeps data and metadata in its file child (qcow2) asks of that file:
// writes and resizes when the format node is writable; nobody else may write or resize.
Permissions storage_child(Permissions parent, bool writable);
// What a window of the file (raw with offset or size) asks: as its users, no resizing by
// others.
Permissions window_child(Permissions parent);
// What a backing file is asked for: consistent reads if the overlay's users read; others may
// write or resize it only if the overlay's users let others write.
Permissions backing_child(Permissions parent);
// What the copy-on-read filter asks of the image below it: it writes unchanged data.
Permissions copy_on_read_child(Permissions parent);

// QEMU's lock bytes held on one open file. Locks are advisory and belong to the open file:
// closing it drops them.
class FileLocks {
 public:
  FileLocks() = default;
  ~FileLocks();
  FileLocks(const FileLocks&) = delete;
  FileLocks& operator=(const FileLocks&) = delete;

  // Holds the locks for `p` on `fd` and drops those it held for bits `p` no longer has, once
  // no other user's locks conflict. Otherwise throws Error with QEMU's message naming `name`
  // (`Failed to get "write" lock. Is another process using the image [name]?`), holding
  // what it held before.
  void set(int fd, const std::string& name, Permissions p);
  // Forgets the locks; the caller is closing the file, which drops them.
  void release() noexcept;

 private:
  struct Failure {
    int byte = 0;  // the byte that could not be locked; 0: none
    int err = 0;
  };
  // Locks the bytes of the bits given that are not locked yet; with `unlock`, releases the
  // others.
  Failure apply(unsigned perm_bits, unsigned unshared_bits, bool unlock);
  void enlist();
  void delist() noexcept;

  int fd_ = -1;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
  bool enlisted_ = false;
  unsigned perm_locked_ = 0;      // bits whose byte 100 + N this file holds
  unsigned unshared_locked_ = 0;  // bits whose byte 200 + N this file holds
};

}  // namespace netblk::locking
