// The node interface: one block device in a graph (a protocol, a format or a filter).
//
// Consumers call the public operations. They check bounds and read-only state, align
// requests to the node's request_alignment (read-modify-write where needed), split them at
// max_transfer and emulate what a driver lacks (FUA by flush, write_zeroes by writing a
// zero buffer). Drivers implement the protected co_* hooks and only ever see in-bounds,
// aligned requests no longer than max_transfer. All operations are coroutines on the
// node's executor; many may be in flight at once.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "netblk/error.hpp"
#include "netblk/range_lock.hpp"
#include "netblk/runtime.hpp"

namespace netblk {

// Option trees, canonical names and json: specs.
using Json = nlohmann::ordered_json;

// Flags for write(), and kWriteFua also for write_zeroes() and discard(): the request is
// durable before it completes. A driver without Capabilities::can_fua never sees it; the
// node flushes after the request instead.
inline constexpr unsigned kWriteFua = 1u << 0;
// A whole-cluster write the format may store compressed (qcow2; `convert -c`).
inline constexpr unsigned kWriteCompressed = 1u << 3;
// Flags for write_zeroes().
inline constexpr unsigned kZeroMayUnmap = 1u << 1;  // may deallocate (punch a hole)
inline constexpr unsigned kZeroFast = 1u << 2;      // fail with ENOTSUP rather than write slowly

// QEMU's block permissions (BLK_PERM_*): what a user of a node does with it, and what it
// lets other users do meanwhile. Image locks stand for them (QEMU's file locking: a lock on
// byte 100 + N for permission bit N held, on byte 200 + N for bit N not shared).
inline constexpr unsigned kPermConsistentRead = 1u << 0;
inline constexpr unsigned kPermWrite = 1u << 1;
inline constexpr unsigned kPermWriteUnchanged = 1u << 2;
inline constexpr unsigned kPermResize = 1u << 3;
inline constexpr unsigned kPermAll = (1u << 4) - 1;
struct Permissions {
  unsigned perm = 0;          // what the users need
  unsigned shared = kPermAll; // what they allow others
};

// Flags of a block_status() answer.
inline constexpr unsigned kStatusData = 1u << 0;       // reads may return non-zero bytes
inline constexpr unsigned kStatusZero = 1u << 1;       // reads return zeroes
inline constexpr unsigned kStatusAllocated = 1u << 2;  // defined by this node, not its backing

struct BlockStatus {
  std::uint64_t length = 0;  // > 0 and no longer than asked
  unsigned flags = 0;
  // Where the data lives in the node's file child, for `map`; kNoOffset if nowhere/unknown.
  std::uint64_t host_offset = kNoOffset;
  static constexpr std::uint64_t kNoOffset = ~std::uint64_t{0};
};

struct Limits {
  std::uint32_t request_alignment = 1;  // offsets and lengths of read/write are multiples
  std::uint64_t max_transfer = 0;       // largest single request; 0 = no limit
  std::uint32_t preferred_alignment = 4096;
  // Largest single co_write_zeroes / co_discard request; 0 = no limit. Longer requests
  // are split here, aligned to request_alignment.
  std::uint64_t max_zero = 0;
  std::uint64_t max_discard = 0;
};

struct Capabilities {
  bool read_only = false;
  bool can_flush = false;      // co_flush does something durable
  bool can_fua = false;        // co_write, co_write_zeroes and co_discard honour kWriteFua
  bool can_zero = false;       // co_write_zeroes is efficient (not a buffer write)
  bool can_discard = false;    // co_discard may free space
  bool has_block_status = false;
  bool can_multi_conn = false;  // several clients see each other's flushed writes
  bool can_compress = false;    // honours kWriteCompressed
  // Aligned writes may reach past size(); the node grows to cover them (a regular file
  // under a qcow2 image appending clusters).
  bool can_grow = false;
  // Writes arriving in any order leave as good a layout (an RBD image's objects are made
  // where they are written; a Gluster brick's file system allocates at writeback; a file
  // in memory has none): copies need not hold writes in order (qemu-img's -W).
  bool any_write_order = false;
};

// What `info` shows of a node (qemu-img info's fields).
struct ImageInfo {
  std::int64_t allocated_bytes = -1;  // bytes it occupies on its storage ("disk size"); -1 unknown
  std::uint64_t cluster_size = 0;     // 0: not a clustered format
  // What the image itself stores as its backing file and that file's format ("" if none).
  std::string backing_filename;
  std::string backing_format;
  bool dirty = false;
  Json format_specific;  // qemu-img's "format-specific" data; null if none
};

// What check() found (qemu-img check's ImageCheck).
struct CheckResult {
  std::int64_t corruptions = 0, leaks = 0, check_errors = 0;
  std::int64_t corruptions_fixed = 0, leaks_fixed = 0;
  std::uint64_t image_end_offset = 0, total_clusters = 0, allocated_clusters = 0;
  std::uint64_t fragmented_clusters = 0, compressed_clusters = 0;
  std::vector<std::string> messages;  // one line each, for stderr
};
// One internal snapshot (QEMU's QEMUSnapshotInfo).
struct Snapshot {
  std::string id, name;
  std::uint64_t vm_state_size = 0;
  std::uint32_t date_sec = 0, date_nsec = 0;
  std::uint64_t vm_clock_nsec = 0;
  std::optional<std::uint64_t> icount;
};

inline constexpr unsigned kFixLeaks = 1;
inline constexpr unsigned kFixErrors = 2;

// What Node::read_to_file() did.
enum class FileRead {
  unsupported,     // nothing: the caller reads and writes itself
  written,         // every byte is in the file
  zeros_left_out,  // every block but the all-zero ones is in the file (the caller allowed it)
};

// What Node::read_to_file() throws when writing its file failed: the file's errno.
class FileWriteError : public Error {
 public:
  using Error::Error;
};

class Node {
 public:
  explicit Node(Executor executor) : executor_(std::move(executor)) {}
  virtual ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // The driver's name ("file", "raw", "qcow2", "nbd", "http").
  virtual std::string_view driver() const = 0;
  // The node's options as QEMU would spell them, children nested ("file": {...}); secrets
  // are referenced by id, never included.
  virtual Json options() const = 0;
  // A plain filename that opens an equivalent node ("/path", "nbd://h:10809/x"), or "" when
  // only a json: name can say it.
  virtual std::string plain_filename() const { return {}; }
  // For messages: the plain filename, or the driver name.
  std::string display_name() const;

