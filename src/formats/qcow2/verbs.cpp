// qcow2's part of the image verbs: resize (the L1 table grows, clusters past a new end are
// freed), a new backing file name in the header (rebase, commit) and emptying (commit).
// Metadata changes keep qcow2.hpp's order: what a table will point at is durable first, and
// clusters are released only after nothing on disk points at them.
#include <cstring>

#include "formats/qcow2/qcow2.hpp"
#include "netblk/buffer.hpp"

namespace netblk::qcow2 {

Task<void> Qcow2Node::co_truncate(std::uint64_t new_size) {
  if (new_size % 512) throw Error(EINVAL, name() + ": The new size must be a multiple of 512");
  if (h_.nb_snapshots && h_.version < 3) throw Error(ENOTSUP, "Can't resize a v2 image which has snapshots");
  const std::uint64_t old_size = size_;
  {
    co_await meta_.acquire();
    const AsyncSemaphore::Permit lock(meta_);
    if (new_size < old_size) {
      co_await unallocate_from_locked((new_size + cs_ - 1) >> cb_);
      co_await flush_metadata_locked();
    } else {
      const std::uint64_t table_bytes = cs_ << l2_bits_;
      co_await grow_l1_locked((new_size + table_bytes - 1) / table_bytes);
    }
    co_await file_->flush();
    std::byte field[8];
    store_be64(field, new_size);
    co_await write_header_field(24, field);
    h_.size = new_size;
    size_ = new_size;
  }
  // As QEMU: a backing file must not show through the grown area.
  if (has_backing_ && new_size > old_size) {
    Node* backing = co_await open_backing();
    if (backing && backing->size() > old_size)
      co_await co_write_zeroes(old_size, std::min(new_size, backing->size()) - old_size, 0);
  }
}

Task<void> Qcow2Node::grow_l1_locked(std::uint64_t entries) {
  if (entries <= l1_.size()) co_return;
  if (entries * 8 > kMaxL1Bytes)
    throw Error(EFBIG, name() + ": the L1 table would exceed " + std::to_string(kMaxL1Bytes) + " bytes");
  co_await flush_metadata_locked();  // the old table is up to date where it is
  const std::uint64_t clusters = (entries * 8 + cs_ - 1) >> cb_;
  const std::uint64_t table = co_await allocate_clusters(clusters);
  co_await flush_metadata_locked();  // the new table's refcounts before anything points at it
  std::vector<std::uint64_t> l1 = l1_;
  l1.resize(entries, 0);
  Buffer b = Buffer::zeroed(clusters << cb_);
  for (std::size_t i = 0; i < l1.size(); ++i) store_be64(b.data() + 8 * i, l1[i]);
  co_await file_->write(table, b.span());
  std::byte field[12];
  store_be32(field, static_cast<std::uint32_t>(entries));
  store_be64(field + 4, table);
  co_await write_header_field(36, field);  // flushes the table first
  if (h_.l1_table_offset) {
    const std::uint64_t old_clusters = std::max<std::uint64_t>(1, (std::uint64_t{h_.l1_size} * 8 + cs_ - 1) >> cb_);
    for (std::uint64_t i = 0; i < old_clusters; ++i) {
      const std::uint64_t c = (h_.l1_table_offset >> cb_) + i;
      if (co_await refcount(c)) pending_free_.push_back(c);
    }
  }
  h_.l1_size = static_cast<std::uint32_t>(entries);
  h_.l1_table_offset = table;
  l1_ = std::move(l1);
  co_await flush_metadata_locked();
}

// Every guest cluster from `first` on becomes unallocated (reads the backing file), and L2
// tables left with nothing to map are freed.
Task<void> Qcow2Node::unallocate_from_locked(std::uint64_t first) {
  const std::uint64_t per_table = std::uint64_t{1} << l2_bits_;
  for (std::uint64_t l1i = first >> l2_bits_; l1i < l1_.size(); ++l1i) {
    std::uint64_t off = l1_[l1i] & kOffsetMask;
    if (!off) continue;
    auto t = co_await load_l2_locked(off);
    if (t->pins) throw Error(EBUSY, name() + ": the image is in use");
    const std::uint64_t start = (l1i == (first >> l2_bits_)) ? (first & (per_table - 1)) : 0;
    if (start != 0 && !(l1_[l1i] & kOflagCopied)) {
      // A table a snapshot shares keeps its entries: the active L1 gets a copy to change.
      t = co_await copy_l2_locked(l1i);
      off = t->offset;
    }
    for (std::uint64_t idx = start; idx < per_table; ++idx) {
      const std::uint64_t old = t->e[idx * stride_];
      if (ext_l2_ && t->e[idx * 2 + 1]) {
        t->e[idx * 2 + 1] = 0;
        t->touch();
      }
      if (!old) continue;
      t->e[idx * stride_] = 0;
      release_entry(old);
      t->touch();
    }
    if (start == 0) {
      // The whole table maps nothing now: the L1 entry goes, then the table's cluster.
      l2_cache_.erase(off);
      l1_[l1i] = 0;
      l1_dirty_ = true;
      pending_free_.push_back(off >> cb_);
    }
  }
}

Task<void> Qcow2Node::rewrite_header_locked(const Header& proposed) {
  Header h = proposed;
  // build_header() writes what netblk knows; a bitmap directory would be lost (and leak).
  if (h.has_bitmaps_ext && h.nb_bitmaps)
    throw Error(ENOTSUP, name() + ": rewriting the header of a qcow2 image with bitmaps is not supported by netblk");
  h.refcount_table_offset = reftable_offset_;
  h.refcount_table_clusters = static_cast<std::uint32_t>(reftable_clusters_);
  h.l1_size = static_cast<std::uint32_t>(l1_.size());
  h.features.clear();
  h.has_bitmaps_ext = false;
  std::vector<std::byte> bytes = build_header(h);
  co_await flush_metadata_locked();
  co_await file_->flush();
  co_await file_->write(0, bytes);
  co_await file_->flush();
  h_ = std::move(h);
}

Task<void> Qcow2Node::set_backing_file(const std::string& backing, const std::string& format) {
  if (caps_.read_only) throw Error(EPERM, name() + ": the image is read-only");
  // No backing file: the header loses only the reference, and keeps its other extensions.
  if (backing.empty()) {
    co_await drop_backing_reference();
    co_return;
  }
  co_await meta_.acquire();
  const AsyncSemaphore::Permit lock(meta_);
  Header h = h_;
  h.backing_file = backing;
  h.backing_format = format;
  co_await rewrite_header_locked(h);
}

Task<void> Qcow2Node::make_empty() {
  if (caps_.read_only) throw Error(EPERM, name() + ": the image is read-only");
  co_await meta_.acquire();
  const AsyncSemaphore::Permit lock(meta_);
  co_await unallocate_from_locked(0);
  co_await flush_metadata_locked();
}

Task<std::vector<Snapshot>> Qcow2Node::snapshots() {
  std::uint64_t table_bytes = 0;
  const std::vector<SnapshotInfo> table = co_await read_snapshot_table(table_bytes);
  std::vector<Snapshot> out;
  for (const SnapshotInfo& s : table) {
    Snapshot o{s.id, s.name, s.vm_state_size, s.date_sec, s.date_nsec, s.vm_clock_nsec, std::nullopt};
    if (s.icount != ~std::uint64_t{0}) o.icount = s.icount;
    out.push_back(std::move(o));
  }
  co_return out;
}

}  // namespace netblk::qcow2
