// qemu-img check for qcow2: count every reference to every host cluster, compare with the
// stored refcounts, check the COPIED flags, and repair what the caller allows.
#include <cstring>

#include "core/text.hpp"
#include "formats/qcow2/qcow2.hpp"
#include "netblk/buffer.hpp"

namespace netblk::qcow2 {
namespace {

std::string hex_digits(std::uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

Task<std::vector<Qcow2Node::SnapshotInfo>> Qcow2Node::read_snapshot_table(std::uint64_t& table_bytes) {
  std::vector<SnapshotInfo> out;
  table_bytes = 0;
  if (!h_.nb_snapshots) co_return out;
  const std::uint64_t fsz = file_->size();
  std::uint64_t pos = h_.snapshots_offset, end = pos;
  for (std::uint32_t i = 0; i < h_.nb_snapshots; ++i) {
    std::byte fixed[40];
    if (pos + 40 > fsz) throw Error(EIO, name() + ": snapshot table lies beyond the end of the image file");
    co_await file_->read(pos, fixed);
    SnapshotInfo s{load_be64(fixed), load_be32(fixed + 8)};
    const std::uint64_t id_len = load_be16(fixed + 12), name_len = load_be16(fixed + 14);
    const std::uint64_t extra = load_be32(fixed + 36);
    s.date_sec = load_be32(fixed + 16);
    s.date_nsec = load_be32(fixed + 20);
    s.vm_clock_nsec = load_be64(fixed + 24);
    s.vm_state_size = load_be32(fixed + 32);
    if (pos + 40 + extra + id_len + name_len > fsz)
      throw Error(EIO, name() + ": snapshot table lies beyond the end of the image file");
    // Extra data (QEMU's: a 64-bit VM state size, the disk size, the icount), then ID and name.
    std::vector<std::byte> var(std::min<std::uint64_t>(extra, 24));
    if (!var.empty()) co_await file_->read(pos + 40, var);
    if (var.size() >= 8) s.vm_state_size = load_be64(var.data());
    s.disk_size = var.size() >= 16 ? load_be64(var.data() + 8) : size_;
    if (var.size() >= 24) s.icount = load_be64(var.data() + 16);
    s.extra_size = static_cast<std::uint32_t>(extra);
    if (extra > 24 && extra <= kMaxSnapshotExtraData) {
      s.extra_rest.resize(extra - 24);
      co_await file_->read(pos + 40 + 24, s.extra_rest);
    }
    std::string text(id_len + name_len, '\0');
    if (!text.empty()) co_await file_->read(pos + 40 + extra, std::as_writable_bytes(std::span(text)));
    s.id = text.substr(0, id_len);
    s.name = text.substr(id_len);
    pos += 40 + extra + id_len + name_len;
    end = pos;
    pos = (pos + 7) & ~std::uint64_t{7};  // the next entry; the table itself may end unaligned (QEMU's does)
    out.push_back(s);
  }
  table_bytes = end - h_.snapshots_offset;
  co_return out;
}

Task<CheckResult> Qcow2Node::check(unsigned fix) {
  CheckResult r;
  if (fix && caps_.read_only) throw Error(EROFS, name() + ": the image must be writable to be repaired");
  co_await meta_.acquire();
  const AsyncSemaphore::Permit lock(meta_);
  co_await flush_metadata_locked();

  const std::uint64_t fsz = file_->size();
  const std::uint64_t nb = (fsz + cs_ - 1) >> cb_;
  std::vector<std::uint32_t> refs(nb, 0);
  auto inc = [&](std::uint64_t offset, std::uint64_t bytes) {
    if (!bytes) return;
    const std::uint64_t first = offset >> cb_, last = (offset + bytes - 1) >> cb_;
    for (std::uint64_t c = first; c <= last; ++c) {
      if (c >= nb) {
        r.messages.push_back("ERROR: cluster " + std::to_string(c) + " (offset " + hex(c << cb_) +
                             ") is referenced but lies beyond the end of the image file");
        ++r.corruptions;
        break;
      }
      if (refs[c] != UINT32_MAX) ++refs[c];
    }
  };
  auto read_table = [&](std::uint64_t offset, std::uint64_t bytes, std::vector<std::uint64_t>& out) -> Task<bool> {
    out.clear();
    if (offset >= fsz || bytes > fsz - offset) co_return false;
    Buffer b(bytes);
    co_await file_->read(offset, b.span());
    out.resize(bytes / 8);
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = load_be64(b.data() + 8 * i);
    co_return true;
  };

  const std::uint64_t total_l2 = std::uint64_t{1} << l2_bits_;
  // Walks one L1 table (the active one or a snapshot's), counting what it references.
  auto walk = [&](const std::vector<std::uint64_t>& l1, bool active) -> Task<void> {
    std::vector<std::uint64_t> l2;
    for (std::size_t i = 0; i < l1.size(); ++i) {
      const std::uint64_t l2_off = l1[i] & kOffsetMask;
      if (!l2_off) continue;
      if (l2_off & (cs_ - 1)) {
        r.messages.push_back("ERROR l2_offset=" + hex_digits(l2_off) + ": Table is not cluster aligned; L1 entry corrupted");
        ++r.corruptions;
        continue;
      }
      inc(l2_off, cs_);
      if (!co_await read_table(l2_off, cs_, l2)) {
        r.messages.push_back("ERROR l2_offset=" + hex_digits(l2_off) + ": L2 table lies beyond the end of the image file");
        ++r.corruptions;
        continue;
      }
      std::uint64_t next_contiguous = 0;
      for (std::uint64_t j = 0; j < total_l2; ++j) {
        const std::uint64_t e = l2[j * stride_];
        if (e & kOflagCompressed) {
          if (ext_l2_ && l2[j * 2 + 1]) {
            r.messages.push_back("ERROR compressed cluster " + std::to_string(i * total_l2 + j) +
                                 " with non-zero subcluster allocation bitmap, entry=" + hex(e));
            ++r.corruptions;
          }
          CompressedDescriptor d = decode_compressed(e, cb_);
          inc(d.offset & ~std::uint64_t{511}, d.sectors * 512);
          if (active) {
            ++r.allocated_clusters;
            ++r.compressed_clusters;
            ++r.fragmented_clusters;  // compressed clusters are fragmented by nature
          }
          continue;
        }
        const std::uint64_t host = e & kOffsetMask;
        if (!host) continue;
        if (host & (cs_ - 1)) {
          r.messages.push_back("ERROR offset=" + hex_digits(host) + ": Cluster is not properly aligned; L2 entry corrupted.");
          ++r.corruptions;
          continue;
        }
        inc(host, cs_);
        if (active) {
          ++r.allocated_clusters;
          if (next_contiguous && host != next_contiguous) ++r.fragmented_clusters;
          next_contiguous = host + cs_;
        }
      }
    }
  };

  // References: header, L1 tables, L2 tables and data, refcount structures, snapshots.
  inc(0, cs_);
  inc(h_.l1_table_offset, std::uint64_t{h_.l1_size} * 8);
  co_await walk(l1_, true);
  inc(reftable_offset_, reftable_clusters_ * cs_);
  for (std::size_t i = 0; i < reftable_.size(); ++i) {
    const std::uint64_t off = reftable_[i] & kRefTableOffsetMask;
    if (!off) continue;
    if (off & (cs_ - 1)) {
      r.messages.push_back("ERROR refcount block " + std::to_string(i) +
                           " is not cluster aligned; refcount table entry corrupted");
      ++r.corruptions;
      continue;
    }
    if (off >= fsz) {
      r.messages.push_back("ERROR refcount block " + std::to_string(i) + " is outside image");
      ++r.corruptions;
      continue;
    }
    inc(off, cs_);
  }
  try {
    std::uint64_t snap_bytes = 0;
    auto snaps = co_await read_snapshot_table(snap_bytes);
    inc(h_.snapshots_offset, snap_bytes);
    for (const auto& s : snaps) {
      if (std::uint64_t{s.l1_size} * 8 > kMaxL1Bytes || (s.l1_offset & (cs_ - 1))) {
        r.messages.push_back("ERROR snapshot L1 table at " + hex(s.l1_offset) + " is invalid");
        ++r.corruptions;
        continue;
      }
      inc(s.l1_offset, std::uint64_t{s.l1_size} * 8);
      std::vector<std::uint64_t> l1;
      if (co_await read_table(s.l1_offset, std::uint64_t{s.l1_size} * 8, l1)) co_await walk(l1, false);
    }
  } catch (const Error& e) {
    r.messages.push_back(std::string("ERROR ") + e.what());
    ++r.check_errors;
  }
  if (h_.has_bitmaps_ext && (h_.autoclear & kAutoclearBitmaps) && h_.bitmaps_directory_size <= (64u << 20)) {
    // Persistent bitmaps (written by QEMU) own their directory, tables and data clusters.
    inc(h_.bitmaps_directory_offset, h_.bitmaps_directory_size);
    std::vector<std::uint64_t> none;
    if (h_.bitmaps_directory_offset < fsz && h_.bitmaps_directory_size <= fsz - h_.bitmaps_directory_offset) {
      Buffer dir(h_.bitmaps_directory_size);
      co_await file_->read(h_.bitmaps_directory_offset, dir.span());
      std::uint64_t pos = 0;
      for (std::uint32_t i = 0; i < h_.nb_bitmaps && pos + 24 <= dir.size(); ++i) {
        const std::uint64_t table = load_be64(dir.data() + pos);
        const std::uint64_t table_size = load_be32(dir.data() + pos + 8);
        const std::uint64_t name_size = load_be16(dir.data() + pos + 18);
        const std::uint64_t extra = load_be32(dir.data() + pos + 20);
        pos = (pos + 24 + extra + name_size + 7) & ~std::uint64_t{7};
        inc(table, table_size * 8);
        std::vector<std::uint64_t> entries;
        if (table_size * 8 <= kMaxL1Bytes && co_await read_table(table, table_size * 8, entries))
          for (std::uint64_t e : entries)
            if (std::uint64_t off = e & kOffsetMask) inc(off, cs_);
      }
    }
  }

  // Compare with the stored refcounts.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> repairs;
  std::uint64_t highest = 0;
  for (std::uint64_t c = 0; c < nb; ++c) {
    const std::uint64_t stored = co_await refcount(c);
    const std::uint64_t want = refs[c];
    if (stored || want) highest = c + 1;
    if (stored == want) continue;
    const bool leak = stored > want;
    const bool fixing = leak ? (fix & kFixLeaks) : (fix & kFixErrors);
    r.messages.push_back(std::string(fixing ? "Repairing" : leak ? "Leaked" : "ERROR") + " cluster " +
                         std::to_string(c) + " refcount=" + std::to_string(stored) +
                         " reference=" + std::to_string(want));
    if (fixing) {
      repairs.emplace_back(c, want);
      ++(leak ? r.leaks_fixed : r.corruptions_fixed);
    } else {
      ++(leak ? r.leaks : r.corruptions);
    }
  }

  if (!repairs.empty()) {
    for (const auto& [c, want] : repairs) {
      const std::uint64_t stored = co_await refcount(c);
      co_await update_refcount(c, static_cast<std::int64_t>(want) - static_cast<std::int64_t>(stored));
      if (want == 0) free_.insert(c);
    }
  }

  // COPIED flags of the active tables must say "refcount is exactly 1" (a refcount of 0
  // was reported above already).
  for (std::size_t i = 0; i < l1_.size(); ++i) {
    const std::uint64_t l2_off = l1_[i] & kOffsetMask;
    if (!l2_off || (l2_off & (cs_ - 1)) || (l2_off >> cb_) >= nb) continue;
    const std::uint64_t rc = co_await refcount(l2_off >> cb_);
    if (rc && (rc == 1) != ((l1_[i] & kOflagCopied) != 0)) {
      const bool fixing = fix & kFixErrors;
      r.messages.push_back(std::string(fixing ? "Repairing" : "ERROR") + " OFLAG_COPIED L2 cluster: l1_index=" +
                           std::to_string(i) + " l1_entry=" + hex_digits(l1_[i]) + " refcount=" + std::to_string(rc));
      if (fixing) {
        l1_[i] = rc == 1 ? (l1_[i] | kOflagCopied) : (l1_[i] & ~kOflagCopied);
        l1_dirty_ = true;
        ++r.corruptions_fixed;
      } else {
        ++r.corruptions;
      }
    }
    auto t = co_await load_l2_locked(l2_off);
    for (std::uint64_t j = 0; j < total_l2; ++j) {
      const std::uint64_t e = t->e[j * stride_];
      const std::uint64_t host = e & kOffsetMask;
      if ((e & kOflagCompressed) || !host || (host & (cs_ - 1)) || (host >> cb_) >= nb) continue;
      const std::uint64_t hrc = co_await refcount(host >> cb_);
      if (!hrc || (hrc == 1) == ((e & kOflagCopied) != 0)) continue;
      const bool fixing = fix & kFixErrors;
      r.messages.push_back(std::string(fixing ? "Repairing" : "ERROR") + " OFLAG_COPIED data cluster: l2_entry=" +
                           hex_digits(e) + " refcount=" + std::to_string(hrc));
      if (fixing) {
        t->e[j * stride_] = hrc == 1 ? (e | kOflagCopied) : (e & ~kOflagCopied);
        t->touch();
        ++r.corruptions_fixed;
      } else {
        ++r.corruptions;
      }
    }
  }

  if (fix) {
    co_await flush_metadata_locked();
    co_await file_->flush();
  }
  r.image_end_offset = highest << cb_;
  r.total_clusters = (size_ + cs_ - 1) >> cb_;
  co_return r;
}

}  // namespace netblk::qcow2
