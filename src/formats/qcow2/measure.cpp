// qemu-img measure -O qcow2: QEMU's qcow2_measure() and its size formulas, so that the
// numbers are QEMU's to the byte.
#include <bit>

#include "block/driver.hpp"
#include "formats/qcow2/header.hpp"

namespace netblk::qcow2 {
namespace {

// QEMU's qcow2_refcount_metadata_size(): refcount blocks and table clusters counting
// `clusters` and themselves, found as a fixed point.
std::uint64_t refcount_metadata_size(std::uint64_t clusters, std::uint64_t cs, unsigned refcount_order) {
  const std::uint64_t blocks_per_table_cluster = cs / 8;
  const std::uint64_t refcounts_per_block = cs * 8 / (std::uint64_t{1} << refcount_order);
  std::uint64_t table = 0, blocks = 0, n = 0, last;
  do {
    last = n;
    blocks = div_up(clusters + table + blocks, refcounts_per_block);
    table = div_up(blocks, blocks_per_table_cluster);
    n = clusters + blocks + table;
  } while (n != last);
  return (blocks + table) * cs;
}

// QEMU's qcow2_calc_prealloc_size(): a fully allocated image of `total` bytes.
std::uint64_t fully_allocated_size(std::uint64_t total, std::uint64_t cs, unsigned refcount_order, bool ext_l2) {
  const std::uint64_t aligned = round_up(total, cs);
  const std::uint64_t l2e = ext_l2 ? 16 : 8;
  std::uint64_t meta = cs;  // header
  const std::uint64_t nl2e = round_up(aligned / cs, cs / l2e);
  meta += nl2e * l2e;
  const std::uint64_t nl1e = round_up(nl2e * l2e / cs, cs / 8);
  meta += nl1e * 8;
  meta += refcount_metadata_size((meta + aligned) / cs, cs, refcount_order);
  return meta + aligned;
}

}  // namespace

Task<MeasureResult> measure_qcow2(spec::Options& o, Node* source, std::uint64_t size) {
  // Every creation option is accepted; these change the numbers.
  const bool ext_l2 = o.boolean("extended_l2", false);
  const std::uint64_t cs = o.size("cluster_size", 64u << 10);
  const std::string compat = o.str("compat", "1.1");
  const std::uint64_t refcount_bits = o.uint("refcount_bits", 16, UINT64_MAX);
  const std::string prealloc = o.str("preallocation", "off");
  const bool has_backing = o.str("backing_file").has_value();
  if (auto s = o.size("size")) size = *s;
  for (const char* key : {"backing_fmt", "lazy_refcounts", "compression_type", "encryption", "encrypt", "data_file",
                          "data_file_raw", "nocow"})
    o.ignore(key);
  o.finish();
  if (cs < 512 || cs > (2u << 20) || !std::has_single_bit(cs))
    throw Error(EINVAL, "Cluster size must be a power of two between 512 and 2048k");
  int version;
  if (compat == "0.10" || compat == "v2") version = 2;
  else if (compat == "1.1" || compat == "v3") version = 3;
  else throw Error(EINVAL, "Invalid parameter '" + compat + "'");
  if (refcount_bits > 64 || !std::has_single_bit(refcount_bits))
    throw Error(EINVAL, "Refcount width must be a power of two and may not exceed 64 bits");
  if (prealloc != "off" && prealloc != "metadata" && prealloc != "falloc" && prealloc != "full")
    throw Error(EINVAL, "Parameter 'preallocation' does not accept value '" + prealloc + "'");
  const unsigned refcount_order = static_cast<unsigned>(std::countr_zero(refcount_bits));

  std::uint64_t virtual_size = round_up(size, cs);
  if (div_up(virtual_size / cs, cs / (ext_l2 ? 16 : 8)) * 8 > kMaxL1Bytes)
    throw Error(EFBIG, "The image size is too large (try using a larger cluster size)");
  std::uint64_t required = 0;  // data bytes
  if (source) {
    const std::uint64_t ssize = source->size();
    virtual_size = round_up(ssize, cs);
    if (has_backing) {
      // The new image's backing file may share nothing with the source: count it all.
      required = virtual_size;
    } else {
      for (std::uint64_t offset = 0; offset < ssize;) {
        const ChainStatus s = co_await chain_block_status(*source, offset, ssize - offset);
        std::uint64_t n = s.status.length;
        if (!(s.status.flags & kStatusZero) && s.present && (s.status.flags & kStatusData)) {
          // As QEMU: the rest of the cluster counts, and the next extent starts after it.
          n = round_up(offset + n, cs) - offset;
          required += offset % cs + n;
        }
        offset += n;
      }
    }
  }
  if (prealloc == "full" || prealloc == "falloc") required = virtual_size;

  MeasureResult r;
  r.fully_allocated = fully_allocated_size(virtual_size, cs, refcount_order, ext_l2);
  r.required = r.fully_allocated - virtual_size + required;
  // Bitmaps only when both the source and the new image could have them (a qcow2 v3 source:
  // netblk keeps no bitmaps, so their size is 0).
  if (version >= 3 && source && source->driver() == "qcow2" &&
      source->image_info().format_specific.value("compat", "") == "1.1")
    r.bitmaps = 0;
  co_return r;
}

}  // namespace netblk::qcow2
