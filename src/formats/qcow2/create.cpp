// qemu-img create -f qcow2 with QEMU's -o options and messages.
#include <bit>
#include <cstring>

#include "block/open.hpp"
#include "core/text.hpp"
#include "formats/qcow2/header.hpp"
#include "netblk/buffer.hpp"

namespace netblk::qcow2 {
namespace {

constexpr const char* kUseVersion3 = " (use version=v3 or greater)";

}  // namespace

Task<void> create_qcow2(const OpenContext& ctx, const CreateRequest& req) {
  auto& o = *req.options;
  const std::string& fname = req.filename;
  std::optional<std::uint64_t> size = req.size;
  if (auto s = o.size("size")) size = s;
  const std::string backing = o.str("backing_file", "");
  const std::string backing_fmt = o.str("backing_fmt", "");
  const std::uint64_t cluster_size = o.size("cluster_size", 65536);
  const std::string compat = o.str("compat", "1.1");
  const bool lazy = o.boolean("lazy_refcounts", false);
  const std::string ctype = o.str("compression_type", "zlib");
  const std::string prealloc = o.str("preallocation", "off");
  const std::uint64_t refcount_bits = o.uint("refcount_bits", 16, UINT64_MAX);
  const bool ext_l2 = o.boolean("extended_l2", false);
  const bool encrypted = o.boolean("encryption", false);
  const auto encrypt_format = o.str("encrypt.format");
  if (o.has("encrypt")) o.ignore("encrypt");
  const auto data_file = o.str("data_file");
  o.boolean("data_file_raw");
  o.boolean("nocow");
  o.finish();

  auto fail = [&](const std::string& why) -> Error { return Error(EINVAL, fname + ": " + why); };
  if (encrypted || encrypt_format || o.has("encrypt"))
    throw Error(ENOTSUP, fname + ": encrypted qcow2 images are not supported by netblk");
  if (data_file) throw Error(ENOTSUP, fname + ": qcow2 images with an external data file are not supported by netblk");
  int version;
  if (compat == "0.10" || compat == "v2") version = 2;
  else if (compat == "1.1" || compat == "v3") version = 3;
  else throw fail("Parameter 'version' does not accept value '" + compat + "'");
  if (cluster_size < 512 || cluster_size > (2u << 20) || !std::has_single_bit(cluster_size))
    throw fail("Cluster size must be a power of two between 512 and 2048k");
  if (lazy && version < 3) throw fail(std::string("Lazy refcounts only supported with compatibility level 1.1 and above") + kUseVersion3);
  if (refcount_bits > 64 || !std::has_single_bit(refcount_bits))
    throw fail("Refcount width must be a power of two and may not exceed 64 bits");
  if (version < 3 && refcount_bits != 16)
    throw fail(std::string("Different refcount widths than 16 bits require compatibility level 1.1 or above") + kUseVersion3);
  int compression;
  if (ctype == "zlib") compression = kCompressionZlib;
  else if (ctype == "zstd") compression = kCompressionZstd;
  else throw fail("Parameter 'compression-type' does not accept value '" + ctype + "'");
  if (compression != kCompressionZlib && version < 3)
    throw fail(std::string("Non-zlib compression type is only supported with compatibility level 1.1 and above") + kUseVersion3);
  if (ext_l2 && version < 3)
    throw fail(std::string("Extended L2 entries are only supported with compatibility level 1.1 and above") + kUseVersion3);
  if (ext_l2 && cluster_size < 16384)
    throw fail("Extended L2 entries are only supported with cluster sizes of at least 16384 bytes");
  if (prealloc != "off" && prealloc != "metadata" && prealloc != "falloc" && prealloc != "full")
    throw fail("Parameter 'preallocation' does not accept value '" + prealloc + "'");
  if (prealloc != "off" && !backing.empty() && !ext_l2)
    throw fail("Backing file and preallocation can only be used at the same time if extended_l2 is on");
  if (!backing_fmt.empty() && backing.empty()) throw fail("Backing format cannot be used without backing file");
  if (!backing.empty() && backing_fmt.empty()) throw fail("Backing file specified without backing format");

  if (!size) {
    if (backing.empty()) throw fail("Image creation needs a size parameter");
    // The size comes from the backing file, resolved as the new image will resolve it.
    OpenContext bctx = ctx;
    bctx.read_only = true;
    bctx.base_dir = filename_prefix(fname).empty() ? directory_of(fname) : std::string();
    Json bopts = Json::object();
    if (auto d = backing_driver(backing, backing_fmt); !d.empty()) bopts["driver"] = d;
    std::unique_ptr<Node> b;
    try {
      b = co_await open_node(bctx, bopts, backing);
    } catch (const Error& e) {
      throw Error(e.code(), fname + ": Could not open backing image: " + e.what());
    }
    size = b->size();
    co_await b->close();
  }
  const std::uint64_t vsize = (*size + 511) / 512 * 512;

  // Layout: header, refcount table, refcount blocks, L1 table, [L2 tables, data].
  const std::uint32_t cb = static_cast<std::uint32_t>(std::countr_zero(cluster_size));
  const std::uint64_t cs = cluster_size;
  const std::uint64_t l2_entries = cs / (ext_l2 ? 16 : 8);
  const std::uint64_t clusters = div_up(vsize, cs);
  const std::uint64_t l1_size = div_up(clusters, l2_entries);
  if (l1_size * 8 > kMaxL1Bytes)
    throw fail("The image size is too large for file format 'qcow2' (try using a larger cluster size)");
  // An empty image has no L1 table (as QEMU's): a cluster for one would be a leak to check.
  const std::uint64_t l1_clusters = div_up(l1_size * 8, cs);
  const bool prealloc_meta = prealloc != "off";
  const std::uint64_t l2_clusters = prealloc_meta ? l1_size : 0;
  const std::uint64_t data_clusters = prealloc_meta ? clusters : 0;
  const std::uint64_t refblock_entries = cs * 8 / refcount_bits;
  std::uint64_t rt = 1, rb = 1, total;
  while (true) {
    total = 1 + rt + rb + l1_clusters + l2_clusters + data_clusters;
    std::uint64_t need_rb = div_up(total, refblock_entries);
    std::uint64_t need_rt = div_up(need_rb * 8, cs);
    if (need_rb <= rb && need_rt <= rt) break;
    rb = std::max(rb, need_rb);
    rt = std::max(rt, need_rt);
  }
  if (rt * cs > kMaxRefTableBytes)
    throw fail("The image size is too large for file format 'qcow2' (try using a larger cluster size)");
  const std::uint64_t rt_start = 1, rb_start = rt_start + rt, l1_start = rb_start + rb;
  const std::uint64_t l2_start = l1_start + l1_clusters, data_start = l2_start + l2_clusters;

  Header h;
  h.version = static_cast<std::uint32_t>(version);
  h.cluster_bits = cb;
  h.size = vsize;
  h.l1_size = static_cast<std::uint32_t>(l1_size);
  h.l1_table_offset = l1_size ? l1_start * cs : 0;
  h.refcount_table_offset = rt_start * cs;
  h.refcount_table_clusters = static_cast<std::uint32_t>(rt);
  h.refcount_order = static_cast<std::uint32_t>(std::countr_zero(refcount_bits));
  h.compression_type = static_cast<std::uint8_t>(compression);
  if (compression != kCompressionZlib) h.incompatible |= kIncompatCompression;
  if (ext_l2) h.incompatible |= kIncompatExtendedL2;
  if (lazy) h.compatible |= kCompatLazyRefcounts;
  h.backing_file = backing;
  h.backing_format = backing_fmt;
  std::vector<std::byte> head = build_header(h);

  auto file = co_await create_protocol_file(ctx, fname, prealloc_meta ? total * cs : 0);
  co_await file->write(0, std::span<const std::byte>(head));
  {
    Buffer t = Buffer::zeroed(rt * cs);
    for (std::uint64_t i = 0; i < rb; ++i) store_be64(t.data() + 8 * i, (rb_start + i) * cs);
    co_await file->write(rt_start * cs, t.span());
  }
  for (std::uint64_t i = 0; i < rb; ++i) {
    Buffer b = Buffer::zeroed(cs);
    for (std::uint64_t c = i * refblock_entries; c < std::min(total, (i + 1) * refblock_entries); ++c)
      set_refcount_entry(b.data(), c - i * refblock_entries, h.refcount_order, 1);
    co_await file->write((rb_start + i) * cs, b.span());
  }
  if (l1_clusters) {
    Buffer l1 = Buffer::zeroed(l1_clusters * cs);
    if (prealloc_meta)
      for (std::uint64_t i = 0; i < l1_size; ++i) store_be64(l1.data() + 8 * i, ((l2_start + i) * cs) | kOflagCopied);
    co_await file->write(l1_start * cs, l1.span());
  }
  for (std::uint64_t i = 0; i < l2_clusters; ++i) {
    Buffer l2 = Buffer::zeroed(cs);
    for (std::uint64_t j = 0; j < l2_entries; ++j) {
      std::uint64_t g = i * l2_entries + j;
      if (g >= clusters) break;
      if (ext_l2) {
        store_be64(l2.data() + 16 * j, ((data_start + g) * cs) | kOflagCopied);
        // With a backing file the clusters stay unallocated until written (reads go below).
        store_be64(l2.data() + 16 * j + 8, backing.empty() ? 0xffffffffu : 0);
      } else {
        store_be64(l2.data() + 8 * j, ((data_start + g) * cs) | kOflagCopied);
      }
    }
    co_await file->write((l2_start + i) * cs, l2.span());
  }
  if (prealloc == "falloc" || prealloc == "full") co_await file->write_zeroes(data_start * cs, data_clusters * cs, 0);
  co_await file->close();
}

}  // namespace netblk::qcow2
