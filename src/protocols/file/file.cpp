// The file protocol: regular files and block devices. Reads first try the page cache from
// the event loop (preadv2 with RWF_NOWAIT) and go to the worker pool only on a miss, so a
// cached image costs no thread hop; writes try the same (pwritev2 with RWF_NOWAIT, which
// succeeds where the file system can write without blocking). Where the file system
// refuses that, as ext4 does, small writes of whole pages inside the file run on the loop,
// timed (stored through the file's mapping when their pages are in memory), and go to the
// pool for a while after one that stalled. Files on tmpfs/ramfs are memory: their reads
// and writes never wait for a device and tmpfs refuses RWF_NOWAIT, so small ones (where a
// hop to the pool costs more than the copy) run on the event loop directly; large ones
// still go to the pool, where several copies run in parallel. Files are also mapped, and
// file_span() offers the mapping to exporters: sending from it (pages in memory) or
// copying into it (memory-backed files only) saves a system call and a copy per request.
// Flushes, zeroing and cold I/O run on the pool. The file holds QEMU's image locks for its
// users (block/locking) unless opened with locking=off.
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>

#include "block/driver.hpp"
#include "block/locking.hpp"
#include "core/log.hpp"
#include "core/mapping.hpp"

namespace netblk {
namespace {

// Files copy up to this much on the event loop (about 10 us) when the copy cannot block
// (memory-backed files, page-cache hits); larger copies go to the pool, which keeps the
// loop free to start the next request meanwhile.
constexpr std::size_t kInlineCopyLimit = 128u << 10;

class FileNode final : public Node {
 public:
  FileNode(const OpenContext& ctx, std::string path, std::string aio, bool direct, bool locking)
      : Node(ctx.executor), path_(std::move(path)), aio_(std::move(aio)), direct_(direct),
        no_flush_(ctx.cache_no_flush), locking_(locking) {}

  ~FileNode() override {
    unmap();
    if (fd_ >= 0) ::close(fd_);
  }

