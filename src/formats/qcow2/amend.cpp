// qemu-img amend -o for qcow2 (QEMU's qcow2_amend_options): compat (upgrade to 1.1, or
// downgrade to 0.10 with zero clusters expanded first), lazy_refcounts, size, backing_file,
// backing_fmt. refcount_bits only as it is (QEMU rewrites the refcounts; netblk does not).
#include <cstdio>

#include "formats/qcow2/qcow2.hpp"
#include "netblk/buffer.hpp"
#include "spec/options.hpp"

namespace netblk::qcow2 {

namespace {
constexpr const char* kUseCompat11 = " (use compat=1.1 or greater)";
}  // namespace

Task<void> Qcow2Node::amend(const Json& options) {
  if (caps_.read_only) throw Error(EPERM, name() + ": the image is read-only");
  for (const auto& key : {"cluster_size", "preallocation", "encryption", "extended_l2", "compression_type",
                          "data_file", "data_file_raw", "nocow", "encrypt"})
    if (options.contains(key))
      throw Error(EINVAL, std::string("Invalid parameter '") + key + "': this option is only supported for image creation");
  spec::Options o(options, spec::Options::Kind::create, "qcow2");
  const std::optional<std::string> compat = o.str("compat");
  const std::optional<bool> lazy = o.boolean("lazy_refcounts");
  const std::optional<std::uint64_t> new_size = o.size("size");
  const std::optional<std::string> backing = o.str("backing_file");
  const std::optional<std::string> backing_fmt = o.str("backing_fmt");
  const std::optional<std::uint64_t> refcount_bits = o.uint("refcount_bits");
  o.finish();

  std::uint32_t version = h_.version;
  if (compat) {
    if (*compat == "0.10" || *compat == "v2") version = 2;
    else if (*compat == "1.1" || *compat == "v3") version = 3;
    else throw Error(EINVAL, "Unknown compatibility level " + *compat);
  }
  const bool lazy_on = lazy.value_or((h_.compatible & kCompatLazyRefcounts) != 0);
  if (lazy_on && version < 3)
    throw Error(EINVAL, std::string("Lazy refcounts only supported with compatibility level 1.1 and above") + kUseCompat11);
  const std::uint64_t bits = refcount_bits.value_or(std::uint64_t{1} << h_.refcount_order);
  if (bits != 16 && version < 3)
    throw Error(EINVAL, std::string("Refcount widths other than 16 bits require compatibility level 1.1 or above") + kUseCompat11);
  if (bits != (std::uint64_t{1} << h_.refcount_order))
    throw Error(ENOTSUP, name() + ": changing the refcount width is not supported by netblk");
  if (version < 3 && h_.version >= 3 && h_.nb_snapshots)
    throw Error(ENOTSUP, name() + ": downgrading a qcow2 image with internal snapshots is not supported by netblk");
  if (version < 3 && h_.version >= 3) {
    const std::uint64_t incompatible = h_.incompatible & ~kIncompatDirty;
    char hex[24];
    std::snprintf(hex, sizeof hex, "%llx", static_cast<unsigned long long>(incompatible));
    if (incompatible)
      throw Error(ENOTSUP, name() + ": Cannot downgrade an image with incompatible features 0x" + hex + " set");
  }

  if (new_size && *new_size != size_) co_await co_truncate(*new_size);
  if (backing || backing_fmt) {
    const std::string name_now = backing.value_or(h_.backing_file);
    const std::string format_now = backing_fmt.value_or(h_.backing_format);
    co_await set_backing_file(name_now, format_now);
  }

  co_await meta_.acquire();
  const AsyncSemaphore::Permit lock(meta_);
  // A downgrade: v2 has no zero clusters; they become data clusters of zeroes (or, without
  // a backing file, unallocated ones) before the header says v2.
  if (version < 3 && h_.version >= 3) co_await expand_zero_clusters_locked();
  Header h = h_;
  h.version = version;
  if (version < 3) {
    h.compatible = 0;
    h.autoclear = 0;
    h.incompatible = 0;
  } else if (lazy_on) {
    h.compatible |= kCompatLazyRefcounts;
  } else {
    h.compatible &= ~kCompatLazyRefcounts;
  }
  co_await rewrite_header_locked(h);
}

Task<void> Qcow2Node::expand_zero_clusters_locked() {
  const std::uint64_t per_table = std::uint64_t{1} << l2_bits_;
  for (std::uint64_t l1i = 0; l1i < l1_.size(); ++l1i) {
    const std::uint64_t off = l1_[l1i] & kOffsetMask;
    if (!off) continue;
    auto t = co_await load_l2_locked(off);
    if (t->pins) throw Error(EBUSY, name() + ": the image is in use");
    ++t->pins;  // kept in the cache while clusters are allocated
    for (std::uint64_t idx = 0; idx < per_table; ++idx) {
      const std::uint64_t e = t->e[idx];
      if (!(e & kOflagZero) || (e & kOflagCompressed)) continue;
      std::uint64_t host = e & kOffsetMask;
      if (!host && !has_backing_) {
        t->e[idx] = 0;  // unallocated reads as zeroes without a backing file
      } else {
        if (!host) host = co_await allocate_clusters(1);
        Buffer zero = Buffer::zeroed(cs_);
        co_await file_->write(host, zero.span());
        t->e[idx] = host | kOflagCopied;
      }
      t->touch();
    }
    --t->pins;
  }
  co_await flush_metadata_locked();
}

}  // namespace netblk::qcow2