  std::uint64_t size() const noexcept { return size_; }
  const Limits& limits() const noexcept { return limits_; }
  const Capabilities& caps() const noexcept { return caps_; }
  bool read_only() const noexcept { return caps_.read_only; }
  const Executor& executor() const noexcept { return executor_; }
  Node* file() const noexcept { return file_.get(); }
  // The backing node if it is open (a qcow2 overlay opens a remote backing file on the
  // first read that needs it: backing() is null until then).
  Node* backing() const noexcept { return backing_.get(); }
  // Whether this node has a backing file, open or not yet.
  virtual bool has_backing() const { return backing_ != nullptr; }
  // The backing node, opened now if it was not yet (null without one). Throws the open's
  // error, naming this node, when it cannot be reached; a later call tries again.
  virtual Task<Node*> open_backing();
  // What `info` shows of this node. The default: the file child's disk size, no more.
  virtual ImageInfo image_info() const;
  // A filter passes requests through to its one child, file(); `info`, `check` and
  // canonical names look through it.
  virtual bool is_filter() const { return false; }
  // qemu-img check: counts references, compares them with the stored ones and, with `fix`
  // (kFixLeaks, kFixErrors) on a writable node, repairs what it may. Formats that can be
  // checked say so with supports_check(); check() of any other node throws ENOTSUP.
  virtual bool supports_check() const { return false; }
  virtual Task<CheckResult> check(unsigned fix);
  // True when a freshly created image of this kind reads as zeroes (convert may then skip
  // writing zero areas).
  virtual bool has_zero_init() const { return file_ ? file_->has_zero_init() : false; }

