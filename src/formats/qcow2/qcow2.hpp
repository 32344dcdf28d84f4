// The qcow2 format node (QEMU's docs/interop/qcow2.txt), shared by the driver, `check` and
// the tests.
//
// Metadata lives in write-back caches (L2 tables, refcount blocks, the L1 and refcount
// tables) and is written in dependency order by flush_metadata(): refcount blocks, then the
// refcount table (and the header when the table moved), then L2 tables, then the L1 table,
// with a flush of the file between layers, and only then are freed clusters released. A
// process killed at any moment therefore leaves an image whose metadata never points at a
// cluster with refcount 0 (leaks are possible, corruptions are not); data acknowledged by
// a flush survives. Guest data is written before the L2 entry that points at it changes.
//
// Internal snapshots share clusters and L2 tables with the active tables; an entry without
// the COPIED flag (refcount not exactly 1) is never written in place: a write goes to a new
// cluster (the old contents copied around it), a changed L2 table to a new copy first, and
// the shared one loses the active tables' reference after the new pointer is on disk
// (snapshot.cpp makes, applies and deletes snapshots).
#pragma once
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <unordered_map>
#include <vector>

#include "block/driver.hpp"
#include "formats/qcow2/header.hpp"
#include "netblk/buffer.hpp"

namespace netblk::qcow2 {

struct L2Table {
  std::uint64_t offset = 0;
  std::vector<std::uint64_t> e;  // host order; two words per entry with extended L2
  int pins = 0;
  std::uint64_t last_use = 0;
  // Versions of e: the one in memory, and the newest written back (a checkpoint writes a
  // copy it took only if nothing as new was written meanwhile).
  std::uint64_t version = 0;
  std::uint64_t saved = 0;

  void touch() { ++version; }
  bool dirty() const { return version != saved; }
};

struct RefBlock {
  std::uint64_t offset = 0;
  std::vector<std::byte> data;
  bool dirty = false;
  std::uint64_t last_use = 0;
};

class Qcow2Node final : public Node {
 public:
  Qcow2Node(const OpenContext& ctx, std::unique_ptr<Node> file, Header header);
  // Loads the tables and opens the backing chain. `o` holds the node's open options.
  Task<void> init(const OpenContext& ctx, spec::Options& o);

  std::string_view driver() const override { return "qcow2"; }
  Json options() const override;
  ImageInfo image_info() const override;
  bool has_zero_init() const override { return !has_backing_; }
  bool has_backing() const override { return has_backing_; }
  Task<Node*> open_backing() override;
  const Header& header() const { return h_; }

  // Writes `data`, read from the backing chain at `offset`, into those parts of
  // [offset, offset + data.size()) that are still unallocated here (QEMU's block-stream and
  // copy-on-read rule); what a writer put there meanwhile stays. All-zero whole clusters
  // become zero clusters. Returns how many bytes it wrote.
  Task<std::uint64_t> fill_unallocated(std::uint64_t offset, std::span<const std::byte> data);
  // Clears the backing file reference in the header (and the backing format extension), so
  // the image stands alone; the caller made sure it holds every cluster. Other header
  // extensions stay as they are. set_backing_file("") does the same.
  Task<void> drop_backing_reference();
  // What was written so far survives a kill of the process at once, and a power loss after
  // the next checkpoint or flush: the refcount blocks are written, one sync makes them and
  // every cluster the cached L2 tables point at durable, and then the tables are written as
  // they were before that sync. One sync where flush() takes three, and the metadata lock
  // is not held across it, so writers go on meanwhile. A new L1 entry, a grown refcount
  // table or a cluster to release makes it an ordinary flush. pull's checkpoints.
  Task<void> checkpoint();

  bool supports_check() const override { return true; }
  Task<CheckResult> check(unsigned fix) override;

