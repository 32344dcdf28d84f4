// The qcow2 format: reading and writing (see qcow2.hpp for the metadata write order).
#include "formats/qcow2/qcow2.hpp"

#include <algorithm>
#include <cstring>

#include "block/locking.hpp"
#include "block/open.hpp"
#include "core/log.hpp"
#include "core/text.hpp"
#include "formats/qcow2/compress.hpp"
#include "netblk/buffer.hpp"
#include "spec/tree.hpp"

namespace netblk::qcow2 {
namespace {

constexpr std::uint64_t kDefaultL2CacheBytes = 32u << 20;
constexpr std::uint64_t kDefaultRefCacheBytes = 4u << 20;
constexpr std::uint64_t kMaxHostOffset = std::uint64_t{1} << 56;

// Whether a backing file named so is a plain local file: the protocol under its format
// decides. A name too malformed to tell counts as local, so that it fails at open as ever.
bool names_local_file(const Json& options, const std::string& filename) {
  try {
    Json tree = options;
    std::string name = filename;
    if (spec::is_json_name(name)) {
      spec::merge(tree, spec::parse_json_name(name));
      name.clear();
    }
    while (true) {
      const std::string driver = tree.value("driver", std::string());
      if (find_protocol(driver)) return driver == "file" || driver == "host_device";
      auto file = tree.find("file");
      if (file != tree.end() && file->is_object()) {
        Json child = *file;
        tree = std::move(child);
        name.clear();
        continue;
      }
      if (file != tree.end() && file->is_string()) name = file->get<std::string>();
      else if (auto f = tree.find("filename"); f != tree.end() && f->is_string()) name = f->get<std::string>();
      return filename_prefix(name).empty();
    }
  } catch (...) {
    return true;
  }
}

}  // namespace

// Keeps an L2 table in the cache while a writer is about to change it.
class Qcow2Node::Pin {
 public:
  explicit Pin(std::shared_ptr<L2Table> t) : t_(std::move(t)) {}  // adopts one pin
  Pin(const Pin&) = delete;
  ~Pin() {
    if (t_) --t_->pins;
  }