  void open(bool read_only) {
    int flags = (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC | (direct_ ? O_DIRECT : 0);
    fd_ = ::open(path_.c_str(), flags);
    if (fd_ < 0) throw_errno(errno, "Could not open '" + path_ + "'");
    struct stat st;
    if (fstat(fd_, &st) != 0) throw_errno(errno, "Could not stat '" + path_ + "'");
    if (S_ISDIR(st.st_mode)) throw Error(EISDIR, "Could not open '" + path_ + "': Is a directory");
    if (S_ISBLK(st.st_mode)) {
      std::uint64_t bytes = 0;
      if (ioctl(fd_, BLKGETSIZE64, &bytes) != 0) throw_errno(errno, path_ + ": cannot read the block device size");
      size_ = bytes;
      block_device_ = true;
    } else {
      size_ = static_cast<std::uint64_t>(st.st_size);
    }
    struct statfs fs;
    constexpr long kTmpfsMagic = 0x01021994, kRamfsMagic = 0x858458f6;
    if (!direct_ && fstatfs(fd_, &fs) == 0 && (fs.f_type == kTmpfsMagic || fs.f_type == kRamfsMagic))
      memory_backed_ = true;
    caps_.read_only = read_only;
    caps_.can_flush = true;
    caps_.can_zero = !block_device_;
    caps_.can_discard = !block_device_;
    caps_.has_block_status = !block_device_;
    caps_.can_multi_conn = true;
    caps_.can_grow = !block_device_;
    caps_.any_write_order = memory_backed_;  // memory has no layout
    limits_.request_alignment = direct_ ? 4096 : 1;
    limits_.max_transfer = 0;
    map();
  }

  // Reads from `offset + done` until `buf` is full; past the end reads as zeroes.
  int read_blocking(std::uint64_t offset, std::span<std::byte> buf, std::size_t& done) {
    while (done < buf.size()) {
      ssize_t n = ::pread(fd_, buf.data() + done, buf.size() - done, static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw_errno(errno, path_ + ": read failed");
      if (n == 0) {
        // The file shrank under us; what is past its end reads as zeroes.
        std::fill(buf.begin() + static_cast<std::ptrdiff_t>(done), buf.end(), std::byte{0});
        break;
      }
      done += static_cast<std::size_t>(n);
    }
    return 0;
  }
  int write_blocking(std::uint64_t offset, std::span<const std::byte> buf, std::size_t& done) {
    while (done < buf.size()) {
      ssize_t n = ::pwrite(fd_, buf.data() + done, buf.size() - done, static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw_errno(errno, path_ + ": write failed");
      done += static_cast<std::size_t>(n);
    }
    return 0;
  }

  // A file system that refuses RWF_NOWAIT for buffered writes (ext4) leaves no way to know
  // that a write will not block. Small writes of whole pages inside the file usually do not
  // (nothing to read first, no size to journal), and a hop to the pool and back costs more
  // than their copy: they run on the event loop, timed. One that took long (dirty pages
  // throttled, memory reclaimed, the inode lock held by a large write) sends the writes to
  // the pool for a while, longer each time it happens again.
  static constexpr auto kInlineWriteStall = std::chrono::milliseconds(1);
  static constexpr auto kFirstInlinePause = std::chrono::seconds(1);
  static constexpr auto kLongestInlinePause = std::chrono::seconds(64);
  bool inline_write_fits(std::uint64_t offset, std::size_t n) const {
    constexpr std::uint64_t kPage = 4096;
    return !direct_ && !memory_backed_ && !try_nowait_write_ && !block_device_ && n <= kInlineCopyLimit &&
           offset % kPage == 0 && n % kPage == 0 && offset + n <= size_ &&
           std::chrono::steady_clock::now() >= inline_writes_resume_;
  }
  void write_timed(std::uint64_t offset, std::span<const std::byte> buf) {
    const auto start = std::chrono::steady_clock::now();
    std::size_t done = 0;
    // Through the mapping when the pages are in memory: after the first store into a page
    // since its last writeback, the next ones are plain copies, where pwrite walks every
    // block of the page's (possibly large) folio each time. The kernel copies (whole pages
    // if the process is killed meanwhile); a copy cut short (no space for a block, the file
    // cut short) leaves it to pwrite, which says what went wrong.
    std::byte* at = writable_mapping_ && offset + buf.size() <= mapped_len_ ? mapping_ + offset : nullptr;
    if (!(at && pages_in_memory(at, buf.size()) && store_whole_pages(at, buf.data(), buf.size())))
      write_blocking(offset, buf, done);
    const auto end = std::chrono::steady_clock::now();
    if (end - start < kInlineWriteStall) {
      inline_pause_ = kFirstInlinePause;
      return;
    }
    inline_writes_resume_ = end + inline_pause_;
    inline_pause_ = std::min<std::chrono::steady_clock::duration>(2 * inline_pause_, kLongestInlinePause);
  }

  std::string_view driver() const override { return "file"; }
  Json options() const override {
    Json j{{"driver", "file"}, {"filename", path_}};
    if (aio_ != "threads") j["aio"] = aio_;
    return j;
  }
  std::string plain_filename() const override { return path_; }
  std::optional<FileSpan> file_span(std::uint64_t offset, std::uint64_t len) const override {
    if (direct_ || fd_ < 0) return std::nullopt;
    std::byte* memory = nullptr;
    if (mapping_ && offset <= mapped_len_ && len <= mapped_len_ - offset) memory = mapping_ + offset;
    // Exporters copy only into memory: a store into a file on disk may block in its page
    // fault (a block to allocate, writeback to wait for), which only this node's own timed
    // writes allow for.
    return FileSpan{fd_, offset, memory, memory && memory_backed_ && !caps_.read_only};
  }
  bool has_zero_init() const override { return !block_device_; }
  ImageInfo image_info() const override {
    ImageInfo info;
    struct stat st;
    if (fstat(fd_, &st) == 0) info.allocated_bytes = static_cast<std::int64_t>(st.st_blocks) * 512;
    return info;
  }

 protected:
  void apply_permissions(Permissions p) override {
    if (!locking_ || fd_ < 0) return;
    try {
      locks_.set(fd_, path_, p);
    } catch (const Error& e) {
      throw Error(e.code(), "Could not open '" + path_ + "': " + e.what());
    }
  }

  Task<void> co_read(std::uint64_t offset, std::span<std::byte> buf) override {
    std::size_t done = 0;
    if (memory_backed_ && buf.size() <= kInlineCopyLimit) {
      read_blocking(offset, buf, done);
      co_return;
    }
    if (!direct_ && try_nowait_ && !memory_backed_ && buf.size() <= kInlineCopyLimit) {
      // Page-cache hit: no hop to the pool (a large copy would hold the loop up).
      struct iovec iov{buf.data(), buf.size()};
      ssize_t n = preadv2(fd_, &iov, 1, static_cast<off_t>(offset), RWF_NOWAIT);
      if (n > 0) done = static_cast<std::size_t>(n);
      if (n < 0 && errno == EOPNOTSUPP) try_nowait_ = false;
    }
    if (done < buf.size()) co_await offload([&] { return read_blocking(offset, buf, done); });
  }

  Task<void> co_write(std::uint64_t offset, std::span<const std::byte> buf, unsigned) override {
    std::size_t done = 0;
    if (memory_backed_ && buf.size() <= kInlineCopyLimit) {
      write_blocking(offset, buf, done);
      co_return;
    }
    if (!direct_ && try_nowait_write_ && !memory_backed_ && buf.size() <= kInlineCopyLimit) {
      struct iovec iov{const_cast<std::byte*>(buf.data()), buf.size()};
      ssize_t n = pwritev2(fd_, &iov, 1, static_cast<off_t>(offset), RWF_NOWAIT);
      if (n > 0) done = static_cast<std::size_t>(n);
      if (n < 0 && (errno == EOPNOTSUPP || errno == EINVAL)) try_nowait_write_ = false;
    }
    if (done == 0 && inline_write_fits(offset, buf.size())) {
      write_timed(offset, buf);
      co_return;
    }
    if (done < buf.size()) co_await offload([&] { return write_blocking(offset, buf, done); });
  }

  Task<void> co_write_zeroes(std::uint64_t offset, std::uint64_t length, unsigned flags) override {
    if (!block_device_) {
      int mode = (flags & kZeroMayUnmap) ? (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) : FALLOC_FL_ZERO_RANGE;
      int err = co_await offload([&] {
        return fallocate(fd_, mode, static_cast<off_t>(offset), static_cast<off_t>(length)) == 0 ? 0 : errno;
      });
      if (err == 0) co_return;
      if (err != EOPNOTSUPP && err != ENOSYS) throw_errno(err, path_ + ": zeroing failed");
    }
    co_await Node::co_write_zeroes(offset, length, flags);
  }

  Task<void> co_discard(std::uint64_t offset, std::uint64_t length, unsigned) override {
    if (block_device_) co_return;
    // Advisory: a filesystem without hole punching keeps the data.
    fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset), static_cast<off_t>(length));
    co_return;
  }

  Task<void> co_flush() override {
    if (no_flush_) co_return;
    int err = co_await offload([&] { return fdatasync(fd_) == 0 ? 0 : errno; });
    if (err) throw_errno(err, path_ + ": flush failed");
  }

  Task<BlockStatus> co_block_status(std::uint64_t offset, std::uint64_t length) override {
    if (block_device_) co_return BlockStatus{length, kStatusData | kStatusAllocated, offset};
    off_t data = lseek(fd_, static_cast<off_t>(offset), SEEK_DATA);
    if (data < 0 && errno == ENXIO) {
      // No data from here to the end of the file.
      co_return BlockStatus{length, kStatusZero | kStatusAllocated, offset};
    }
    if (data < 0) co_return BlockStatus{length, kStatusData | kStatusAllocated, offset};
    if (static_cast<std::uint64_t>(data) > offset)
      co_return BlockStatus{std::min<std::uint64_t>(length, data - offset), kStatusZero | kStatusAllocated, offset};
    off_t hole = lseek(fd_, static_cast<off_t>(offset), SEEK_HOLE);
    std::uint64_t end = hole < 0 ? offset + length : static_cast<std::uint64_t>(hole);
    co_return BlockStatus{std::min<std::uint64_t>(length, std::max<std::uint64_t>(end - offset, 1)),
                          kStatusData | kStatusAllocated, offset};
  }

  Task<void> co_truncate(std::uint64_t size) override {
    if (block_device_) {
      if (size == size_) co_return;
      throw Error(ENOTSUP, "'" + path_ + "': Cannot grow or shrink a block device");
    }
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) throw_errno(errno, "Could not resize '" + path_ + "'");
    // The mapping covers the old size: map the file again.
    unmap();
    size_ = size;
    map();
  }

