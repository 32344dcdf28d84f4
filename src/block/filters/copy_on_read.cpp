// QEMU's copy-on-read filter: what a read fetches from below the top image is written into
// the top image, so the chain is pulled in as it is used. Copies are done in whole clusters
// of the top image; a read that overlaps a copy in flight waits for it and then reads
// the top image, so each range is fetched once.
#include <algorithm>
#include <cstring>
#include <vector>

#include "block/filter.hpp"
#include "block/locking.hpp"
#include "netblk/buffer.hpp"

namespace netblk {
namespace {

class CopyOnReadNode final : public FilterNode {
 public:
  CopyOnReadNode(const OpenContext& ctx, std::unique_ptr<Node> top)
      : FilterNode(ctx, std::move(top)),
        granularity_(std::max<std::uint64_t>(file_->image_info().cluster_size, 4096)) {}

  std::string_view driver() const override { return "copy-on-read"; }

 protected:
  Task<void> co_read(std::uint64_t offset, std::span<std::byte> buf) override {
    // Without a backing chain or without write access there is nothing to copy.
    if (!file_->has_backing() || file_->read_only() || caps_.read_only) {
      co_await file_->read(offset, buf);
      co_return;
    }
    while (!buf.empty()) {
      BlockStatus s = co_await file_->block_status(offset, buf.size());
      std::uint64_t n = std::min<std::uint64_t>(s.length, buf.size());
      if (s.flags & kStatusAllocated) {
        co_await file_->read(offset, buf.first(n));
      } else {
        n = co_await copy_up(offset, buf.first(n));
      }
      offset += n;
      buf = buf.subspan(n);
    }
  }

  // Reads must pass through co_read to be copied up: no shortcut into a file.
  Task<FileRead> co_read_to_file(std::uint64_t, std::uint64_t, int, std::uint64_t, std::uint64_t) override {
    co_return FileRead::unsupported;
  }

  // Guest writes and copies of the same range are serialised, so a copy never puts older
  // data from below over a guest write.
  Task<void> co_write(std::uint64_t offset, std::span<const std::byte> buf, unsigned flags) override {
    auto held = co_await busy_.acquire(offset, offset + buf.size(), false);
    const RangeLocks::Guard busy(busy_, held);
    co_await file_->write(offset, buf, flags);
  }
  Task<void> co_write_zeroes(std::uint64_t offset, std::uint64_t length, unsigned flags) override {
    auto held = co_await busy_.acquire(offset, offset + length, false);
    const RangeLocks::Guard busy(busy_, held);
    co_await file_->write_zeroes(offset, length, flags);
  }
  Task<void> co_discard(std::uint64_t offset, std::uint64_t length, unsigned flags) override {
    auto held = co_await busy_.acquire(offset, offset + length, false);
    const RangeLocks::Guard busy(busy_, held);
    co_await file_->discard(offset, length, flags);
  }

 private:
  // Reads [offset, offset + buf.size()) which the top image did not allocate, copying the
  // covering whole clusters into it. Returns how many bytes of `buf` were filled.
  Task<std::uint64_t> copy_up(std::uint64_t offset, std::span<std::byte> buf) {
    const std::uint64_t start = offset / granularity_ * granularity_;
    const std::uint64_t end = std::min(size_, (offset + buf.size() + granularity_ - 1) / granularity_ * granularity_);
    bool waited = false;
    auto held = co_await busy_.acquire(start, end, true, &waited);
    const RangeLocks::Guard busy(busy_, held);
    if (waited) {
      // Someone else copied or wrote meanwhile: the range may be allocated now.
      BlockStatus s = co_await file_->block_status(offset, buf.size());
      if (s.flags & kStatusAllocated) {
        std::uint64_t n = std::min<std::uint64_t>(s.length, buf.size());
        co_await file_->read(offset, buf.first(n));
        co_return n;
      }
    }
    Buffer bounce(end - start);
    co_await file_->read(start, bounce.span());
    // Only what the top image still lacks is written.
    for (std::uint64_t pos = start; pos < end;) {
      BlockStatus s = co_await file_->block_status(pos, end - pos);
      std::span<const std::byte> piece(bounce.data() + (pos - start), s.length);
      if (!(s.flags & kStatusAllocated)) {
        if (is_zero(piece)) co_await file_->write_zeroes(pos, s.length, 0);
        else co_await file_->write(pos, piece, 0);
      }
      pos += s.length;
    }
    std::memcpy(buf.data(), bounce.data() + (offset - start), buf.size());
    co_return buf.size();
  }

  std::uint64_t granularity_;
  // Copies hold their clusters exclusive, guest writes shared: a copy waits for every
  // overlapping request, a guest write only for overlapping copies.
  RangeLocks busy_;
};

Task<std::unique_ptr<Node>> open_copy_on_read(const OpenContext& ctx, spec::Options&, std::unique_ptr<Node> file) {
  co_return std::make_unique<CopyOnReadNode>(ctx, std::move(file));
}

const DriverRegistration kCopyOnRead{FilterDriver{
    .name = "copy-on-read",
    .open = open_copy_on_read,
    .file_permissions = [](Permissions parent, bool, const Json&) { return locking::copy_on_read_child(parent); },
}};

}  // namespace
}  // namespace netblk