 private:
  std::shared_ptr<L2Table> t_;
};

Qcow2Node::Qcow2Node(const OpenContext& ctx, std::unique_ptr<Node> file, Header header)
    : Node(ctx.executor), h_(std::move(header)), backing_opening_(ctx.executor, 1), meta_(ctx.executor, 1),
      checkpointing_(ctx.executor, 1) {
  cb_ = h_.cluster_bits;
  cs_ = std::uint64_t{1} << cb_;
  ext_l2_ = h_.extended_l2();
  stride_ = ext_l2_ ? 2 : 1;
  l2_bits_ = cb_ - (ext_l2_ ? 4 : 3);
  refblock_bits_ = cb_ + 3 - h_.refcount_order;
  size_ = h_.size;
  file_ = std::move(file);
}

Task<void> Qcow2Node::init(const OpenContext& ctx, spec::Options& o) {
  // QEMU's qcow2 open options: cache sizes are honoured, the rest accepted.
  std::uint64_t l2_cache = o.size("l2-cache-size", kDefaultL2CacheBytes);
  std::uint64_t ref_cache = o.size("refcount-cache-size", kDefaultRefCacheBytes);
  if (auto total = o.size("cache-size")) l2_cache = std::max<std::uint64_t>(*total * 3 / 4, cs_);
  o.size("l2-cache-entry-size");
  o.boolean("lazy-refcounts");
  o.boolean("pass-discard-request");
  o.boolean("pass-discard-snapshot");
  o.boolean("pass-discard-other");
  o.boolean("discard-no-unref");
  o.uint("cache-clean-interval");
  o.take("overlap-check");
  if (o.has("encrypt")) throw Error(ENOTSUP, name() + ": encrypted qcow2 images are not supported by netblk");
  if (o.has("data-file"))
    throw Error(ENOTSUP, name() + ": qcow2 images with an external data file are not supported by netblk");
  std::optional<Json> backing_opt = o.take("backing");
  l2_cache_max_ = std::max<std::uint64_t>(16, l2_cache / cs_);
  refblock_cache_max_ = std::max<std::uint64_t>(16, ref_cache / cs_);

  const bool read_only = ctx.read_only || file_->read_only();
  if (!read_only && (h_.incompatible & kIncompatCorrupt))
    throw Error(EACCES, name() + ": qcow2: Image is corrupt; cannot be opened read/write");

  // L1 and refcount tables (sizes were bounded by the file and QEMU's limits).
  l1_.resize(h_.l1_size);
  if (h_.l1_size) {
    Buffer b(std::uint64_t{h_.l1_size} * 8);
    co_await file_->read(h_.l1_table_offset, b.span());
    for (std::uint32_t i = 0; i < h_.l1_size; ++i) l1_[i] = load_be64(b.data() + 8 * i);
  }
  reftable_offset_ = h_.refcount_table_offset;
  reftable_clusters_ = h_.refcount_table_clusters;
  {
    Buffer b(reftable_clusters_ * cs_);
    co_await file_->read(reftable_offset_, b.span());
    reftable_.resize(reftable_clusters_ * cs_ / 8);
    for (std::size_t i = 0; i < reftable_.size(); ++i) reftable_[i] = load_be64(b.data() + 8 * i);
  }

  caps_.read_only = read_only;
  caps_.can_flush = true;
  caps_.can_zero = true;
  caps_.can_discard = true;
  caps_.has_block_status = true;
  caps_.can_compress = !read_only;
  limits_.request_alignment = 1;
  limits_.preferred_alignment = static_cast<std::uint32_t>(std::min<std::uint64_t>(cs_, 1u << 20));

  if (!read_only) {
    next_free_ = (file_->size() + cs_ - 1) >> cb_;
    if (h_.autoclear) {
      // Features we do not maintain (bitmaps) become invalid once we write: clear them, as QEMU does.
      std::byte zero[8] = {};
      co_await write_header_field(88, zero);
      h_.autoclear = 0;
    }
    if (h_.incompatible & kIncompatDirty) {
      // Lazy refcounts left unwritten by a writer that stopped: rebuild them first.
      NETBLK_LOG(info, "{}: repairing refcounts of an image with the dirty bit set", name());
      CheckResult r = co_await check(kFixLeaks | kFixErrors);
      (void)r;
      std::byte field[8];
      store_be64(field, h_.incompatible & ~kIncompatDirty);
      co_await write_header_field(72, field);
      h_.incompatible &= ~kIncompatDirty;
    }
  }

  // The backing chain: an explicit option wins over what the image stores. A local file is
  // opened now (cheap, and its image locks are held from the start, as QEMU holds them);
  // anything else on the first read that needs it, so that an overlay opens, and reads
  // what it holds, with its server gone.
  backing_ctx_ = ctx;
  backing_ctx_.read_only = true;
  // Users that read nothing (info) lock no backing file: qemu-img info does not open it.
  backing_ctx_.permissions.reset();
  if (ctx.permissions && ctx.permissions->perm != 0) backing_ctx_.permissions = locking::backing_child(*ctx.permissions);
  backing_ctx_.base_dir = file_->driver() == "file" ? directory_of(file_->plain_filename()) : std::string();
  backing_options_ = Json::object();
  if (backing_opt) {
    backing_given_ = true;
    backing_option_ = *backing_opt;
    if (backing_opt->is_string() && backing_opt->get<std::string>().empty()) {
      // QEMU's "backing=" (empty): no backing file, as null.
    } else if (backing_opt->is_string()) {
      has_backing_ = true;
      backing_name_ = backing_opt->get<std::string>();
    } else if (backing_opt->is_object()) {
      has_backing_ = true;
      backing_options_ = *backing_opt;
    } else if (!backing_opt->is_null()) {
      o.invalid("backing", "expects a drive name, a group of options or null");
    }
  } else if (!h_.backing_file.empty()) {
    has_backing_ = true;
    if (auto d = backing_driver(h_.backing_file, h_.backing_format); !d.empty()) backing_options_["driver"] = d;
    backing_name_ = h_.backing_file;
  }
  if (has_backing_ && names_local_file(backing_options_, backing_name_)) co_await open_backing();
}

Task<Node*> Qcow2Node::open_backing() {
  if (backing_ || !has_backing_) co_return backing_.get();
  co_await backing_opening_.acquire();
  const AsyncSemaphore::Permit opening(backing_opening_);
  if (backing_) co_return backing_.get();  // opened while we waited
  // A failure of a moment ago answers for the requests that queued behind it, so that they
  // do not each wait out the protocol's retries again; later ones try again.
  constexpr auto kFailureHeld = std::chrono::seconds(1);
  if (backing_failed_ && std::chrono::steady_clock::now() - backing_failed_at_ < kFailureHeld) throw backing_error_;
  try {
    auto node = co_await open_node(backing_ctx_, backing_options_, backing_name_);
    backing_ = std::move(node);
  } catch (const Error& e) {
    backing_error_ = Error(e.code(), name() + ": Could not open backing file: " + e.what());
    backing_failed_ = true;
    backing_failed_at_ = std::chrono::steady_clock::now();
    throw backing_error_;
  }
  co_return backing_.get();
}

Json Qcow2Node::options() const {
  Json j{{"driver", "qcow2"}};
  if (backing_given_) j["backing"] = backing_option_;
  j["file"] = file_->options();
  return j;
}

ImageInfo Qcow2Node::image_info() const {
  ImageInfo info = Node::image_info();
  info.cluster_size = cs_;
  info.backing_filename = h_.backing_file;
  info.backing_format = h_.backing_format;
  info.dirty = (h_.incompatible & kIncompatDirty) != 0;
  Json& d = info.format_specific;
  d = Json::object();
  const bool v3 = h_.version >= 3;
  d["compat"] = v3 ? "1.1" : "0.10";
  d["compression-type"] = h_.compression_type == kCompressionZstd ? "zstd" : "zlib";
  if (v3) d["lazy-refcounts"] = (h_.compatible & kCompatLazyRefcounts) != 0;
  d["refcount-bits"] = 1u << h_.refcount_order;
  if (v3) {
    d["corrupt"] = (h_.incompatible & kIncompatCorrupt) != 0;
    d["extended-l2"] = ext_l2_;
  }
  return info;
}

// ---- mapping ----

Task<std::shared_ptr<L2Table>> Qcow2Node::get_l2(std::uint64_t l1_index) {
  std::uint64_t off = l1_[l1_index] & kOffsetMask;
  if (!off) co_return nullptr;
  if (auto it = l2_cache_.find(off); it != l2_cache_.end()) {
    it->second->last_use = ++use_clock_;
    co_return it->second;
  }
  co_await meta_.acquire();
  const AsyncSemaphore::Permit lock(meta_);
  off = l1_[l1_index] & kOffsetMask;  // may have changed while we waited
  if (!off) co_return nullptr;
  co_return co_await load_l2_locked(off);
}

Task<std::shared_ptr<L2Table>> Qcow2Node::load_l2_locked(std::uint64_t off) {
  if (auto it = l2_cache_.find(off); it != l2_cache_.end()) {
    it->second->last_use = ++use_clock_;
    co_return it->second;
  }
  if (off % cs_) throw Error(EIO, name() + ": L2 table offset " + hex(off) + " unaligned");
  if (off >= file_->size() || cs_ > file_->size() - off)
    throw Error(EIO, name() + ": L2 table at offset " + hex(off) + " lies beyond the end of the image file");
  if (l2_cache_.size() >= l2_cache_max_) {
    bool need_flush = false;
    evict_l2(false, need_flush);
    if (need_flush) {
      co_await flush_metadata_locked();
      evict_l2(false, need_flush);
    }
  }
  Buffer b(cs_);
  co_await file_->read(off, b.span());
  if (auto it = l2_cache_.find(off); it != l2_cache_.end()) co_return it->second;
  auto t = std::make_shared<L2Table>();
  t->offset = off;
  t->e.resize(cs_ / 8);
  for (std::size_t i = 0; i < t->e.size(); ++i) t->e[i] = load_be64(b.data() + 8 * i);
  t->last_use = ++use_clock_;
  l2_cache_[off] = t;
  co_return t;
}

void Qcow2Node::evict_l2(bool, bool& need_flush) {
  need_flush = false;
  auto victim = l2_cache_.end();
  bool dirty_seen = false;
  for (auto it = l2_cache_.begin(); it != l2_cache_.end(); ++it) {
    if (it->second->pins) continue;
    if (it->second->dirty()) {
      dirty_seen = true;
      continue;
    }
    if (victim == l2_cache_.end() || it->second->last_use < victim->second->last_use) victim = it;
  }
  if (victim != l2_cache_.end()) l2_cache_.erase(victim);
  else need_flush = dirty_seen;
}

Task<std::shared_ptr<L2Table>> Qcow2Node::l2_for_write(std::uint64_t l1_index) {
  // Fast path: the table is the active L1's alone (COPIED) and cached; pinning it needs no lock.
  if (std::uint64_t off = l1_[l1_index] & kOffsetMask; off && (l1_[l1_index] & kOflagCopied)) {
    if (auto it = l2_cache_.find(off); it != l2_cache_.end()) {
      it->second->last_use = ++use_clock_;
      ++it->second->pins;
      co_return it->second;
    }
  }
  co_await meta_.acquire();
  const AsyncSemaphore::Permit lock(meta_);
  std::uint64_t off = l1_[l1_index] & kOffsetMask;
  std::shared_ptr<L2Table> t;
  if (off && !(l1_[l1_index] & kOflagCopied)) {
    t = co_await copy_l2_locked(l1_index);  // shared with a snapshot
  } else if (off) {
    t = co_await load_l2_locked(off);
  } else {
    std::uint64_t host = co_await allocate_clusters(1);
    t = std::make_shared<L2Table>();
    t->offset = host;
    t->e.assign(cs_ / 8, 0);
    t->touch();
    t->last_use = ++use_clock_;
    l2_cache_[host] = t;
    l1_[l1_index] = host | kOflagCopied;
    l1_dirty_ = true;
  }
  ++t->pins;
  co_return t;
}

Task<std::shared_ptr<L2Table>> Qcow2Node::copy_l2_locked(std::uint64_t l1_index) {
  const std::uint64_t old_off = l1_[l1_index] & kOffsetMask;
  auto old = co_await load_l2_locked(old_off);
  std::vector<std::uint64_t> entries = old->e;
  const std::uint64_t host = co_await allocate_clusters(1);
  auto t = std::make_shared<L2Table>();
  t->offset = host;
  t->e = std::move(entries);
  t->touch();
  t->last_use = ++use_clock_;
  l2_cache_[host] = t;
  l1_[l1_index] = host | kOflagCopied;
  l1_dirty_ = true;
  // The shared table loses the active L1's reference once the new L1 entry is on disk.
  pending_free_.push_back(old_off >> cb_);
  co_return t;
}

Task<Qcow2Node::Extent> Qcow2Node::map_range(std::uint64_t offset, std::uint64_t length) {
  const unsigned cover_bits = cb_ + l2_bits_;
  const std::uint64_t table_end = ((offset >> cover_bits) + 1) << cover_bits;
  length = std::min(length, table_end - offset);
  Extent x;
  auto t = co_await get_l2(offset >> cover_bits);
  if (!t) {
    x.length = length;
    co_return x;
  }
  const std::uint64_t index_mask = (std::uint64_t{1} << l2_bits_) - 1;
  std::uint64_t idx = (offset >> cb_) & index_mask;
  const bool v3 = h_.version >= 3;
  auto check_host = [&](std::uint64_t host, std::uint64_t i) {
    if (host & (cs_ - 1))
      throw Error(EIO, name() + ": Cluster allocation offset " + hex(host) + " unaligned (L2 offset: " +
                           hex(t->offset) + ", L2 index: " + hex(i) + ")");
  };
  if (!ext_l2_) {
    auto classify = [&](std::uint64_t i, std::uint64_t& host) {
      std::uint64_t e = t->e[i];
      if (e & kOflagCompressed) return Kind::compressed;
      host = e & kOffsetMask;
      if (v3 && (e & kOflagZero)) return Kind::zero;
      if (host) {
        check_host(host, i);
        return Kind::data;
      }
      return Kind::unallocated;
    };
    std::uint64_t host0 = 0;
    Kind k = classify(idx, host0);
    const std::uint64_t in_cluster = offset & (cs_ - 1);
    std::uint64_t len = cs_ - in_cluster;
    if (k == Kind::compressed) {
      x.kind = k;
      x.l2_entry = t->e[idx];
      x.length = std::min(len, length);
      co_return x;
    }
    std::uint64_t expect = host0 + cs_;
    while (len < length && idx + 1 <= index_mask) {
      std::uint64_t h = 0;
      if (classify(idx + 1, h) != k || (k == Kind::data && h != expect)) break;
      ++idx;
      expect += cs_;
      len += cs_;
    }
    x.kind = k;
    x.length = std::min(len, length);
    x.host = k == Kind::data ? host0 + in_cluster : 0;
    co_return x;
  }
  // Extended L2: 32 subclusters per cluster, each allocated, zero or unallocated.
  const unsigned sc_bits = cb_ - 5;
  const std::uint64_t sc = std::uint64_t{1} << sc_bits;
  auto classify = [&](std::uint64_t i, unsigned sub, std::uint64_t& host) {
    std::uint64_t e = t->e[2 * i], bm = t->e[2 * i + 1];
    if (e & kOflagCompressed) return Kind::compressed;
    std::uint64_t base = e & kOffsetMask;
    if ((bm >> sub) & 1) {
      if (!base)
        throw Error(EIO, name() + ": subcluster allocated without a host cluster (L2 offset: " + hex(t->offset) +
                             ", L2 index: " + hex(i) + ")");
      check_host(base, i);
      host = base + (std::uint64_t{sub} << sc_bits);
      return Kind::data;
    }
    if ((bm >> (32 + sub)) & 1) return Kind::zero;
    return Kind::unallocated;
  };
  unsigned sub = static_cast<unsigned>((offset >> sc_bits) & 31);
  std::uint64_t host0 = 0;
  Kind k = classify(idx, sub, host0);
  if (k == Kind::compressed) {
    x.kind = k;
    x.l2_entry = t->e[2 * idx];
    x.length = std::min(cs_ - (offset & (cs_ - 1)), length);
    co_return x;
  }
  const std::uint64_t in_sub = offset & (sc - 1);
  std::uint64_t len = sc - in_sub;
  std::uint64_t expect = host0 + sc;
  while (len < length) {
    if (++sub == 32) {
      sub = 0;
      if (++idx > index_mask) break;
    }
    std::uint64_t h = 0;
    if (classify(idx, sub, h) != k || (k == Kind::data && h != expect)) break;
    expect += sc;
    len += sc;
  }
  x.kind = k;
  x.length = std::min(len, length);
  x.host = k == Kind::data ? host0 + in_sub : 0;
  co_return x;
}

// ---- reading ----

Task<void> Qcow2Node::read_backing(std::uint64_t offset, std::span<std::byte> buf) {
  std::uint64_t n = 0;
  Node* backing = co_await open_backing();
  if (backing && offset < backing->size()) {
    n = std::min<std::uint64_t>(buf.size(), backing->size() - offset);
    co_await backing->read(offset, buf.first(n));
  }
  std::fill(buf.begin() + static_cast<std::ptrdiff_t>(n), buf.end(), std::byte{0});
}

Task<void> Qcow2Node::read_host(std::uint64_t host, std::span<std::byte> buf) {
  // What lies past the end of the file reads as zeroes (a preallocated image cut short).
  const std::uint64_t fsz = file_->size();
  std::uint64_t n = host < fsz ? std::min<std::uint64_t>(buf.size(), fsz - host) : 0;
  if (n) co_await file_->read(host, buf.first(n));
  std::fill(buf.begin() + static_cast<std::ptrdiff_t>(n), buf.end(), std::byte{0});
}

Task<void> Qcow2Node::read_compressed(std::uint64_t entry, std::uint64_t in_cluster, std::span<std::byte> buf) {
  if (entry != decompressed_entry_ || decompressed_.empty()) {
    CompressedDescriptor d = decode_compressed(entry, cb_);
    const std::uint64_t fsz = file_->size();
    if (d.offset >= fsz)
      throw Error(EIO, name() + ": compressed cluster at host offset " + hex(d.offset) +
                           " lies beyond the end of the image file");
    std::uint64_t csize = std::min<std::uint64_t>(d.sectors * 512 - (d.offset & 511), fsz - d.offset);
    Buffer in(csize);
    co_await file_->read(d.offset, in.span());
    std::vector<std::byte> out(cs_);
    if (!decompress(h_.compression_type, in.span(), out))
      throw Error(EIO, name() + ": could not decompress the compressed cluster at host offset " + hex(d.offset));
    decompressed_ = std::move(out);
    decompressed_entry_ = entry;
  }
  std::memcpy(buf.data(), decompressed_.data() + in_cluster, buf.size());
}

Task<void> Qcow2Node::co_read(std::uint64_t offset, std::span<std::byte> buf) {
  while (!buf.empty()) {
    Extent x = co_await map_range(offset, buf.size());
    auto piece = buf.first(x.length);
    switch (x.kind) {
      case Kind::unallocated: co_await read_backing(offset, piece); break;
      case Kind::zero: std::fill(piece.begin(), piece.end(), std::byte{0}); break;
      case Kind::data: co_await read_host(x.host, piece); break;
      case Kind::compressed: co_await read_compressed(x.l2_entry, offset & (cs_ - 1), piece); break;
    }
    offset += x.length;
    buf = buf.subspan(x.length);
  }
}

Task<void> Qcow2Node::read_guest(std::uint64_t offset, std::span<std::byte> buf) {
  std::uint64_t n = offset < size_ ? std::min<std::uint64_t>(buf.size(), size_ - offset) : 0;
  if (n) co_await co_read(offset, buf.first(n));
  std::fill(buf.begin() + static_cast<std::ptrdiff_t>(n), buf.end(), std::byte{0});
}

Task<BlockStatus> Qcow2Node::co_block_status(std::uint64_t offset, std::uint64_t length) {
  Extent x = co_await map_range(offset, length);
  BlockStatus s;
  s.length = x.length;
  switch (x.kind) {
    case Kind::unallocated: s.flags = 0; break;
    case Kind::zero: s.flags = kStatusZero | kStatusAllocated; break;
    case Kind::data:
      s.flags = kStatusData | kStatusAllocated;
      s.host_offset = x.host;
      break;
    case Kind::compressed: s.flags = kStatusData | kStatusAllocated; break;
  }
  co_return s;
}

// ---- writing ----

void Qcow2Node::release_entry(std::uint64_t e) {
  if (!e) return;
  if (e & kOflagCompressed) {
    CompressedDescriptor d = decode_compressed(e, cb_);
    std::uint64_t start = d.offset & ~std::uint64_t{511};
    for (std::uint64_t c = start >> cb_; c <= (start + d.sectors * 512 - 1) >> cb_; ++c) pending_free_.push_back(c);
    return;
  }
  if (std::uint64_t host = e & kOffsetMask) pending_free_.push_back(host >> cb_);
}

Task<void> Qcow2Node::co_write(std::uint64_t offset, std::span<const std::byte> buf, unsigned flags) {
  const unsigned cover_bits = cb_ + l2_bits_;
  while (!buf.empty()) {
    const std::uint64_t table_end = ((offset >> cover_bits) + 1) << cover_bits;
    const std::uint64_t n = std::min<std::uint64_t>(buf.size(), table_end - offset);
    co_await write_in_l2(offset, buf.first(n), flags);
    offset += n;
    buf = buf.subspan(n);
  }
}

Task<void> Qcow2Node::write_in_l2(std::uint64_t offset, std::span<const std::byte> data, unsigned flags) {
  const std::uint64_t first = offset >> cb_, last = (offset + data.size() - 1) >> cb_;
  auto held = co_await cluster_locks_.acquire(first, last + 1, true);
  const RangeLocks::Guard range(cluster_locks_, held);
  co_await write_in_l2_locked(offset, data, flags);
}

Task<std::uint64_t> Qcow2Node::fill_unallocated(std::uint64_t offset, std::span<const std::byte> data) {
  if (caps_.read_only) throw Error(EPERM, name() + ": the image is read-only");
  const unsigned cover_bits = cb_ + l2_bits_;
  const std::uint64_t index_mask = (std::uint64_t{1} << l2_bits_) - 1;
  // Zero clusters need v3; with subclusters the plain write path keeps the bitmaps right.
  const bool zero_clusters = h_.version >= 3 && !ext_l2_;
  std::uint64_t written = 0;
  while (!data.empty()) {
    const std::uint64_t table_end = ((offset >> cover_bits) + 1) << cover_bits;
    const std::uint64_t n = std::min<std::uint64_t>(data.size(), table_end - offset);
    const std::uint64_t first = offset >> cb_, last = (offset + n - 1) >> cb_;
    // What is unallocated is decided under the clusters' lock, which every writer holds:
    // a cluster a guest wrote meanwhile is left alone.
    auto held = co_await cluster_locks_.acquire(first, last + 1, true);
    const RangeLocks::Guard range(cluster_locks_, held);
    for (std::uint64_t pos = offset; pos < offset + n;) {
      Extent x = co_await map_range(pos, offset + n - pos);
      if (x.kind == Kind::unallocated) {
        const auto piece = data.subspan(pos - offset, x.length);
        const bool whole = (pos & (cs_ - 1)) == 0 && ((pos + x.length) & (cs_ - 1)) == 0;
        if (zero_clusters && whole && is_zero(piece)) {
          auto t = co_await l2_for_write(pos >> cover_bits);
          Pin pin(t);
          co_await meta_.acquire();
          const AsyncSemaphore::Permit lock(meta_);
          for (std::uint64_t gc = pos >> cb_; gc < (pos + x.length) >> cb_; ++gc) t->e[gc & index_mask] = kOflagZero;
          t->touch();
        } else {
          co_await write_in_l2_locked(pos, piece, 0);
        }
        written += x.length;
      }
      pos += x.length;
    }
    offset += n;
    data = data.subspan(n);
  }
  co_return written;
}

Task<void> Qcow2Node::write_in_l2_locked(std::uint64_t offset, std::span<const std::byte> data, unsigned flags) {
  const std::uint64_t end = offset + data.size();
  const std::uint64_t first = offset >> cb_, last = (end - 1) >> cb_;
  auto t = co_await l2_for_write(offset >> (cb_ + l2_bits_));
  Pin pin(t);
  const std::uint64_t index_mask = (std::uint64_t{1} << l2_bits_) - 1;
  const bool v3 = h_.version >= 3;
  const unsigned sc_bits = cb_ - 5;

  struct Piece {
    std::uint64_t gc, a, b;  // guest cluster, byte range [a, b) inside it
    const std::byte* src;
    bool full;
  };
  std::vector<Piece> allocs;
  // In-place writes are gathered into host-contiguous runs.
  std::uint64_t run_host = 0, run_len = 0;
  const std::byte* run_src = nullptr;
  auto flush_run = [&]() -> Task<void> {
    if (run_len) co_await file_->write(run_host, std::span<const std::byte>(run_src, run_len));
    run_len = 0;
  };

  for (std::uint64_t gc = first; gc <= last; ++gc) {
    const std::uint64_t cstart = gc << cb_;
    const std::uint64_t a = std::max(offset, cstart) - cstart;
    const std::uint64_t b = std::min(end, cstart + cs_) - cstart;
    const std::byte* src = data.data() + (cstart + a - offset);
    const bool full = a == 0 && (b == cs_ || cstart + b >= size_);
    const std::uint64_t idx = gc & index_mask;
    const std::uint64_t e = t->e[idx * stride_];
    const std::uint64_t host = e & kOffsetMask;
    const bool compress = (flags & kWriteCompressed) && a == 0 && b == cs_;
    bool in_place = !compress && !(e & kOflagCompressed) && (e & kOflagCopied) && host &&
                    !(!ext_l2_ && v3 && (e & kOflagZero));
    if (in_place && ext_l2_) {
      const unsigned s0 = static_cast<unsigned>(a >> sc_bits), s1 = static_cast<unsigned>((b - 1) >> sc_bits);
      const std::uint64_t want = ((s1 == 31 ? ~std::uint64_t{0} : ((std::uint64_t{1} << (s1 + 1)) - 1)) &
                                  ~((std::uint64_t{1} << s0) - 1)) & 0xffffffffu;
      const std::uint64_t bm = t->e[idx * 2 + 1];
      if ((bm & want) != want) {
        // Some touched subclusters are not allocated yet: fill them from the current view.
        co_await flush_run();
        const std::uint64_t sa = std::uint64_t{s0} << sc_bits, sb = std::uint64_t{s1 + 1} << sc_bits;
        Buffer tmp(sb - sa);
        co_await read_guest(cstart + sa, tmp.span());
        std::memcpy(tmp.data() + (a - sa), src, b - a);
        co_await file_->write(host + sa, tmp.span());
        co_await meta_.acquire();
        const AsyncSemaphore::Permit lock(meta_);
        t->e[idx * 2 + 1] = (t->e[idx * 2 + 1] | want) & ~(want << 32);
        t->touch();
        continue;
      }
    }
    if (in_place) {
      if (run_len && run_host + run_len == host + a && run_src + run_len == src) {
        run_len += b - a;
      } else {
        co_await flush_run();
        run_host = host + a;
        run_src = src;
        run_len = b - a;
      }
      continue;
    }
    co_await flush_run();
    if (compress) {
      Buffer out(cs_);
      auto n = qcow2::compress(h_.compression_type, std::span<const std::byte>(src, cs_), out.span().first(cs_ - 1));
      if (n) {
        const std::uint64_t sectors = (*n + 511) / 512;
        Buffer padded = Buffer::zeroed(sectors * 512);
        std::memcpy(padded.data(), out.data(), *n);
        std::uint64_t chost;
        {
          co_await meta_.acquire();
          const AsyncSemaphore::Permit lock(meta_);
          chost = co_await allocate_compressed(sectors * 512);
        }
        co_await file_->write(chost, padded.span());
        co_await meta_.acquire();
        const AsyncSemaphore::Permit lock(meta_);
        const std::uint64_t old = t->e[idx * stride_];
        t->e[idx * stride_] = encode_compressed(chost, sectors, cb_);
        if (ext_l2_) t->e[idx * 2 + 1] = 0;
        t->touch();
        release_entry(old);
        continue;
      }
    }
    allocs.push_back({gc, a, b, src, full});
  }
  co_await flush_run();
  if (allocs.empty()) co_return;

  // New clusters, contiguous on the host: data first, then the L2 entries.
  const std::uint64_t n = allocs.size();
  std::uint64_t host;
  {
    co_await meta_.acquire();
    const AsyncSemaphore::Permit lock(meta_);
    host = co_await allocate_clusters(n);
  }
  bool direct = true;
  for (std::uint64_t j = 0; j < n && direct; ++j)
    direct = allocs[j].gc == allocs[0].gc + j && allocs[j].a == 0 && allocs[j].b == cs_;
  if (direct) {
    co_await file_->write(host, std::span<const std::byte>(allocs[0].src, n * cs_));
  } else {
    Buffer buf(n * cs_);
    for (std::uint64_t j = 0; j < n; ++j) {
      const Piece& p = allocs[j];
      std::byte* dst = buf.data() + j * cs_;
      if (p.full) std::memset(dst, 0, cs_);  // the tail past the image end
      else co_await read_guest(p.gc << cb_, std::span<std::byte>(dst, cs_));
      std::memcpy(dst + p.a, p.src, p.b - p.a);
    }
    co_await file_->write(host, buf.span());
  }
  co_await meta_.acquire();
  const AsyncSemaphore::Permit lock(meta_);
  for (std::uint64_t j = 0; j < n; ++j) {
    const std::uint64_t idx = allocs[j].gc & index_mask;
    const std::uint64_t old = t->e[idx * stride_];
    t->e[idx * stride_] = (host + j * cs_) | kOflagCopied;
    if (ext_l2_) t->e[idx * 2 + 1] = 0xffffffffu;
    release_entry(old);
  }
  t->touch();
}

Task<void> Qcow2Node::co_write_zeroes(std::uint64_t offset, std::uint64_t length, unsigned flags) {
  const bool v3 = h_.version >= 3;
  if (!v3 && has_backing_) {
    // qcow2 v2 has no zero clusters: over a backing file zeroes must be written.
    co_await Node::co_write_zeroes(offset, length, flags);
    co_return;
  }
  const std::uint64_t end = offset + length;
  std::uint64_t cstart = (offset + cs_ - 1) & ~(cs_ - 1);
  std::uint64_t cend = end == size_ ? ((end + cs_ - 1) & ~(cs_ - 1)) : (end & ~(cs_ - 1));
  if (cstart >= cend) {
    Buffer z = Buffer::zeroed(length);
    co_await co_write(offset, z.span(), 0);
    co_return;
  }
  if (offset < cstart) {
    Buffer z = Buffer::zeroed(cstart - offset);
    co_await co_write(offset, z.span(), 0);
  }
  co_await zero_or_discard(cstart >> cb_, (cend - cstart) >> cb_, false, flags);
  if (cend < end) {
    Buffer z = Buffer::zeroed(end - cend);
    co_await co_write(cend, z.span(), 0);
  }
}

Task<void> Qcow2Node::co_discard(std::uint64_t offset, std::uint64_t length, unsigned) {
  const std::uint64_t end = offset + length;
  std::uint64_t cstart = (offset + cs_ - 1) & ~(cs_ - 1);
  std::uint64_t cend = end == size_ ? ((end + cs_ - 1) & ~(cs_ - 1)) : (end & ~(cs_ - 1));
  if (cstart < cend) co_await zero_or_discard(cstart >> cb_, (cend - cstart) >> cb_, true, 0);
}

Task<void> Qcow2Node::zero_or_discard(std::uint64_t first, std::uint64_t count, bool discard, unsigned flags) {
  const bool v3 = h_.version >= 3;
  const std::uint64_t per_table = std::uint64_t{1} << l2_bits_;
  const std::uint64_t index_mask = per_table - 1;
  while (count) {
    const std::uint64_t n = std::min(count, per_table - (first & index_mask));
    const std::uint64_t l1i = first >> l2_bits_;
    auto held = co_await cluster_locks_.acquire(first, first + n, true);
    const RangeLocks::Guard range(cluster_locks_, held);
    const bool table_present = (l1_[l1i] & kOffsetMask) != 0;
    // Without a table the clusters are unallocated: zero already without a backing file.
    if (table_present || (has_backing_ && (!discard || v3))) {
      auto t = co_await l2_for_write(l1i);
      Pin pin(t);
      co_await meta_.acquire();
      const AsyncSemaphore::Permit lock(meta_);
      for (std::uint64_t gc = first; gc < first + n; ++gc) {
        const std::uint64_t idx = gc & index_mask;
        const std::uint64_t old = t->e[idx * stride_];
        if (ext_l2_) {
          const std::uint64_t bm = has_backing_ ? 0xffffffff00000000ull : 0;
          if (old == 0 && t->e[idx * 2 + 1] == bm) continue;
          t->e[idx * 2] = 0;
          t->e[idx * 2 + 1] = bm;
          release_entry(old);
          t->touch();
          continue;
        }
        std::uint64_t repl;
        bool keep = false;
        if (discard) {
          repl = (v3 && has_backing_) ? kOflagZero : 0;
        } else if (!v3) {
          repl = 0;  // only reached without a backing file
        } else if (!(flags & kZeroMayUnmap) && !(old & kOflagCompressed) && (old & kOflagCopied) &&
                   (old & kOffsetMask)) {
          repl = (old & kOffsetMask) | kOflagCopied | kOflagZero;  // stays allocated, reads as zeroes
          keep = true;
        } else {
          repl = (has_backing_ || !(flags & kZeroMayUnmap)) ? kOflagZero : 0;
          if (!has_backing_ && old == 0) repl = 0;
        }
        if (repl == old) continue;
        t->e[idx] = repl;
        if (!keep) release_entry(old);
        t->touch();
      }
    }
    first += n;
    count -= n;
  }
}

Task<void> Qcow2Node::co_flush() {
  {
    co_await meta_.acquire();
    const AsyncSemaphore::Permit lock(meta_);
    co_await flush_metadata_locked();
  }
  co_await file_->flush();
}

// ---- refcounts and allocation (meta_ held) ----

Task<std::shared_ptr<RefBlock>> Qcow2Node::get_refblock(std::uint64_t bi, bool create) {
  if (auto it = refblocks_.find(bi); it != refblocks_.end()) {
    it->second->last_use = ++use_clock_;
    co_return it->second;
  }
  if (bi < reftable_.size()) {
    const std::uint64_t off = reftable_[bi] & kRefTableOffsetMask;
    if (off) {
      if (off % cs_) throw Error(EIO, name() + ": refcount block offset " + hex(off) + " unaligned");
      if (off >= file_->size() || cs_ > file_->size() - off)
        throw Error(EIO, name() + ": refcount block at " + hex(off) + " lies beyond the end of the image file");
      if (refblocks_.size() >= refblock_cache_max_) {
        // Only clean blocks are dropped here; dirty ones wait for the next metadata flush.
        auto victim = refblocks_.end();
        for (auto it = refblocks_.begin(); it != refblocks_.end(); ++it)
          if (!it->second->dirty && (victim == refblocks_.end() || it->second->last_use < victim->second->last_use))
            victim = it;
        if (victim != refblocks_.end()) refblocks_.erase(victim);
      }
      auto rb = std::make_shared<RefBlock>();
      rb->offset = off;
      rb->data.resize(cs_);
      Buffer b(cs_);
      co_await file_->read(off, b.span());
      if (auto it = refblocks_.find(bi); it != refblocks_.end()) co_return it->second;
      std::memcpy(rb->data.data(), b.data(), cs_);
      rb->last_use = ++use_clock_;
      refblocks_[bi] = rb;
      co_return rb;
    }
  }
  if (!create) co_return nullptr;
  if (bi >= reftable_.size()) {
    // Growing may already have created block `bi` (the new table's own refcounts).
    co_await grow_reftable(bi + 1);
    co_return co_await get_refblock(bi, create);
  }
  // A new block at the end of the image; it counts itself (or lands in another block).
  const std::uint64_t c = bump(1);
  auto rb = std::make_shared<RefBlock>();
  rb->offset = c << cb_;
  rb->data.assign(cs_, std::byte{0});
  rb->dirty = true;
  rb->last_use = ++use_clock_;
  refblocks_[bi] = rb;
  reftable_[bi] = rb->offset;
  reftable_dirty_ = true;
  co_await update_refcount(c, +1);
  co_return rb;
}

Task<std::uint64_t> Qcow2Node::refcount(std::uint64_t cluster) {
  auto rb = co_await get_refblock(cluster >> refblock_bits_, false);
  if (!rb) co_return 0;
  co_return get_refcount_entry(rb->data.data(), cluster & ((std::uint64_t{1} << refblock_bits_) - 1),
                               h_.refcount_order);
}

Task<std::uint64_t> Qcow2Node::update_refcount(std::uint64_t cluster, std::int64_t delta) {
  auto rb = co_await get_refblock(cluster >> refblock_bits_, delta > 0);
  if (!rb) throw Error(EIO, name() + ": refcount of cluster " + std::to_string(cluster) + " would drop below 0");
  const std::uint64_t idx = cluster & ((std::uint64_t{1} << refblock_bits_) - 1);
  const std::uint64_t v = get_refcount_entry(rb->data.data(), idx, h_.refcount_order);
  const unsigned bits = 1u << h_.refcount_order;
  const std::uint64_t max = bits == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << bits) - 1;
  std::uint64_t nv;
  if (delta >= 0) {
    if (static_cast<std::uint64_t>(delta) > max - v)
      throw Error(EOVERFLOW, name() + ": refcount of cluster " + std::to_string(cluster) + " would exceed " +
                                 std::to_string(max) + " (refcount_bits=" + std::to_string(bits) + ")");
    nv = v + static_cast<std::uint64_t>(delta);
  } else {
    const std::uint64_t d = static_cast<std::uint64_t>(-delta);
    if (d > v)
      throw Error(EIO, name() + ": refcount of cluster " + std::to_string(cluster) +
                           " would drop below 0 (the image is corrupt; run check -r all)");
    nv = v - d;
  }
  set_refcount_entry(rb->data.data(), idx, h_.refcount_order, nv);
  rb->dirty = true;
  co_return nv;
}

