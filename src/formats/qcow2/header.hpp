// The qcow2 header and its extensions (QEMU's docs/interop/qcow2.txt), parsed from and
// written to bytes. Pure functions: no I/O, so they are unit-tested and fuzzed directly.
#pragma once
#include "core/endian.hpp"
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace netblk::qcow2 {

inline constexpr std::uint32_t kMagic = 0x514649fb;  // "QFI\xfb"
inline constexpr std::uint32_t kMinClusterBits = 9;
inline constexpr std::uint32_t kMaxClusterBits = 21;
// QEMU's sanity limits for tables read from an untrusted image.
inline constexpr std::uint64_t kMaxL1Bytes = 32u << 20;
inline constexpr std::uint64_t kMaxRefTableBytes = 8u << 20;
inline constexpr std::uint32_t kMaxSnapshots = 65536;
inline constexpr std::uint32_t kMaxSnapshotExtraData = 1024;
inline constexpr std::uint32_t kMaxBackingNameLength = 1023;

inline constexpr std::uint64_t div_up(std::uint64_t a, std::uint64_t b) { return (a + b - 1) / b; }
inline constexpr std::uint64_t round_up(std::uint64_t a, std::uint64_t b) { return div_up(a, b) * b; }

// Feature bits.
inline constexpr std::uint64_t kIncompatDirty = 1u << 0;
inline constexpr std::uint64_t kIncompatCorrupt = 1u << 1;
inline constexpr std::uint64_t kIncompatDataFile = 1u << 2;
inline constexpr std::uint64_t kIncompatCompression = 1u << 3;
inline constexpr std::uint64_t kIncompatExtendedL2 = 1u << 4;
inline constexpr std::uint64_t kIncompatKnown =
    kIncompatDirty | kIncompatCorrupt | kIncompatDataFile | kIncompatCompression | kIncompatExtendedL2;
inline constexpr std::uint64_t kCompatLazyRefcounts = 1u << 0;
inline constexpr std::uint64_t kAutoclearBitmaps = 1u << 0;
inline constexpr std::uint64_t kAutoclearRawData = 1u << 1;

// Header extension types.
inline constexpr std::uint32_t kExtEnd = 0;
inline constexpr std::uint32_t kExtBackingFormat = 0xe2792aca;
inline constexpr std::uint32_t kExtFeatureTable = 0x6803f857;
inline constexpr std::uint32_t kExtCrypto = 0x0537be77;
inline constexpr std::uint32_t kExtBitmaps = 0x23852875;
inline constexpr std::uint32_t kExtDataFile = 0x44415441;

// L1/L2 entry bits.
inline constexpr std::uint64_t kOflagCopied = 1ull << 63;
inline constexpr std::uint64_t kOflagCompressed = 1ull << 62;
inline constexpr std::uint64_t kOflagZero = 1ull << 0;
inline constexpr std::uint64_t kOffsetMask = 0x00fffffffffffe00ull;    // L1, L2 (standard)
inline constexpr std::uint64_t kRefTableOffsetMask = 0xfffffffffffffe00ull;

inline constexpr int kCompressionZlib = 0;
inline constexpr int kCompressionZstd = 1;

struct FeatureName {
  std::uint8_t type = 0;  // 0 incompatible, 1 compatible, 2 autoclear
  std::uint8_t bit = 0;
  std::string name;
};

struct Header {
  std::uint32_t version = 3;
  std::uint64_t backing_file_offset = 0;
  std::uint32_t backing_file_size = 0;
  std::uint32_t cluster_bits = 16;
  std::uint64_t size = 0;
  std::uint32_t crypt_method = 0;
  std::uint32_t l1_size = 0;
  std::uint64_t l1_table_offset = 0;
  std::uint64_t refcount_table_offset = 0;
  std::uint32_t refcount_table_clusters = 0;
  std::uint32_t nb_snapshots = 0;
  std::uint64_t snapshots_offset = 0;
  std::uint64_t incompatible = 0;
  std::uint64_t compatible = 0;
  std::uint64_t autoclear = 0;
  std::uint32_t refcount_order = 4;
  std::uint32_t header_length = 112;
  std::uint8_t compression_type = kCompressionZlib;

  // From the extensions and the backing file name field.
  std::string backing_file;
  std::string backing_format;
  std::vector<FeatureName> features;
  bool has_crypto_ext = false;
  bool has_data_file_ext = false;
  bool has_bitmaps_ext = false;
  std::uint64_t bitmaps_directory_offset = 0;
  std::uint64_t bitmaps_directory_size = 0;
  std::uint32_t nb_bitmaps = 0;

  std::uint64_t cluster_size() const { return std::uint64_t{1} << cluster_bits; }
  bool extended_l2() const { return (incompatible & kIncompatExtendedL2) != 0; }
};

// Parses and validates the header from the first bytes of the image (at least the first
// cluster, or the whole file when it is smaller). `file_size` bounds every table offset.
// `name` prefixes error messages. Throws Error (EINVAL for malformed, ENOTSUP for features
// netblk does not implement; the message names the feature as QEMU does).
Header parse_header(std::span<const std::byte> head, std::uint64_t file_size, const std::string& name);

// The cluster-0 bytes of a new image: header fields, backing-format extension, feature
// name table (v3), end marker and backing file name. `h.backing_file_offset/size` are
// filled in. Throws Error when it does not fit one cluster.
std::vector<std::byte> build_header(Header& h);

// The feature names QEMU writes into its feature name table.
std::vector<FeatureName> standard_feature_names();

// The options that open a stored backing file name with its stored format: the format is
// the "driver", unless a json: name names its own driver (QEMU lets that one stand).
std::string backing_driver(const std::string& backing_file, const std::string& backing_format);


// Refcount entries of `1 << order` bits in a refcount block, as QEMU lays them out (sub-byte
// widths little-endian within a byte, wider ones big-endian).
std::uint64_t get_refcount_entry(const std::byte* block, std::uint64_t index, std::uint32_t order);
void set_refcount_entry(std::byte* block, std::uint64_t index, std::uint32_t order, std::uint64_t value);

// Compressed cluster descriptor fields for a cluster size of 2^cluster_bits.
struct CompressedDescriptor {
  std::uint64_t offset;  // host byte offset of the compressed data
  std::uint64_t sectors; // number of 512-byte sectors the data may span (from offset's sector)
};
CompressedDescriptor decode_compressed(std::uint64_t l2_entry, std::uint32_t cluster_bits);
std::uint64_t encode_compressed(std::uint64_t offset, std::uint64_t sectors, std::uint32_t cluster_bits);

}  // namespace netblk::qcow2
