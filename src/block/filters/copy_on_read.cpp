// QEMU's copy-on-read filter: what a read fetches from below the top image is written into
// the top image, so the chain is pulled in as it is used. Copies are done in whole clusters
// of the top image; a read that overlaps a copy in flight waits for it and then reads
// the top image, so each range is fetched once.
#include <algorithm>
#include <cstring>
#include <vector>

#include "block/driver.hpp"
#include "netblk/buffer.hpp"

namespace netblk {
namespace {

class CopyOnReadNode final : public Node {
 public:
  CopyOnReadNode(const OpenContext& ctx, std::unique_ptr<Node> top)
      : Node(ctx.executor), busy_changed_(ctx.executor) {
    size_ = top->size();
    limits_ = top->limits();
    caps_ = top->caps();
    if (ctx.read_only) caps_.read_only = true;
    granularity_ = std::max<std::uint64_t>(top->cluster_size(), 4096);
    file_ = std::move(top);
  }

  std::string_view driver() const override { return "copy-on-read"; }
  Json options() const override { return Json{{"driver", "copy-on-read"}, {"file", file_->options()}}; }
  std::int64_t allocated_bytes() const override { return file_->allocated_bytes(); }
  std::uint64_t cluster_size() const override { return file_->cluster_size(); }
  bool has_zero_init() const override { return file_->has_zero_init(); }

 protected:
  Task<void> co_read(std::uint64_t offset, std::span<std::byte> buf) override {
    // Without a backing chain or without write access there is nothing to copy.
    if (!file_->backing() || file_->read_only() || caps_.read_only) {
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

  // Guest writes and copies of the same range are serialised, so a copy never puts older
  // data from below over a guest write.
  Task<void> co_write(std::uint64_t offset, std::span<const std::byte> buf, unsigned flags) override {
    Busy busy = co_await enter(offset, offset + buf.size(), false);
    co_await file_->write(offset, buf, flags);
  }
  Task<void> co_write_zeroes(std::uint64_t offset, std::uint64_t length, unsigned flags) override {
    Busy busy = co_await enter(offset, offset + length, false);
    co_await file_->write_zeroes(offset, length, flags);
  }
  Task<void> co_discard(std::uint64_t offset, std::uint64_t length, unsigned flags) override {
    Busy busy = co_await enter(offset, offset + length, false);
    co_await file_->discard(offset, length, flags);
  }
  Task<void> co_flush() override { co_await file_->flush(); }
  Task<BlockStatus> co_block_status(std::uint64_t offset, std::uint64_t length) override {
    ChainStatus c = co_await chain_block_status(*file_, offset, length);
    BlockStatus s = c.status;
    s.flags |= kStatusAllocated;
    if (c.depth) s.host_offset = BlockStatus::kNoOffset;
    co_return s;
  }

 private:
  struct Range {
    std::uint64_t a, b;
    bool copy;
    std::uint64_t id;
  };
  // Marks a range busy (a copy, or a guest write) until destroyed.
  class Busy {
   public:
    Busy(CopyOnReadNode* n, std::uint64_t id) : n_(n), id_(id) {}
    Busy(Busy&& o) noexcept : n_(std::exchange(o.n_, nullptr)), id_(o.id_) {}
    Busy& operator=(Busy&&) = delete;
    ~Busy() {
      if (!n_) return;
      auto& v = n_->busy_;
      v.erase(std::find_if(v.begin(), v.end(), [&](const Range& r) { return r.id == id_; }));
      n_->busy_changed_.notify_all();
    }

   private:
    CopyOnReadNode* n_;
    std::uint64_t id_;
  };

  // A copy waits for every overlapping request; a guest write only for overlapping copies.
  Task<Busy> enter(std::uint64_t a, std::uint64_t b, bool copy, bool* waited = nullptr) {
    auto blocked = [&] {
      return std::any_of(busy_.begin(), busy_.end(),
                         [&](const Range& r) { return r.a < b && a < r.b && (copy || r.copy); });
    };
    while (blocked()) {
      if (waited) *waited = true;
      co_await busy_changed_.wait();
    }
    const std::uint64_t id = ++next_id_;
    busy_.push_back(Range{a, b, copy, id});
    co_return Busy(this, id);
  }

  // Reads [offset, offset + buf.size()) which the top image did not allocate, copying the
  // covering whole clusters into it. Returns how many bytes of `buf` were filled.
  Task<std::uint64_t> copy_up(std::uint64_t offset, std::span<std::byte> buf) {
    const std::uint64_t start = offset / granularity_ * granularity_;
    const std::uint64_t end = std::min(size_, (offset + buf.size() + granularity_ - 1) / granularity_ * granularity_);
    bool waited = false;
    Busy busy = co_await enter(start, end, true, &waited);
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
  std::vector<Range> busy_;
  std::uint64_t next_id_ = 0;
  AsyncCondition busy_changed_;
};

Task<std::unique_ptr<Node>> open_copy_on_read(const OpenContext& ctx, spec::Options&, std::unique_ptr<Node> file,
                                              bool) {
  co_return std::make_unique<CopyOnReadNode>(ctx, std::move(file));
}

const DriverRegistration kCopyOnRead{FormatDriver{
    .name = "copy-on-read",
    .probe = nullptr,
    .open = open_copy_on_read,
    .create = nullptr,
}};

}  // namespace
}  // namespace netblk