std::uint64_t Qcow2Node::bump(std::uint64_t n) {
  const std::uint64_t c = next_free_;
  if ((c + n) > (kMaxHostOffset >> cb_)) throw Error(ENOSPC, name() + ": the image file would exceed 2^56 bytes");
  next_free_ += n;
  return c;
}

Task<std::uint64_t> Qcow2Node::allocate_clusters(std::uint64_t n) {
  if (caps_.read_only) throw Error(EPERM, name() + ": the image is read-only");
  if (n == 1 && !free_.empty()) {
    const std::uint64_t c = *free_.begin();
    free_.erase(free_.begin());
    co_await update_refcount(c, +1);
    co_return c << cb_;
  }
  // Bump allocation at the end, stepping over clusters that still have a refcount.
  std::uint64_t start;
  while (true) {
    start = next_free_;
    bool ok = true;
    for (std::uint64_t i = 0; i < n; ++i) {
      if (co_await refcount(start + i) != 0) {
        next_free_ = start + i + 1;
        ok = false;
        break;
      }
    }
    if (ok) break;
  }
  bump(n);
  for (std::uint64_t i = 0; i < n; ++i) co_await update_refcount(start + i, +1);
  co_return start << cb_;
}

Task<std::uint64_t> Qcow2Node::allocate_compressed(std::uint64_t bytes) {
  std::uint64_t host;
  if (comp_cluster_ && comp_used_ + bytes <= cs_) {
    host = comp_cluster_ + comp_used_;
    comp_used_ += bytes;
    co_await update_refcount(comp_cluster_ >> cb_, +1);
  } else {
    host = co_await allocate_clusters(1);
    comp_cluster_ = host;
    comp_used_ = bytes;
  }
  if (comp_used_ >= cs_) comp_cluster_ = 0;
  co_return host;
}