  Task<void> co_close() override {
    unmap();
    locks_.release();
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    co_return;
  }

 private:
  // Files are mapped (writable unless opened read-only): an exporter sends the pages
  // mincore() finds in memory straight from the mapping, one copy into the socket instead
  // of pread's copy and then the socket's, and small writes on the loop store into it
  // (write_timed). Exporters copy into the mapping of memory-backed files only
  // (file_span()), as those stores cannot block.
  void map() {
    if (direct_ || block_device_ || size_ == 0 || size_ > SIZE_MAX) return;
    int prot = caps_.read_only ? PROT_READ : PROT_READ | PROT_WRITE;
    void* p = ::mmap(nullptr, static_cast<std::size_t>(size_), prot, MAP_SHARED, fd_, 0);
    if (p == MAP_FAILED) return;
    // No recency through the mapping: unmapping then skips marking every page it saw as
    // accessed (and moving it to the active list under the LRU lock). Unmapping a 1 GiB
    // target that convert had scanned took 62 ms of CPU without this and 26 ms with it, at
    // the very end of the copy. Only pages already in memory are read through a mapping, so
    // the readahead it turns off for faults is not missed.
    ::madvise(p, static_cast<std::size_t>(size_), MADV_RANDOM);
    mapping_ = static_cast<std::byte*>(p);
    mapped_len_ = static_cast<std::size_t>(size_);
    writable_mapping_ = !caps_.read_only;
  }
  void unmap() {
    if (mapping_) ::munmap(mapping_, mapped_len_);
    mapping_ = nullptr;
    writable_mapping_ = false;
  }

