#include "block/locking.hpp"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <tuple>
#include <vector>

namespace netblk::locking {

Permissions default_permissions(bool read_only) {
  return Permissions{kPermConsistentRead | (read_only ? 0u : kPermWrite), kPermAll};
}

Permissions storage_child(Permissions parent, bool writable) {
  Permissions p = parent;
  // Metadata: the format writes it (and grows the file) whenever it may write at all, and
  // cannot let anyone else change the file under it.
  if (writable) p.perm |= kPermWrite | kPermResize;
  p.shared &= ~(kPermWrite | kPermResize);
  // Data: an unchanged write is a real write to the file (copy-on-read into the image), and
  // writing may grow it.
  if (p.perm & kPermWriteUnchanged) p.perm |= kPermWrite;
  if (p.perm & kPermWrite) p.perm |= kPermResize;
  return p;
}

Permissions window_child(Permissions parent) {
  // The window is fixed at open: others must not resize the file under it.
  parent.shared &= ~kPermResize;
  return parent;
}

Permissions backing_child(Permissions parent) {
  Permissions p;
  p.perm = parent.perm & kPermConsistentRead;
  p.shared = (parent.shared & kPermWrite) ? (kPermWrite | kPermResize) : 0u;
  p.shared |= kPermConsistentRead | kPermWriteUnchanged;
  return p;
}

Permissions copy_on_read_child(Permissions parent) {
  constexpr unsigned kPassThrough = kPermConsistentRead | kPermWrite | kPermResize;
  return Permissions{(parent.perm & kPassThrough) | kPermWriteUnchanged,
                     (parent.shared & kPassThrough) | kPermWriteUnchanged};
}

namespace {

constexpr off_t kPermBase = 100;    // byte 100 + N: permission N is held
constexpr off_t kSharedBase = 200;  // byte 200 + N: permission N is not shared
constexpr int kBits = 4;

const char* perm_name(int bit) {
  static const char* const names[kBits] = {"consistent read", "write", "write unchanged", "resize"};
  return names[bit];
}

// The lock description of one byte.
struct flock byte_at(off_t offset, short type) {
  struct flock fl;
  std::memset(&fl, 0, sizeof fl);
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = offset;
  fl.l_len = 1;
  return fl;
}

// A shared (read) lock on one byte, or its release.
int lock_byte(int fd, off_t offset, short type) {
  struct flock fl = byte_at(offset, type);
  return fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : errno;
}

// 0 when no other open file holds a lock on the byte, EAGAIN when one does, else errno.
int test_byte(int fd, off_t offset) {
  struct flock fl = byte_at(offset, F_WRLCK);
  if (fcntl(fd, F_OFD_GETLK, &fl) != 0) return errno;
  return fl.l_type == F_UNLCK ? 0 : EAGAIN;
}

// What every FileLocks of this process holds, so that a conflict with this process's own
// user of an image (a copy onto its own source) is told apart from another process's.
struct Holder {
  const FileLocks* owner;
  dev_t dev;
  ino_t ino;
  unsigned perm;
  unsigned unshared;
};
struct Registry {
  std::mutex mutex;
  std::vector<Holder> holders;
};
Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

FileLocks::~FileLocks() { delist(); }

void FileLocks::release() noexcept {
  delist();
  perm_locked_ = unshared_locked_ = 0;
  fd_ = -1;
}

FileLocks::Failure FileLocks::apply(unsigned perm_bits, unsigned unshared_bits, bool unlock) {
  for (int i = 0; i < kBits; ++i) {
    const unsigned bit = 1u << i;
    for (auto [want, held, base] : {std::tuple{perm_bits, &perm_locked_, kPermBase},
                                    std::tuple{unshared_bits, &unshared_locked_, kSharedBase}}) {
      if ((want & bit) && !(*held & bit)) {
        if (int err = lock_byte(fd_, base + i, F_RDLCK)) return Failure{static_cast<int>(base + i), err};
        *held |= bit;
      } else if (unlock && !(want & bit) && (*held & bit)) {
        lock_byte(fd_, base + i, F_UNLCK);
        *held &= ~bit;
      }
    }
  }
  return Failure{};
}

void FileLocks::set(int fd, const std::string& name, Permissions p) {
  if (fd_ != fd) {
    release();
    fd_ = fd;
    struct stat st;
    if (fstat(fd, &st) != 0) throw_errno(errno, "Could not stat '" + name + "'");
    dev_ = st.st_dev;
    ino_ = st.st_ino;
  }
  const unsigned perm = p.perm & kPermAll;
  const unsigned unshared = ~p.shared & kPermAll;
  const unsigned old_perm = perm_locked_, old_unshared = unshared_locked_;
  // As QEMU: lock first, then look for others' locks, so two users starting at once cannot
  // both miss each other.
  if (Failure f = apply(perm | old_perm, unshared | old_unshared, false); f.byte) {
    apply(old_perm, old_unshared, true);
    throw Error(f.err, "Failed to lock byte " + std::to_string(f.byte) + ": " + std::strerror(f.err) +
                           ". Is another process using the image [" + name + "]?");
  }
  std::string failure;
  int err = 0;
  unsigned conflict_perm = 0, conflict_unshared = 0;  // the bits others hold against us
  for (int i = 0; i < kBits && failure.empty(); ++i) {
    if (!(perm & (1u << i))) continue;
    if ((err = test_byte(fd_, kSharedBase + i)) != 0) {
      failure = std::string("Failed to get \"") + perm_name(i) + "\" lock";
      conflict_unshared = 1u << i;
    }
  }
  for (int i = 0; i < kBits && failure.empty(); ++i) {
    if (!(unshared & (1u << i))) continue;
    if ((err = test_byte(fd_, kPermBase + i)) != 0) {
      failure = std::string("Failed to get shared \"") + perm_name(i) + "\" lock";
      conflict_perm = 1u << i;
    }
  }
  if (!failure.empty()) {
    apply(old_perm, old_unshared, true);
    if (err != EAGAIN) failure += std::string(": ") + std::strerror(err);
    // Is the other user this very process (an image that is both a copy's source and its
    // target)? Then say so; QEMU's hint would send the user looking for another process.
    bool ours = false;
    {
      Registry& r = registry();
      std::lock_guard lock(r.mutex);
      for (const Holder& h : r.holders) {
        if (h.owner == this || h.dev != dev_ || h.ino != ino_) continue;
        if ((h.perm & conflict_perm) || (h.unshared & conflict_unshared)) ours = true;
      }
    }
    if (ours)
      throw Error(EAGAIN, failure + ". The image [" + name +
                              "] is already in use by this command (is it both the source and the target?)");
    throw Error(err, failure + ". Is another process using the image [" + name + "]?");
  }
  apply(perm, unshared, true);
  enlist();
}

void FileLocks::enlist() {
  Registry& r = registry();
  std::lock_guard lock(r.mutex);
  auto it = std::find_if(r.holders.begin(), r.holders.end(), [this](const Holder& h) { return h.owner == this; });
  const Holder now{this, dev_, ino_, perm_locked_, unshared_locked_};
  if (it != r.holders.end()) *it = now;
  else r.holders.push_back(now);
  enlisted_ = true;
}

void FileLocks::delist() noexcept {
  if (!enlisted_) return;
  Registry& r = registry();
  std::lock_guard lock(r.mutex);
  std::erase_if(r.holders, [this](const Holder& h) { return h.owner == this; });
  enlisted_ = false;
}

}  // namespace netblk::locking