Task<void> Qcow2Node::grow_reftable(std::uint64_t min_entries) {
  const std::uint64_t entries = std::max<std::uint64_t>(min_entries + 1, reftable_.size() * 2);
  const std::uint64_t clusters = (entries * 8 + cs_ - 1) / cs_;
  if (clusters * cs_ > kMaxRefTableBytes)
    throw Error(ENOSPC, name() + ": the refcount table would exceed " + std::to_string(kMaxRefTableBytes) + " bytes");
  // The old table is released once the header points at the new one (flush_metadata).
  for (std::uint64_t i = 0; i < reftable_clusters_; ++i) pending_free_.push_back((reftable_offset_ >> cb_) + i);
  const std::uint64_t c = bump(clusters);
  reftable_.resize(clusters * cs_ / 8, 0);
  reftable_offset_ = c << cb_;
  reftable_clusters_ = clusters;
  reftable_dirty_ = true;
  reftable_moved_ = true;
  for (std::uint64_t i = 0; i < clusters; ++i) co_await update_refcount(c + i, +1);
}

Task<void> Qcow2Node::drop_backing_reference() {
  if (caps_.read_only) throw Error(EPERM, name() + ": the image is read-only");
  co_await co_flush();  // every cluster the image now holds is durable first
  Buffer head(cs_);
  co_await file_->read(0, head.span());
  std::byte* p = head.data();
  // The header extensions are kept as they are, but for the backing format.
  const std::uint64_t start = h_.header_length;
  std::vector<std::byte> kept;
  for (std::uint64_t pos = start; pos + 8 <= cs_;) {
    const std::uint32_t type = load_be32(p + pos);
    const std::uint64_t padded = (std::uint64_t{load_be32(p + pos + 4)} + 7) & ~std::uint64_t{7};
    if (type == kExtEnd) break;
    if (pos + 8 + padded > cs_) throw Error(EIO, name() + ": header extension beyond the header cluster");
    if (type != kExtBackingFormat) kept.insert(kept.end(), p + pos, p + pos + 8 + padded);
    pos += 8 + padded;
  }
  std::memset(p + start, 0, cs_ - start);
  std::memcpy(p + start, kept.data(), kept.size());  // the zeroes after it are the end marker
  store_be64(p + 8, 0);   // backing_file_offset
  store_be32(p + 16, 0);  // backing_file_size
  co_await write_header_field(0, head.span());
  h_.backing_file.clear();
  h_.backing_format.clear();
  h_.backing_file_offset = 0;
  h_.backing_file_size = 0;
}