  std::string path_;
  std::string aio_;
  bool direct_;
  bool memory_backed_ = false;     // tmpfs/ramfs: I/O runs on the event loop
  bool try_nowait_ = true;         // cleared when the file system refuses RWF_NOWAIT reads
  bool try_nowait_write_ = true;   // the same for writes
  // Writes on the event loop (inline_write_fits) wait until then after one that stalled.
  std::chrono::steady_clock::time_point inline_writes_resume_{};
  std::chrono::steady_clock::duration inline_pause_ = kFirstInlinePause;
  bool no_flush_;
  bool locking_;
  locking::FileLocks locks_;  // dropped with the descriptor
  int fd_ = -1;
  bool block_device_ = false;
  std::byte* mapping_ = nullptr;   // the whole file as it was at open (map())
  std::size_t mapped_len_ = 0;
  bool writable_mapping_ = false;
};

void parse_file_filename(const std::string& filename, Json& options) {
  // "file:/path" names the file protocol explicitly.
  options["filename"] = filename.starts_with("file:") ? filename.substr(5) : filename;
}

Task<std::unique_ptr<Node>> open_file(const OpenContext& ctx, spec::Options& o) {
  std::string path = o.required_str("filename");
  std::string aio = o.str("aio", "threads");
  if (aio != "threads" && aio != "native" && aio != "io_uring")
    o.invalid("aio", "must be threads, native or io_uring, not '" + aio + "'");
  std::string locking = o.str("locking", "auto");
  if (locking != "auto" && locking != "on" && locking != "off")
    o.invalid("locking", "must be auto, on or off");
  o.boolean("drop-cache");
  o.uint("aio-max-batch");
  if (path.empty()) throw Error(EINVAL, "The 'file' block driver requires a file name");
  // QEMU's auto means on where open file description locks exist, as on Linux.
  auto node = std::make_unique<FileNode>(ctx, path, aio, ctx.cache_direct, locking != "off");
  node->open(ctx.read_only);
  co_return node;
}

Task<void> create_file(const OpenContext&, spec::Options& o, std::uint64_t size) {
  std::string path = o.required_str("filename");
  o.finish();
  co_await offload([&] {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) throw_errno(errno, "Could not create '" + path + "'");
    // As QEMU, before truncating anything: take the locks of a writer that resizes and
    // lets nobody else resize, and fail if a user of the image (this very command's source,
    // say) does not let others write.
    locking::FileLocks locks;
    try {
      locks.set(fd, path, Permissions{kPermWrite | kPermResize, kPermAll & ~kPermResize});
    } catch (const Error& e) {
      ::close(fd);
      throw Error(e.code(), "Could not create '" + path + "': " + e.what());
    }
    struct stat st;
    bool regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    // Truncate to 0 first so no old data survives below the new size.
    if (regular && (ftruncate(fd, 0) != 0 || ftruncate(fd, static_cast<off_t>(size)) != 0)) {
      int err = errno;
      ::close(fd);
      throw_errno(err, "Could not resize '" + path + "'");
    }
    locks.release();
    ::close(fd);
    return 0;
  });
}

const DriverRegistration kFile{ProtocolDriver{
    .name = "file",
    .prefixes = {"file"},
    .parse_filename = parse_file_filename,
    .open = open_file,
    .create = create_file,
}};

}  // namespace
}  // namespace netblk
