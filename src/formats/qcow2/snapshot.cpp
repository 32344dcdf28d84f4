// qcow2 internal snapshots, as QEMU's block/qcow2-snapshot.c makes, applies and deletes them.
//
// A snapshot is a copy of the active L1 table plus one more reference on every cluster the
// active tables reach (L2 tables, data, compressed data); the COPIED flag (refcount exactly
// 1) then leaves the active entries, so that a writer copies a shared cluster or L2 table
// before it changes it (qcow2.cpp). Metadata keeps qcow2.hpp's order: references are counted
// on disk before anything new points at a cluster, the snapshot table is replaced by one
// header write, and references go only once nothing on disk holds them any more. A process
// killed in between leaves leaks, and, in the moment between a refcount block and the L2
// tables being written, COPIED flags that say less than they could (QEMU's window too:
// check -r all sets them right; no writer is misled by them).
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "core/text.hpp"
#include "formats/qcow2/qcow2.hpp"
#include "netblk/buffer.hpp"

namespace netblk::qcow2 {
namespace {

constexpr std::uint64_t kExtraSize = 24;  // QEMU's: VM state size (64 bits), disk size, icount
constexpr std::uint64_t kMaxTableBytes = std::uint64_t{1024} * kMaxSnapshots;  // QEMU's limit
constexpr std::size_t kMaxNameLength = 255;  // QEMUSnapshotInfo's name[256]

// Keeps an L2 table in the cache while it is walked.
struct Pinned {
  explicit Pinned(std::shared_ptr<L2Table> t) : t(std::move(t)) { ++this->t->pins; }
  Pinned(const Pinned&) = delete;
  ~Pinned() { --t->pins; }
  std::shared_ptr<L2Table> t;
};

}  // namespace

// A cluster's refcount changed by the snapshot code: one left without references is free at
// once (nothing on disk reaches it any more) and no cache keeps it.
Task<void> Qcow2Node::snapshot_ref_locked(std::uint64_t cluster, std::int64_t delta) {
  const std::uint64_t rc = co_await update_refcount(cluster, delta);
  if (rc == 0) {
    free_.insert(cluster);
    l2_cache_.erase(cluster << cb_);
  }
}

// QEMU's qcow2_update_snapshot_refcount: adds `addend` (+1, -1 or 0) to the refcount of every
// cluster `l1` reaches, and sets COPIED in its L2 entries and in `l1` where the refcount is
// 1 now (compressed clusters never). Returns whether `l1` changed. The L2 tables change in
// the cache; the caller flushes them (after the refcounts, as flush_metadata_locked does).
Task<bool> Qcow2Node::update_l1_refcounts_locked(std::vector<std::uint64_t>& l1, int addend) {
  const std::uint64_t per_table = std::uint64_t{1} << l2_bits_;
  bool l1_changed = false;
  for (std::uint64_t& l1e : l1) {
    const std::uint64_t off = l1e & kOffsetMask;
    if (!off) continue;
    if (off & (cs_ - 1)) throw Error(EIO, name() + ": L2 table offset " + hex(off) + " unaligned");
    auto t = co_await load_l2_locked(off);
    const Pinned pin(t);
    for (std::uint64_t j = 0; j < per_table; ++j) {
      const std::uint64_t e = t->e[j * stride_];
      std::uint64_t entry = e & ~kOflagCopied;
      std::uint64_t rc = 0;
      if (e & kOflagCompressed) {
        if (addend) {
          const CompressedDescriptor d = decode_compressed(e, cb_);
          const std::uint64_t start = d.offset & ~std::uint64_t{511};
          for (std::uint64_t c = start >> cb_; c <= (start + d.sectors * 512 - 1) >> cb_; ++c)
            co_await snapshot_ref_locked(c, addend);
        }
        rc = 2;  // compressed clusters are never written in place
      } else if (const std::uint64_t host = e & kOffsetMask) {
        if (host & (cs_ - 1))
          throw Error(EIO, name() + ": Cluster allocation offset " + hex(host) + " unaligned (L2 offset: " + hex(off) +
                               ", L2 index: " + hex(j) + ")");
        if (addend) co_await snapshot_ref_locked(host >> cb_, addend);
        rc = co_await refcount(host >> cb_);
      }
      if (rc == 1) entry |= kOflagCopied;
      if (entry != e) {
        t->e[j * stride_] = entry;
        t->touch();
      }
    }
    if (addend) co_await snapshot_ref_locked(off >> cb_, addend);
    const std::uint64_t rc = co_await refcount(off >> cb_);
    const std::uint64_t ne = rc == 1 ? (off | kOflagCopied) : off;
    if (ne != l1e) {
      l1e = ne;
      l1_changed = true;
    }
  }
  co_return l1_changed;
}

Task<std::vector<std::uint64_t>> Qcow2Node::read_snapshot_l1(const SnapshotInfo& s) {
  // QEMU's qcow2_validate_table for "Snapshot L1 table".
  const std::uint64_t bytes = std::uint64_t{s.l1_size} * 8;
  if (bytes > kMaxL1Bytes) throw Error(EFBIG, name() + ": Snapshot L1 table is too large");
  if (s.l1_offset & (cs_ - 1)) throw Error(EINVAL, name() + ": Snapshot L1 table offset invalid");
  if (s.l1_offset > file_->size() || bytes > file_->size() - s.l1_offset)
    throw Error(EINVAL, name() + ": Snapshot L1 table exceeds file end");
  std::vector<std::uint64_t> l1(s.l1_size);
  if (bytes) {
    Buffer b(bytes);
    co_await file_->read(s.l1_offset, b.span());
    for (std::size_t i = 0; i < l1.size(); ++i) l1[i] = load_be64(b.data() + 8 * i);
  }
  co_return l1;
}

// QEMU's qcow2_write_snapshots: the whole table to new clusters, then the header points at
// it (one write), then the old table's clusters go.
Task<void> Qcow2Node::write_snapshot_table_locked(const std::vector<SnapshotInfo>& table, std::uint64_t old_bytes) {
  std::vector<std::byte> bytes;
  for (const SnapshotInfo& s : table) {
    bytes.resize((bytes.size() + 7) & ~std::size_t{7});
    const std::uint64_t extra = std::max<std::uint64_t>(kExtraSize, s.extra_size);
    const std::size_t at = bytes.size();
    bytes.resize(at + 40 + extra + s.id.size() + s.name.size(), std::byte{0});
    if (bytes.size() > kMaxTableBytes) throw Error(EFBIG, name() + ": the snapshot table would be too large");
    std::byte* p = bytes.data() + at;
    store_be64(p, s.l1_offset);
    store_be32(p + 8, s.l1_size);
    store_be16(p + 12, static_cast<std::uint16_t>(s.id.size()));
    store_be16(p + 14, static_cast<std::uint16_t>(s.name.size()));
    store_be32(p + 16, s.date_sec);
    store_be32(p + 20, s.date_nsec);
    store_be64(p + 24, s.vm_clock_nsec);
    // A VM state too large for 32 bits: older readers see a disk-only snapshot (QEMU's rule).
    store_be32(p + 32, s.vm_state_size <= 0xffffffffu ? static_cast<std::uint32_t>(s.vm_state_size) : 0);
    store_be32(p + 36, static_cast<std::uint32_t>(extra));
    store_be64(p + 40, s.vm_state_size);
    store_be64(p + 48, s.disk_size);
    store_be64(p + 56, s.icount);
    if (!s.extra_rest.empty()) std::memcpy(p + 40 + kExtraSize, s.extra_rest.data(), s.extra_rest.size());
    std::memcpy(p + 40 + extra, s.id.data(), s.id.size());
    std::memcpy(p + 40 + extra + s.id.size(), s.name.data(), s.name.size());
  }
  std::uint64_t offset = 0;
  if (!bytes.empty()) {
    offset = co_await allocate_clusters((bytes.size() + cs_ - 1) >> cb_);
    co_await flush_metadata_locked();  // the new table's refcounts before the header names it
    co_await file_->write(offset, bytes);
  }
  const std::uint64_t old_offset = h_.snapshots_offset;
  std::byte field[12];
  store_be32(field, static_cast<std::uint32_t>(table.size()));
  store_be64(field + 4, offset);
  co_await write_header_field(60, field);  // flushes the table first
  h_.nb_snapshots = static_cast<std::uint32_t>(table.size());
  h_.snapshots_offset = offset;
  if (old_offset && old_bytes)
    for (std::uint64_t c = old_offset >> cb_; c <= (old_offset + old_bytes - 1) >> cb_; ++c) pending_free_.push_back(c);
}

Task<std::vector<Qcow2Node::SnapshotInfo>> Qcow2Node::settled_snapshot_table_locked(std::uint64_t& table_bytes) {
  co_await flush_metadata_locked();
  co_await file_->flush();
  co_return co_await read_snapshot_table(table_bytes);
}

void Qcow2Node::refuse_oversized_extra_data(const std::vector<SnapshotInfo>& table) const {
  for (const SnapshotInfo& s : table)
    if (s.extra_size > kMaxSnapshotExtraData)
      throw Error(EFBIG, name() + ": Too much extra metadata in snapshot table entry " + s.id);
}

Task<void> Qcow2Node::create_snapshot(const std::string& sn_name) {
  if (caps_.read_only) throw Error(EPERM, name() + ": the image is read-only");
  co_await meta_.acquire();
  const AsyncSemaphore::Permit lock(meta_);
  std::uint64_t table_bytes = 0;
  std::vector<SnapshotInfo> table = co_await settled_snapshot_table_locked(table_bytes);
  if (table.size() >= kMaxSnapshots) throw Error(EFBIG, name() + ": Too many snapshots");
  refuse_oversized_extra_data(table);

  // QEMU's find_new_snapshot_id: one more than the largest numeric ID.
  unsigned long id_max = 0;
  for (const SnapshotInfo& s : table) id_max = std::max(id_max, std::strtoul(s.id.c_str(), nullptr, 10));
  SnapshotInfo sn{0, static_cast<std::uint32_t>(l1_.size())};
  sn.id = std::to_string(id_max + 1);
  sn.name = sn_name.substr(0, kMaxNameLength);
  const auto now = std::chrono::duration_cast<std::chrono::microseconds>(
                       std::chrono::system_clock::now().time_since_epoch()).count();
  sn.date_sec = static_cast<std::uint32_t>(now / 1000000);
  sn.date_nsec = static_cast<std::uint32_t>(now % 1000000 * 1000);
  sn.icount = 0;  // what qemu-img snapshot -c stores
  sn.disk_size = size_;
  sn.extra_size = static_cast<std::uint32_t>(kExtraSize);

  // 1. Room for the snapshot's L1 table; 2. one more reference on everything the active
  // tables reach, COPIED cleared from them (refcounts on disk first, then L2, then L1).
  const std::uint64_t l1_bytes = l1_.size() * 8;
  if (l1_bytes) sn.l1_offset = co_await allocate_clusters((l1_bytes + cs_ - 1) >> cb_);
  comp_cluster_ = 0;  // compressed data goes to clusters of its own from here
  const bool l1_changed = co_await update_l1_refcounts_locked(l1_, +1);
  l1_dirty_ = l1_dirty_ || l1_changed;
  co_await flush_metadata_locked();
  // 3. The snapshot's L1 table, then the snapshot table that names it.
  if (l1_bytes) {
    Buffer b = Buffer::zeroed(l1_bytes);
    for (std::size_t i = 0; i < l1_.size(); ++i) store_be64(b.data() + 8 * i, l1_[i]);
    co_await file_->write(sn.l1_offset, b.span());
  }
  table.push_back(std::move(sn));
  co_await write_snapshot_table_locked(table, table_bytes);
  co_await flush_metadata_locked();
  co_await file_->flush();
}

Task<void> Qcow2Node::apply_snapshot(const std::string& id_or_name) {
  if (caps_.read_only) throw Error(EPERM, name() + ": the image is read-only");
  co_await meta_.acquire();
  const AsyncSemaphore::Permit lock(meta_);
  std::uint64_t table_bytes = 0;
  const std::vector<SnapshotInfo> table = co_await settled_snapshot_table_locked(table_bytes);
  const SnapshotInfo* sn = nullptr;
  for (const SnapshotInfo& s : table)
    if (!sn && s.id == id_or_name) sn = &s;
  for (const SnapshotInfo& s : table)
    if (!sn && s.name == id_or_name) sn = &s;
  if (!sn) throw Error(ENOENT, name() + ": no snapshot with the ID or name '" + id_or_name + "'");
  std::vector<std::uint64_t> sn_l1 = co_await read_snapshot_l1(*sn);
  if (sn->disk_size != size_) {
    if (h_.version < 3) throw Error(ENOTSUP, "Can't resize a v2 image which has snapshots");
    if (sn->disk_size % 512) throw Error(EINVAL, name() + ": the snapshot's disk size is not a multiple of 512");
  }

  // The active L1 table must hold the snapshot's and cover its disk size.
  const std::uint64_t table_cover = cs_ << l2_bits_;
  const std::uint64_t entries =
      std::max<std::uint64_t>(sn_l1.size(), (sn->disk_size + table_cover - 1) / table_cover);
  co_await grow_l1_locked(entries);
  sn_l1.resize(l1_.size(), 0);

  // One more reference on everything the snapshot reaches, on disk before the active L1
  // points at it (no COPIED in it: the snapshot keeps all of it).
  decompressed_.clear();
  comp_cluster_ = 0;
  co_await update_l1_refcounts_locked(sn_l1, +1);
  co_await flush_metadata_locked();
  std::vector<std::uint64_t> old = std::move(l1_);
  l1_ = sn_l1;
  l1_dirty_ = true;
  co_await flush_metadata_locked();
  co_await file_->flush();
  if (sn->disk_size != size_) {
    std::byte field[8];
    store_be64(field, sn->disk_size);
    co_await write_header_field(24, field);
    h_.size = sn->disk_size;
    size_ = sn->disk_size;
  }
  // The old active tables' references go; COPIED where the active tables are alone now.
  co_await update_l1_refcounts_locked(old, -1);
  const bool l1_changed = co_await update_l1_refcounts_locked(l1_, 0);
  l1_dirty_ = l1_dirty_ || l1_changed;
  co_await flush_metadata_locked();
  co_await file_->flush();
}

Task<void> Qcow2Node::delete_snapshot(const std::string& sn_name) {
  if (caps_.read_only) throw Error(EPERM, name() + ": the image is read-only");
  co_await meta_.acquire();
  const AsyncSemaphore::Permit lock(meta_);
  std::uint64_t table_bytes = 0;
  std::vector<SnapshotInfo> table = co_await settled_snapshot_table_locked(table_bytes);
  auto it = std::find_if(table.begin(), table.end(), [&](const SnapshotInfo& s) { return s.name == sn_name; });
  if (it == table.end()) throw Error(ENOENT, name() + ": no snapshot named '" + sn_name + "'");
  refuse_oversized_extra_data(table);
  const SnapshotInfo sn = *it;
  std::vector<std::uint64_t> sn_l1 = co_await read_snapshot_l1(sn);

  // Out of the table first: from then on its clusters are only leaked if we stop.
  table.erase(it);
  co_await write_snapshot_table_locked(table, table_bytes);
  decompressed_.clear();
  comp_cluster_ = 0;
  co_await update_l1_refcounts_locked(sn_l1, -1);
  const std::uint64_t l1_bytes = std::uint64_t{sn.l1_size} * 8;
  if (l1_bytes)
    for (std::uint64_t c = sn.l1_offset >> cb_; c <= (sn.l1_offset + l1_bytes - 1) >> cb_; ++c)
      co_await snapshot_ref_locked(c, -1);
  // COPIED where the active tables are alone now.
  const bool l1_changed = co_await update_l1_refcounts_locked(l1_, 0);
  l1_dirty_ = l1_dirty_ || l1_changed;
  co_await flush_metadata_locked();
  co_await file_->flush();
}

}  // namespace netblk::qcow2