Task<void> Qcow2Node::write_header_field(std::uint64_t offset, std::span<const std::byte> bytes) {
  co_await file_->flush();
  co_await file_->write(offset, bytes);
  co_await file_->flush();
}

Task<bool> Qcow2Node::write_refblocks_locked() {
  bool wrote = false;
  std::vector<std::shared_ptr<RefBlock>> dirty;
  for (auto& [bi, rb] : refblocks_)
    if (rb->dirty) dirty.push_back(rb);
  std::sort(dirty.begin(), dirty.end(), [](const auto& x, const auto& y) { return x->offset < y->offset; });
  for (auto& rb : dirty) {
    Buffer b(cs_);
    std::memcpy(b.data(), rb->data.data(), cs_);
    rb->dirty = false;
    co_await file_->write(rb->offset, b.span());
    wrote = true;
  }
  co_return wrote;
}

Buffer Qcow2Node::encode_l2(const L2Table& t) const {
  Buffer b(cs_);
  for (std::size_t i = 0; i < t.e.size(); ++i) store_be64(b.data() + 8 * i, t.e[i]);
  return b;
}

Task<void> Qcow2Node::checkpoint() {
  co_await checkpointing_.acquire();
  const AsyncSemaphore::Permit one(checkpointing_);
  struct Copy {
    std::shared_ptr<L2Table> table;
    Buffer bytes;
    std::uint64_t version;
  };
  std::vector<Copy> copies;
  bool ordinary = false;
  {
    co_await meta_.acquire();
    const AsyncSemaphore::Permit lock(meta_);
    if (l1_dirty_ || reftable_dirty_ || !pending_free_.empty()) {
      co_await flush_metadata_locked();
      ordinary = true;
    } else {
      // Entries are set only after their data is written, and refcounts before that: the
      // tables as they are now point at nothing the sync below leaves out.
      co_await write_refblocks_locked();
      for (auto& [off, t] : l2_cache_)
        if (t->dirty()) copies.push_back({t, encode_l2(*t), t->version});
    }
  }
  co_await file_->flush();
  if (ordinary || copies.empty()) co_return;
  std::sort(copies.begin(), copies.end(), [](const Copy& x, const Copy& y) { return x.table->offset < y.table->offset; });
  co_await meta_.acquire();
  const AsyncSemaphore::Permit lock(meta_);
  for (Copy& c : copies) {
    L2Table& t = *c.table;
    // Written meanwhile by a flush (as new or newer), or dropped from the image: left alone.
    const auto it = l2_cache_.find(t.offset);
    if (it == l2_cache_.end() || it->second != c.table || t.saved >= c.version) continue;
    t.saved = c.version;
    co_await file_->write(t.offset, c.bytes.span());
  }
}