  // Image verbs: verbs.cpp.
  Task<void> set_backing_file(const std::string& name, const std::string& format) override;
  Task<void> make_empty() override;
  Task<void> amend(const Json& options) override;  // amend.cpp
  Task<std::vector<Snapshot>> snapshots() override;  // verbs.cpp
  // Internal snapshots as QEMU's qcow2_snapshot_create, _goto and _delete (snapshot.cpp);
  // a new one gets the next numeric ID, the time now and the disk size.
  bool supports_snapshots() const override { return true; }
  Task<void> create_snapshot(const std::string& name) override;
  Task<void> apply_snapshot(const std::string& id_or_name) override;
  Task<void> delete_snapshot(const std::string& name) override;

 protected:
  Task<void> co_read(std::uint64_t offset, std::span<std::byte> buf) override;
  Task<void> co_write(std::uint64_t offset, std::span<const std::byte> buf, unsigned flags) override;
  Task<void> co_write_zeroes(std::uint64_t offset, std::uint64_t length, unsigned flags) override;
  Task<void> co_discard(std::uint64_t offset, std::uint64_t length, unsigned flags) override;
  Task<void> co_flush() override;
  Task<BlockStatus> co_block_status(std::uint64_t offset, std::uint64_t length) override;
  Task<void> co_truncate(std::uint64_t size) override;  // verbs.cpp

 private:
  enum class Kind { unallocated, zero, data, compressed };
  struct Extent {
    Kind kind = Kind::unallocated;
    std::uint64_t length = 0;
    std::uint64_t host = 0;      // data: host offset of the first byte
    std::uint64_t l2_entry = 0;  // compressed: the descriptor
  };
  class Pin;

  // Mapping.
  Task<Extent> map_range(std::uint64_t offset, std::uint64_t length);
  Task<std::shared_ptr<L2Table>> get_l2(std::uint64_t l1_index);
  Task<std::shared_ptr<L2Table>> load_l2_locked(std::uint64_t l2_offset);
  // The active table for l1_index, made (or copied from one a snapshot shares) when needed.
  Task<std::shared_ptr<L2Table>> l2_for_write(std::uint64_t l1_index);
  // A copy of the L2 table a snapshot shares (its L1 entry lacks COPIED) for the active L1
  // alone (meta_ held).
  Task<std::shared_ptr<L2Table>> copy_l2_locked(std::uint64_t l1_index);
  void evict_l2(bool allow_dirty_flush_needed, bool& need_flush);

  // Reading helpers.
  Task<void> read_backing(std::uint64_t offset, std::span<std::byte> buf);
  Task<void> read_host(std::uint64_t host, std::span<std::byte> buf);
  Task<void> read_compressed(std::uint64_t l2_entry, std::uint64_t in_cluster, std::span<std::byte> buf);
  Task<void> read_guest(std::uint64_t offset, std::span<std::byte> buf);

  // Writing helpers.
  Task<void> write_in_l2(std::uint64_t offset, std::span<const std::byte> data, unsigned flags);
  // The same with the clusters' lock held by the caller.
  Task<void> write_in_l2_locked(std::uint64_t offset, std::span<const std::byte> data, unsigned flags);
  Task<void> zero_or_discard(std::uint64_t first_cluster, std::uint64_t count, bool discard, unsigned flags);
  void release_entry(std::uint64_t l2_entry);  // queues the clusters an old entry used

  // Refcounts (meta_ held).
  Task<std::shared_ptr<RefBlock>> get_refblock(std::uint64_t block_index, bool create);
  Task<std::uint64_t> refcount(std::uint64_t cluster);
  Task<std::uint64_t> update_refcount(std::uint64_t cluster, std::int64_t delta);
  Task<std::uint64_t> allocate_clusters(std::uint64_t n);
  Task<std::uint64_t> allocate_compressed(std::uint64_t bytes);
  Task<void> grow_reftable(std::uint64_t min_entries);
  std::uint64_t bump(std::uint64_t n);

  // Writing metadata back (meta_ held).
  Task<void> flush_metadata_locked();
  Task<bool> write_refblocks_locked();  // true if it wrote any
  Buffer encode_l2(const L2Table& t) const;
  Task<void> write_header_field(std::uint64_t offset, std::span<const std::byte> bytes);

  // Image verbs (verbs.cpp, meta_ held).
  Task<void> grow_l1_locked(std::uint64_t entries);
  Task<void> unallocate_from_locked(std::uint64_t first_cluster);
  Task<void> rewrite_header_locked(const Header& proposed);
  Task<void> expand_zero_clusters_locked();  // amend.cpp

