#include "formats/qcow2/header.hpp"

#include <cstring>

#include "core/text.hpp"
#include "netblk/error.hpp"
#include "spec/tree.hpp"

namespace netblk::qcow2 {
namespace {

// The names of incompatible bits set in `bits`, from the image's own feature table first
// (as QEMU reports them), then ours; unknown bits as "Unknown incompatible feature: 0x..".
std::string incompatible_names(const Header& h, std::uint64_t bits) {
  std::string out;
  auto add = [&](const std::string& s) { out += (out.empty() ? "" : ", ") + s; };
  for (int bit = 0; bit < 64; ++bit) {
    if (!(bits & (1ull << bit))) continue;
    std::string name;
    for (const auto& f : h.features)
      if (f.type == 0 && f.bit == bit) name = f.name;
    if (name.empty())
      for (const auto& f : standard_feature_names())
        if (f.type == 0 && f.bit == bit) name = f.name;
    add(name.empty() ? "Unknown incompatible feature: " + hex(1ull << bit) : name);
  }
  return out;
}

void check_table(const std::string& name, const char* what, std::uint64_t offset, std::uint64_t bytes,
                 std::uint64_t cluster_size, std::uint64_t file_size) {
  if (offset % cluster_size)
    throw Error(EINVAL, name + ": Invalid " + what + " offset " + hex(offset) + " (not cluster aligned)");
  if (offset > file_size || bytes > file_size - offset)
    throw Error(EINVAL, name + ": " + what + " at " + hex(offset) + " (" + std::to_string(bytes) +
                            " bytes) lies beyond the end of the image file (" + std::to_string(file_size) + " bytes)");
}

}  // namespace

std::string backing_driver(const std::string& backing_file, const std::string& backing_format) {
  if (backing_format.empty()) return {};
  if (spec::is_json_name(backing_file)) {
    try {
      Json tree = spec::parse_json_name(backing_file);
      if (tree.contains("driver")) return {};
    } catch (const Error&) {
      // A malformed name fails again, with its own message, when it is opened.
    }
  }
  return backing_format;
}

std::vector<FeatureName> standard_feature_names() {
  return {
      {0, 0, "dirty bit"},          {0, 1, "corrupt bit"},      {0, 2, "external data file"},
      {0, 3, "compression type"},   {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"},
      {2, 0, "bitmaps"},            {2, 1, "raw external data"},
  };
}

Header parse_header(std::span<const std::byte> head, std::uint64_t file_size, const std::string& name) {
  if (head.size() < 72 || load_be32(head.data()) != kMagic)
    throw Error(EINVAL, name + ": Image is not in qcow2 format");
  const std::byte* p = head.data();
  Header h;
  h.version = load_be32(p + 4);
  if (h.version != 2 && h.version != 3)
    throw Error(ENOTSUP, name + ": Unsupported qcow2 version " + std::to_string(h.version));
  h.backing_file_offset = load_be64(p + 8);
  h.backing_file_size = load_be32(p + 16);
  h.cluster_bits = load_be32(p + 20);
  h.size = load_be64(p + 24);
  h.crypt_method = load_be32(p + 32);
  h.l1_size = load_be32(p + 36);
  h.l1_table_offset = load_be64(p + 40);
  h.refcount_table_offset = load_be64(p + 48);
  h.refcount_table_clusters = load_be32(p + 56);
  h.nb_snapshots = load_be32(p + 60);
  h.snapshots_offset = load_be64(p + 64);
  if (h.cluster_bits < kMinClusterBits || h.cluster_bits > kMaxClusterBits)
    throw Error(EINVAL, name + ": Unsupported cluster size: 2^" + std::to_string(h.cluster_bits));
  const std::uint64_t cs = h.cluster_size();
  if (h.version == 2) {
    h.incompatible = h.compatible = h.autoclear = 0;
    h.refcount_order = 4;
    h.header_length = 72;
  } else {
    if (head.size() < 104) throw Error(EINVAL, name + ": qcow2 header is truncated");
    h.incompatible = load_be64(p + 72);
    h.compatible = load_be64(p + 80);
    h.autoclear = load_be64(p + 88);
    h.refcount_order = load_be32(p + 96);
    h.header_length = load_be32(p + 100);
    if (h.header_length < 104) throw Error(EINVAL, name + ": qcow2 header too short");
    if (h.header_length > cs) throw Error(EINVAL, name + ": qcow2 header exceeds cluster size");
    if (h.header_length > head.size()) throw Error(EINVAL, name + ": qcow2 header is truncated");
    if (h.header_length > 104) h.compression_type = static_cast<std::uint8_t>(p[104]);
  }
  if (h.refcount_order > 6)
    throw Error(EINVAL, name + ": Reference count entry width too large; may not exceed 64 bits");

  // Extensions: from the end of the header to the backing file name (or the cluster end).
  std::uint64_t ext_end = std::min<std::uint64_t>(head.size(), cs);
  if (h.backing_file_offset) {
    if (h.backing_file_offset > cs) throw Error(EINVAL, name + ": Invalid backing file offset");
    ext_end = std::min<std::uint64_t>(ext_end, h.backing_file_offset);
  }
  std::uint64_t pos = h.header_length;
  while (pos + 8 <= ext_end) {
    std::uint32_t type = load_be32(p + pos);
    std::uint32_t len = load_be32(p + pos + 4);
    pos += 8;
    if (type == kExtEnd) break;
    if (len > ext_end - pos) throw Error(EINVAL, name + ": Invalid qcow2 header extension (length " +
                                                     std::to_string(len) + " beyond the header area)");
    const std::byte* d = p + pos;
    switch (type) {
      case kExtBackingFormat:
        if (len > 1023) throw Error(EINVAL, name + ": backing format name too long");
        h.backing_format.assign(reinterpret_cast<const char*>(d), len);
        h.backing_format.resize(std::strlen(h.backing_format.c_str()));
        break;
      case kExtFeatureTable:
        for (std::uint32_t i = 0; i + 48 <= len; i += 48) {
          FeatureName f;
          f.type = static_cast<std::uint8_t>(d[i]);
          f.bit = static_cast<std::uint8_t>(d[i + 1]);
          const char* s = reinterpret_cast<const char*>(d + i + 2);
          f.name.assign(s, strnlen(s, 46));
          h.features.push_back(std::move(f));
        }
        break;
      case kExtCrypto: h.has_crypto_ext = true; break;
      case kExtDataFile: h.has_data_file_ext = true; break;
      case kExtBitmaps:
        if (len >= 24) {
          h.has_bitmaps_ext = true;
          h.nb_bitmaps = load_be32(d);
          h.bitmaps_directory_size = load_be64(d + 8);
          h.bitmaps_directory_offset = load_be64(d + 16);
        }
        break;
      default: break;  // unknown extensions are optional by definition
    }
    pos += (static_cast<std::uint64_t>(len) + 7) & ~std::uint64_t{7};
  }

  if (h.backing_file_offset) {
    if (h.backing_file_size > kMaxBackingNameLength || h.backing_file_size > cs - h.backing_file_offset)
      throw Error(EINVAL, name + ": Backing file name too long");
    if (h.backing_file_offset + h.backing_file_size > head.size())
      throw Error(EINVAL, name + ": backing file name lies beyond the end of the image file");
    h.backing_file.assign(reinterpret_cast<const char*>(p + h.backing_file_offset), h.backing_file_size);
  }

  // Features we must understand to read the image correctly.
  if (std::uint64_t unknown = h.incompatible & ~kIncompatKnown)
    throw Error(ENOTSUP, name + ": Unsupported qcow2 feature(s): " + incompatible_names(h, unknown));
  if (h.crypt_method != 0 || h.has_crypto_ext)
    throw Error(ENOTSUP, name + ": encrypted qcow2 images are not supported by netblk (crypt method " +
                             std::to_string(h.crypt_method) + ")");
  if ((h.incompatible & kIncompatDataFile) || h.has_data_file_ext)
    throw Error(ENOTSUP, name + ": Unsupported qcow2 feature(s): " + incompatible_names(h, kIncompatDataFile) +
                             " (netblk does not support qcow2 images with an external data file)");
  if (h.compression_type > kCompressionZstd)
    throw Error(ENOTSUP, name + ": Unknown compression type " + std::to_string(h.compression_type));
  if (h.compression_type != kCompressionZlib && !(h.incompatible & kIncompatCompression))
    throw Error(EINVAL, name + ": compression_type field is set, but the compression type bit is not");
  if (h.extended_l2() && h.cluster_bits < 14)
    throw Error(EINVAL, name + ": Extended L2 entries are only supported with cluster sizes of at least 16384 bytes");

  // Tables, bounded by the file and QEMU's limits before anything is allocated for them.
  if (std::uint64_t{h.l1_size} * 8 > kMaxL1Bytes) throw Error(EFBIG, name + ": Active L1 table too large");
  const std::uint64_t entry_bytes = h.extended_l2() ? 16 : 8;
  const std::uint64_t l2_bits = h.cluster_bits - (entry_bytes == 16 ? 4 : 3);
  if (h.size > (std::uint64_t{1} << 62)) throw Error(EFBIG, name + ": Image is too big");
  std::uint64_t clusters = (h.size + cs - 1) >> h.cluster_bits;
  std::uint64_t l1_needed = (clusters + (std::uint64_t{1} << l2_bits) - 1) >> l2_bits;
  if (l1_needed > h.l1_size) throw Error(EINVAL, name + ": L1 table is too small");
  if (h.l1_size) check_table(name, "L1 table", h.l1_table_offset, std::uint64_t{h.l1_size} * 8, cs, file_size);
  if (std::uint64_t{h.refcount_table_clusters} * cs > kMaxRefTableBytes)
    throw Error(EFBIG, name + ": Reference count table too large");
  if (h.refcount_table_clusters == 0) throw Error(EINVAL, name + ": Image does not contain a reference count table");
  check_table(name, "reference count table", h.refcount_table_offset,
              std::uint64_t{h.refcount_table_clusters} * cs, cs, file_size);
  if (h.nb_snapshots > kMaxSnapshots) throw Error(EFBIG, name + ": Too many snapshots");
  if (h.nb_snapshots && h.snapshots_offset % cs) throw Error(EINVAL, name + ": Invalid snapshot table offset");
  return h;
}

std::vector<std::byte> build_header(Header& h) {
  const std::uint64_t cs = h.cluster_size();
  std::vector<std::byte> out(cs, std::byte{0});
  std::byte* p = out.data();
  const bool v3 = h.version >= 3;
  h.header_length = v3 ? 112 : 72;
  std::uint64_t pos = h.header_length;
  auto add_ext = [&](std::uint32_t type, const void* data, std::uint32_t len) {
    std::uint64_t padded = (static_cast<std::uint64_t>(len) + 7) & ~std::uint64_t{7};
    if (pos + 8 + padded + (type == kExtEnd ? 0 : 8) > cs) throw Error(EINVAL, "qcow2 header extensions do not fit in one cluster");
    store_be32(p + pos, type);
    store_be32(p + pos + 4, len);
    if (len) std::memcpy(p + pos + 8, data, len);
    pos += 8 + padded;
  };
  if (!h.backing_format.empty())
    add_ext(kExtBackingFormat, h.backing_format.data(), static_cast<std::uint32_t>(h.backing_format.size()));
  if (v3) {
    auto names = standard_feature_names();
    std::vector<std::byte> table(names.size() * 48, std::byte{0});
    for (std::size_t i = 0; i < names.size(); ++i) {
      table[i * 48] = static_cast<std::byte>(names[i].type);
      table[i * 48 + 1] = static_cast<std::byte>(names[i].bit);
      std::memcpy(table.data() + i * 48 + 2, names[i].name.data(), names[i].name.size());
    }
    // Optional: left out (as QEMU does) when it would not leave room for the end marker
    // and the backing file name (512-byte clusters).
    if (pos + 8 + table.size() + 8 + h.backing_file.size() <= cs)
      add_ext(kExtFeatureTable, table.data(), static_cast<std::uint32_t>(table.size()));
  }
  add_ext(kExtEnd, nullptr, 0);
  if (!h.backing_file.empty()) {
    if (h.backing_file.size() > kMaxBackingNameLength || pos + h.backing_file.size() > cs)
      throw Error(EINVAL, "Backing file name too long (" + std::to_string(h.backing_file.size()) + " bytes)");
    h.backing_file_offset = pos;
    h.backing_file_size = static_cast<std::uint32_t>(h.backing_file.size());
    std::memcpy(p + pos, h.backing_file.data(), h.backing_file.size());
  } else {
    h.backing_file_offset = 0;
    h.backing_file_size = 0;
  }
  store_be32(p, kMagic);
  store_be32(p + 4, h.version);
  store_be64(p + 8, h.backing_file_offset);
  store_be32(p + 16, h.backing_file_size);
  store_be32(p + 20, h.cluster_bits);
  store_be64(p + 24, h.size);
  store_be32(p + 32, 0);
  store_be32(p + 36, h.l1_size);
  store_be64(p + 40, h.l1_table_offset);
  store_be64(p + 48, h.refcount_table_offset);
  store_be32(p + 56, h.refcount_table_clusters);
  store_be32(p + 60, h.nb_snapshots);
  store_be64(p + 64, h.snapshots_offset);
  if (v3) {
    store_be64(p + 72, h.incompatible);
    store_be64(p + 80, h.compatible);
    store_be64(p + 88, h.autoclear);
    store_be32(p + 96, h.refcount_order);
    store_be32(p + 100, h.header_length);
    p[104] = static_cast<std::byte>(h.compression_type);
  }
  return out;
}

std::uint64_t get_refcount_entry(const std::byte* b, std::uint64_t i, std::uint32_t order) {
  switch (order) {
    case 0: return (static_cast<std::uint8_t>(b[i / 8]) >> (i % 8)) & 0x1;
    case 1: return (static_cast<std::uint8_t>(b[i / 4]) >> (2 * (i % 4))) & 0x3;
    case 2: return (static_cast<std::uint8_t>(b[i / 2]) >> (4 * (i % 2))) & 0xf;
    case 3: return static_cast<std::uint8_t>(b[i]);
    case 4: return load_be16(b + 2 * i);
    case 5: return load_be32(b + 4 * i);
    default: return load_be64(b + 8 * i);
  }
}

void set_refcount_entry(std::byte* b, std::uint64_t i, std::uint32_t order, std::uint64_t v) {
  auto set_bits = [&](std::uint64_t byte, unsigned shift, unsigned mask) {
    auto old = static_cast<unsigned>(static_cast<std::uint8_t>(b[byte]));
    old = (old & ~(mask << shift)) | ((static_cast<unsigned>(v) & mask) << shift);
    b[byte] = static_cast<std::byte>(old);
  };
  switch (order) {
    case 0: set_bits(i / 8, i % 8, 0x1); break;
    case 1: set_bits(i / 4, 2 * (i % 4), 0x3); break;
    case 2: set_bits(i / 2, 4 * (i % 2), 0xf); break;
    case 3: b[i] = static_cast<std::byte>(v); break;
    case 4: store_be16(b + 2 * i, static_cast<std::uint16_t>(v)); break;
    case 5: store_be32(b + 4 * i, static_cast<std::uint32_t>(v)); break;
    default: store_be64(b + 8 * i, v); break;
  }
}

CompressedDescriptor decode_compressed(std::uint64_t e, std::uint32_t cluster_bits) {
  const unsigned shift = 62 - (cluster_bits - 8);
  const std::uint64_t offset_mask = (std::uint64_t{1} << shift) - 1;
  const std::uint64_t size_mask = (std::uint64_t{1} << (cluster_bits - 8)) - 1;
  return {e & offset_mask, ((e >> shift) & size_mask) + 1};
}

std::uint64_t encode_compressed(std::uint64_t offset, std::uint64_t sectors, std::uint32_t cluster_bits) {
  const unsigned shift = 62 - (cluster_bits - 8);
  return kOflagCompressed | ((sectors - 1) << shift) | offset;
}

}  // namespace netblk::qcow2