Task<void> Qcow2Node::flush_metadata_locked() {
  // 1. Refcount blocks, then the table that points at them (and the header if it moved).
  bool wrote = co_await write_refblocks_locked();
  if (reftable_dirty_) {
    if (wrote) co_await file_->flush();
    Buffer b = Buffer::zeroed(reftable_clusters_ * cs_);
    for (std::size_t i = 0; i < reftable_.size(); ++i) store_be64(b.data() + 8 * i, reftable_[i]);
    reftable_dirty_ = false;
    co_await file_->write(reftable_offset_, b.span());
    if (reftable_moved_) {
      std::byte field[12];
      store_be64(field, reftable_offset_);
      store_be32(field + 8, static_cast<std::uint32_t>(reftable_clusters_));
      reftable_moved_ = false;
      co_await write_header_field(48, field);
    }
  }

  // 2. L2 tables, then the L1 table: after the data and refcounts they point at are durable.
  std::vector<std::shared_ptr<L2Table>> dirty_l2;
  for (auto& [off, t] : l2_cache_)
    if (t->dirty()) dirty_l2.push_back(t);
  if (!dirty_l2.empty() || l1_dirty_) {
    co_await file_->flush();
    std::sort(dirty_l2.begin(), dirty_l2.end(), [](const auto& x, const auto& y) { return x->offset < y->offset; });
    for (auto& t : dirty_l2) {
      Buffer b = encode_l2(*t);
      t->saved = t->version;
      co_await file_->write(t->offset, b.span());
    }
    if (l1_dirty_) {
      if (!dirty_l2.empty()) co_await file_->flush();
      Buffer b(l1_.size() * 8);
      for (std::size_t i = 0; i < l1_.size(); ++i) store_be64(b.data() + 8 * i, l1_[i]);
      l1_dirty_ = false;
      co_await file_->write(h_.l1_table_offset, b.span());
    }
  }

  // 3. Clusters no longer referenced on disk: release them.
  if (!pending_free_.empty()) {
    co_await file_->flush();
    std::vector<std::uint64_t> frees;
    frees.swap(pending_free_);
    for (std::uint64_t c : frees) {
      if (co_await update_refcount(c, -1) == 0) {
        free_.insert(c);
        if (comp_cluster_ && (comp_cluster_ >> cb_) == c) comp_cluster_ = 0;
      }
    }
    co_await write_refblocks_locked();
  }
}