  // check.
  struct SnapshotInfo {
    std::uint64_t l1_offset;
    std::uint32_t l1_size;
    std::string id{}, name{};
    std::uint32_t date_sec = 0, date_nsec = 0;
    std::uint64_t vm_clock_nsec = 0, vm_state_size = 0;
    std::uint64_t icount = ~std::uint64_t{0};  // none
    std::uint64_t disk_size = 0;  // the image's size when the snapshot was taken
    std::uint32_t extra_size = 0;          // extra data as stored
    std::vector<std::byte> extra_rest{};  // extra data past QEMU's 24 bytes, kept as it is
  };
  Task<std::vector<SnapshotInfo>> read_snapshot_table(std::uint64_t& table_bytes);
  // Writes out cached metadata and syncs the file, then reads the snapshot table: where
  // snapshot -c, -a and -d start. The caller holds the metadata lock.
  Task<std::vector<SnapshotInfo>> settled_snapshot_table_locked(std::uint64_t& table_bytes);
  // EFBIG when an entry carries more extra data than QEMU accepts (before a table rewrite).
  void refuse_oversized_extra_data(const std::vector<SnapshotInfo>& table) const;

  // Snapshots (snapshot.cpp, meta_ held).
  Task<void> write_snapshot_table_locked(const std::vector<SnapshotInfo>& table, std::uint64_t old_bytes);
  Task<std::vector<std::uint64_t>> read_snapshot_l1(const SnapshotInfo& s);
  Task<bool> update_l1_refcounts_locked(std::vector<std::uint64_t>& l1, int addend);
  Task<void> snapshot_ref_locked(std::uint64_t cluster, std::int64_t delta);
  std::string name() const { return file_->display_name(); }

  Header h_;
  std::uint64_t cs_;
  std::uint32_t cb_;
  unsigned l2_bits_;          // log2(entries per L2 table)
  unsigned stride_;           // words per L2 entry (1 or 2)
  std::uint64_t refblock_bits_;  // log2(refcount entries per block)
  bool ext_l2_;
  Json backing_option_;  // "backing" as given at open (absent: null)
  bool backing_given_ = false;
  // The backing file, opened by open_backing() (at once when it is a local file).
  bool has_backing_ = false;
  OpenContext backing_ctx_;
  Json backing_options_;
  std::string backing_name_;
  AsyncSemaphore backing_opening_;  // one opener at a time
  bool backing_failed_ = false;  // the last attempt failed, at backing_failed_at_
  std::chrono::steady_clock::time_point backing_failed_at_;
  Error backing_error_{0, ""};

  std::vector<std::uint64_t> l1_;
  bool l1_dirty_ = false;
  std::vector<std::uint64_t> reftable_;
  std::uint64_t reftable_offset_ = 0;
  std::uint64_t reftable_clusters_ = 0;
  bool reftable_dirty_ = false;
  bool reftable_moved_ = false;

  std::unordered_map<std::uint64_t, std::shared_ptr<L2Table>> l2_cache_;
  std::size_t l2_cache_max_;
  std::unordered_map<std::uint64_t, std::shared_ptr<RefBlock>> refblocks_;
  std::size_t refblock_cache_max_;
  std::uint64_t use_clock_ = 0;

  std::uint64_t next_free_ = 0;       // bump allocator (cluster index)
  std::set<std::uint64_t> free_;      // clusters freed and durable, reusable
  std::vector<std::uint64_t> pending_free_;  // clusters to decrement after the next metadata flush
  std::uint64_t comp_cluster_ = 0, comp_used_ = 0;  // compressed data packing

  AsyncSemaphore meta_;  // a mutex: count 1
  AsyncSemaphore checkpointing_;  // one checkpoint at a time
  RangeLocks cluster_locks_;  // guest clusters a writer holds (always exclusive)

  // The last decompressed cluster (sequential reads of a compressed image).
  std::uint64_t decompressed_entry_ = 0;
  std::vector<std::byte> decompressed_;
};


}  // namespace netblk::qcow2