  // Where bytes [offset, offset + length) of this node lie unchanged in an open file, so an
  // exporter can let the kernel send them (sendfile, or from the file's mapping) instead of
  // copying them through buffers of its own: the file's descriptor and the offset in it.
  // nullopt when there is no such file (formats that map clusters, filters, remote
  // protocols, O_DIRECT). The caller has checked the range against size(); the descriptor
  // lives until the node is closed.
  struct FileSpan {
    int fd;
    std::uint64_t offset;
    // The same bytes in a shared mapping of the file, or null. Touching a hole through a
    // tmpfs mapping allocates a page for it: read only what pages_in_memory()
    // (core/mapping.hpp) confirms, and read other ranges with read().
    std::byte* memory = nullptr;
    // Copying into `memory`, or writing the descriptor's range, is what write() would do
    // (no format, filter or alignment in between); offered only with `memory`. A copy must
    // use copy_unless_sigbus() and fall back to write() when it fails (a full tmpfs, a
    // file truncated by another process).
    bool writable = false;
  };
  virtual std::optional<FileSpan> file_span(std::uint64_t /*offset*/, std::uint64_t /*length*/) const {
    return std::nullopt;
  }

  // Image locking: this node's users need `p.perm` and allow others `p.shared` (all of it
  // under force-share). Nodes over files hold QEMU's lock bytes for it until closed; a
  // conflict with another user's locks throws Error(EAGAIN) with QEMU's message. Other
  // nodes ignore it (their children took theirs when they were opened).
  void set_permissions(Permissions p);
  // QEMU's force-share=on for this node: it shares everything (read-only nodes only).
  void set_force_share(bool on) noexcept { force_share_ = on; }

  Task<void> read(std::uint64_t offset, std::span<std::byte> buf);
  // Reads [offset, offset + length) into the file `fd` at `fd_offset`, leaving there what
  // read() and then pwrite() would, but without a caller's buffer in between: the NBD
  // client moves a reply's payload from its socket into the file with splice(), so the
  // bytes are copied once; the curl drivers write from libcurl's own buffer. Answers
  // unsupported, having written nothing, when this node has no such path (the caller then
  // reads and writes), or when the range is not aligned to limits().request_alignment.
  // `zero_block` nonzero says the file range reads as zeros already: a node may then leave
  // out the blocks of that many bytes (counted from `offset`) that are all zero, and answers
  // zeros_left_out when it did look. On an error the file range may hold part of the data; a
  // failure to write the file (not of the node) is thrown as FileWriteError.
  Task<FileRead> read_to_file(std::uint64_t offset, std::uint64_t length, int fd, std::uint64_t fd_offset,
                              std::uint64_t zero_block = 0);
  Task<void> write(std::uint64_t offset, std::span<const std::byte> buf, unsigned flags = 0);
  Task<void> write_zeroes(std::uint64_t offset, std::uint64_t length, unsigned flags = 0);
  // Advisory: shrunk to whole aligned blocks. kWriteFua is the only flag.
  Task<void> discard(std::uint64_t offset, std::uint64_t length, unsigned flags = 0);
  Task<void> flush();
  // The status of [offset, offset + result.length), result.length in (0, length].
  Task<BlockStatus> block_status(std::uint64_t offset, std::uint64_t length);
  // Changes the virtual size (qemu-img resize); shrinking drops what lies past the new end.
  // Drivers that cannot resize throw ENOTSUP.
  Task<void> truncate(std::uint64_t size);
  // Image verbs a format may implement; the defaults throw ENOTSUP.
  // Stores `name` (empty: none) and `format` as this image's backing file (rebase, commit);
  // the open backing node stays as it is.
  virtual Task<void> set_backing_file(const std::string& name, const std::string& format);
  // Drops everything this image defines, so that it reads as its backing file (commit).
  virtual Task<void> make_empty();
  // The internal snapshots the image holds (qemu-img snapshot -l); none by default.
  virtual Task<std::vector<Snapshot>> snapshots();
  // Internal snapshots made, applied and deleted (qemu-img snapshot -c, -a, -d) where
  // supports_snapshots() says so: create one named `name`; make the image what the snapshot
  // `id_or_name` holds (an ID first, then a name, as QEMU looks it up; none: ENOENT);
  // delete the first snapshot named `name` (by name only, as qemu-img; none: ENOENT). No
  // writes may be in flight meanwhile.
  virtual bool supports_snapshots() const { return false; }
  virtual Task<void> create_snapshot(const std::string& name);
  virtual Task<void> apply_snapshot(const std::string& id_or_name);
  virtual Task<void> delete_snapshot(const std::string& name);
  // Changes format options of the image in place (qemu-img amend -o; qcow2's compat,
  // lazy_refcounts, size, backing_file, backing_fmt).
  virtual Task<void> amend(const Json& options);
  // Flushes (when writable) and releases the node and its children. Idempotent.
  Task<void> close();