namespace {

Task<std::unique_ptr<Node>> open_qcow2(const OpenContext& ctx, spec::Options& o, std::unique_ptr<Node> file,
                                       bool) {
  const std::uint64_t fsz = file->size();
  const std::string name = file->display_name();
  std::uint64_t n = std::min<std::uint64_t>(fsz, 4096);
  Buffer head(std::max<std::uint64_t>(n, 1));
  if (n) co_await file->read(0, head.span().first(n));
  if (n >= 24 && load_be32(head.data()) == kMagic) {
    std::uint32_t cbits = load_be32(head.data() + 20);
    if (cbits >= kMinClusterBits && cbits <= kMaxClusterBits && (std::uint64_t{1} << cbits) > n && fsz > n) {
      n = std::min<std::uint64_t>(fsz, std::uint64_t{1} << cbits);
      head = Buffer(n);
      co_await file->read(0, head.span());
    }
  }
  Header h = parse_header(head.span().first(n), fsz, name);
  auto node = std::make_unique<Qcow2Node>(ctx, std::move(file), std::move(h));
  co_await node->init(ctx, o);
  co_return node;
}

int probe_qcow2(std::span<const std::byte> head) {
  return head.size() >= 4 && load_be32(head.data()) == kMagic ? 100 : 0;
}

}  // namespace

Task<void> create_qcow2(const OpenContext& ctx, const CreateRequest& req);
Task<MeasureResult> measure_qcow2(spec::Options& o, Node* source, std::uint64_t size);

namespace {
const DriverRegistration kQcow2{FormatDriver{
    .name = "qcow2",
    .probe = probe_qcow2,
    .open = open_qcow2,
    .create = create_qcow2,
    .measure = measure_qcow2,
    .file_permissions = {},  // QEMU's storage rule
}};
}  // namespace

}  // namespace netblk::qcow2