 protected:
  virtual Task<void> co_read(std::uint64_t offset, std::span<std::byte> buf) = 0;
  virtual Task<FileRead> co_read_to_file(std::uint64_t offset, std::uint64_t length, int fd, std::uint64_t fd_offset,
                                         std::uint64_t zero_block);
  virtual Task<void> co_write(std::uint64_t offset, std::span<const std::byte> buf, unsigned flags);
  virtual Task<void> co_write_zeroes(std::uint64_t offset, std::uint64_t length, unsigned flags);
  virtual Task<void> co_discard(std::uint64_t offset, std::uint64_t length, unsigned flags);
  virtual Task<void> co_flush();
  // Sets size_ to `size` (ENOTSUP by default); called on a writable node.
  virtual Task<void> co_truncate(std::uint64_t size);
  virtual Task<BlockStatus> co_block_status(std::uint64_t offset, std::uint64_t length);
  virtual Task<void> co_close();
  // What set_permissions() does on this node (force-share applied): nothing by default.
  virtual void apply_permissions(Permissions) {}

  // Set by the driver while opening.
  std::uint64_t size_ = 0;
  Limits limits_;
  Capabilities caps_;
  std::unique_ptr<Node> file_;
  std::unique_ptr<Node> backing_;

 private:
  void check_range(std::uint64_t offset, std::uint64_t length, const char* op) const;
  Task<void> write_aligned(std::uint64_t offset, std::span<const std::byte> buf, unsigned flags);
  Task<void> write_unlocked(std::uint64_t offset, std::span<const std::byte> buf, unsigned flags);
  // The aligned middle of write_zeroes / discard: split at max_zero / max_discard, under
  // the write-range lock on nodes that demand alignment.
  Task<void> zero_or_discard_aligned(std::uint64_t offset, std::uint64_t length, unsigned flags, bool zero);

  // On nodes that demand alignment, writes in flight hold their aligned ranges: a
  // read-modify-write holds its range alone (exclusive), so the neighbouring bytes it
  // rewrites cannot undo a concurrent write to them; other writes share.
  RangeLocks write_ranges_;

  Executor executor_;
  bool closed_ = false;
  bool force_share_ = false;
};

// The status of `offset` as read from `top`, walking down the backing chain to the first
// layer that defines it (QEMU's block_status_above). A range no layer allocates reads as
// zeroes. `depth` is how many backing links down the answer came from.
struct ChainStatus {
  BlockStatus status;
  int depth = 0;
  const Node* layer = nullptr;  // the node that answered
  bool present = true;          // some layer allocates it (false: zero because nothing does)
};
Task<ChainStatus> chain_block_status(Node& top, std::uint64_t offset, std::uint64_t length);

}  // namespace netblk
