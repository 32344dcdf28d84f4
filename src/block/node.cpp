// The checked, aligned, split operations every consumer goes through (DESIGN.md: "once, in
// block/"). Drivers see only in-bounds, aligned requests of at most max_transfer bytes.
#include "netblk/node.hpp"

#include <algorithm>
#include <cstring>
#include <utility>

#include "netblk/buffer.hpp"

namespace netblk {
namespace {

// Requests with no driver limit are still cut here, so one huge call cannot pin a huge
// bounce buffer.
constexpr std::uint64_t kDefaultMaxTransfer = 32u << 20;

std::uint64_t chunk_limit(const Limits& l) {
  std::uint64_t m = l.max_transfer ? std::min<std::uint64_t>(l.max_transfer, kDefaultMaxTransfer)
                                   : kDefaultMaxTransfer;
  std::uint64_t a = l.request_alignment ? l.request_alignment : 1;
  m -= m % a;
  return m ? m : a;
}

}  // namespace

Node::~Node() = default;

void Node::set_permissions(Permissions p) {
  if (force_share_) p.shared = kPermAll;
  apply_permissions(p);
}

Task<FileRead> Node::read_to_file(std::uint64_t offset, std::uint64_t length, int fd, std::uint64_t fd_offset,
                                  std::uint64_t zero_block) {
  check_range(offset, length, "read");
  const std::uint64_t align = limits_.request_alignment ? limits_.request_alignment : 1;
  if (offset % align || length % align) co_return FileRead::unsupported;
  co_return co_await co_read_to_file(offset, length, fd, fd_offset, zero_block);
}

Task<FileRead> Node::co_read_to_file(std::uint64_t, std::uint64_t, int, std::uint64_t, std::uint64_t) {
  co_return FileRead::unsupported;
}

ImageInfo Node::image_info() const {
  ImageInfo info;
  if (file_) info.allocated_bytes = file_->image_info().allocated_bytes;
  return info;
}

Task<CheckResult> Node::check(unsigned) {
  throw Error(ENOTSUP, display_name() + ": this image format does not support checks");
  co_return CheckResult{};
}

std::string Node::display_name() const {
  std::string f = plain_filename();
  if (!f.empty()) return f;
  if (file_) return file_->display_name();
  return std::string(driver());
}

void Node::check_range(std::uint64_t offset, std::uint64_t length, const char* op) const {
  if (closed_) throw Error(EIO, display_name() + ": " + op + " after close");
  if (offset > size_ || length > size_ - offset)
    throw Error(EINVAL, display_name() + ": " + op + " of " + std::to_string(length) +
                            " bytes at offset " + std::to_string(offset) + " is beyond the end (" +
                            std::to_string(size_) + " bytes)");
}

Task<void> Node::read(std::uint64_t offset, std::span<std::byte> buf) {
  check_range(offset, buf.size(), "read");
  const std::uint64_t align = limits_.request_alignment ? limits_.request_alignment : 1;
  const std::uint64_t chunk = chunk_limit(limits_);
  if (offset % align == 0 && buf.size() % align == 0) {
    for (std::uint64_t done = 0; done < buf.size();) {
      std::uint64_t n = std::min<std::uint64_t>(chunk, buf.size() - done);
      co_await co_read(offset + done, buf.subspan(done, n));
      done += n;
    }
    co_return;
  }
  // Unaligned: read the covering aligned range into a bounce buffer. The tail may reach
  // past the end only when the size itself is unaligned; then the driver reads a short tail.
  std::uint64_t start = offset - offset % align;
  std::uint64_t end = offset + buf.size();
  std::uint64_t aligned_end = std::min<std::uint64_t>((end + align - 1) / align * align, size_);
  for (std::uint64_t pos = start; pos < end;) {
    std::uint64_t n = std::min<std::uint64_t>(chunk, aligned_end - pos);
    Buffer bounce(n);
    co_await co_read(pos, bounce.span());
    std::uint64_t from = std::max(pos, offset), to = std::min(pos + n, end);
    std::memcpy(buf.data() + (from - offset), bounce.data() + (from - pos), to - from);
    pos += n;
  }
}

Task<void> Node::write_aligned(std::uint64_t offset, std::span<const std::byte> buf, unsigned flags) {
  const std::uint64_t chunk = chunk_limit(limits_);
  unsigned driver_flags = caps_.can_fua ? flags : (flags & ~kWriteFua);
  if (!caps_.can_compress) driver_flags &= ~kWriteCompressed;
  for (std::uint64_t done = 0; done < buf.size();) {
    std::uint64_t n = std::min<std::uint64_t>(chunk, buf.size() - done);
    co_await co_write(offset + done, buf.subspan(done, n), driver_flags);
    done += n;
  }
  if ((flags & kWriteFua) && !caps_.can_fua) co_await co_flush();
}

Task<void> Node::write(std::uint64_t offset, std::span<const std::byte> buf, unsigned flags) {
  const std::uint64_t align = limits_.request_alignment ? limits_.request_alignment : 1;
  if (align == 1) {
    co_await write_unlocked(offset, buf, flags);
    co_return;
  }
  const bool read_modify_write = offset % align != 0 || buf.size() % align != 0;
  const std::uint64_t start = offset - offset % align;
  const std::uint64_t end = (offset + buf.size() + align - 1) / align * align;
  auto held = co_await write_ranges_.acquire(start, end, read_modify_write);
  const RangeLocks::Guard guard(write_ranges_, held);
  co_await write_unlocked(offset, buf, flags);
}

Task<void> Node::write_unlocked(std::uint64_t offset, std::span<const std::byte> buf, unsigned flags) {
  const std::uint64_t align = limits_.request_alignment ? limits_.request_alignment : 1;
  if (caps_.can_grow && !closed_ && !caps_.read_only && offset + buf.size() > size_ &&
      offset + buf.size() >= offset && offset % align == 0 && buf.size() % align == 0) {
    // A growing write: the node's size follows the furthest byte written.
    co_await write_aligned(offset, buf, flags);
    size_ = std::max<std::uint64_t>(size_, offset + buf.size());
    co_return;
  }
  check_range(offset, buf.size(), "write");
  if (caps_.read_only) throw Error(EPERM, display_name() + ": the image is read-only");
  if (offset % align == 0 && buf.size() % align == 0) {
    co_await write_aligned(offset, buf, flags);
    co_return;
  }
  // Read-modify-write of the covering aligned range. Unaligned writes only reach nodes
  // that demand alignment (O_DIRECT files, NBD servers with a minimum block size).
  std::uint64_t start = offset - offset % align;
  std::uint64_t end = std::min<std::uint64_t>((offset + buf.size() + align - 1) / align * align, size_);
  Buffer bounce(end - start);
  co_await read(start, bounce.span());
  std::memcpy(bounce.data() + (offset - start), buf.data(), buf.size());
  co_await write_aligned(start, bounce.span(), flags);
}

Task<void> Node::write_zeroes(std::uint64_t offset, std::uint64_t length, unsigned flags) {
  check_range(offset, length, "write zeroes");
  if (caps_.read_only) throw Error(EPERM, display_name() + ": the image is read-only");
  if (length == 0) co_return;
  const std::uint64_t align = limits_.request_alignment ? limits_.request_alignment : 1;
  // FUA once for the whole request: the parts go without it, one flush follows.
  const bool flush_after = (flags & kWriteFua) && !caps_.can_fua;
  if (flush_after) flags &= ~kWriteFua;
  // Unaligned head and tail go through write(); the aligned middle through the driver.
  std::uint64_t head_end = std::min(offset + length, (offset + align - 1) / align * align);
  std::uint64_t tail_start = std::max(head_end, (offset + length) / align * align);
  if (head_end > offset) {
    Buffer z = Buffer::zeroed(head_end - offset);
    co_await write(offset, z.span(), flags & kWriteFua);
  }
  if (tail_start > head_end) co_await zero_or_discard_aligned(head_end, tail_start - head_end, flags, true);
  if (offset + length > tail_start) {
    Buffer z = Buffer::zeroed(offset + length - tail_start);
    co_await write(tail_start, z.span(), flags & kWriteFua);
  }
  if (flush_after) co_await co_flush();
}

Task<void> Node::discard(std::uint64_t offset, std::uint64_t length, unsigned flags) {
  check_range(offset, length, "discard");
  if (caps_.read_only) throw Error(EPERM, display_name() + ": the image is read-only");
  flags &= kWriteFua;
  const bool flush_after = (flags & kWriteFua) && !caps_.can_fua;
  if (flush_after) flags &= ~kWriteFua;
  const std::uint64_t align = limits_.request_alignment ? limits_.request_alignment : 1;
  // Discard is advisory: shrink to whole aligned blocks and drop the rest.
  std::uint64_t start = (offset + align - 1) / align * align;
  std::uint64_t end = (offset + length) / align * align;
  if (end > start) co_await zero_or_discard_aligned(start, end - start, flags, false);
  if (flush_after) co_await co_flush();
}

Task<void> Node::zero_or_discard_aligned(std::uint64_t offset, std::uint64_t length, unsigned flags, bool zero) {
  const std::uint64_t align = limits_.request_alignment ? limits_.request_alignment : 1;
  std::uint64_t chunk = zero ? limits_.max_zero : limits_.max_discard;
  if (chunk) chunk = std::max<std::uint64_t>(align, chunk - chunk % align);
  else chunk = length;
  for (std::uint64_t done = 0; done < length;) {
    const std::uint64_t n = std::min(chunk, length - done);
    if (align == 1) {
      if (zero) co_await co_write_zeroes(offset + done, n, flags);
      else co_await co_discard(offset + done, n, flags);
    } else {
      auto held = co_await write_ranges_.acquire(offset + done, offset + done + n, false);
      const RangeLocks::Guard guard(write_ranges_, held);
      if (zero) co_await co_write_zeroes(offset + done, n, flags);
      else co_await co_discard(offset + done, n, flags);
    }
    done += n;
  }
}

Task<void> Node::flush() {
  if (closed_) co_return;
  co_await co_flush();
}

Task<void> Node::truncate(std::uint64_t size) {
  if (caps_.read_only) throw Error(EPERM, display_name() + ": the image is read-only");
  co_await co_truncate(size);
}

Task<void> Node::set_backing_file(const std::string&, const std::string&) {
  throw Error(ENOTSUP, display_name() + ": driver '" + std::string(driver()) + "' does not store a backing file");
  co_return;
}

Task<void> Node::make_empty() {
  throw Error(ENOTSUP, display_name() + ": driver '" + std::string(driver()) + "' cannot empty an image");
  co_return;
}

Task<std::vector<Snapshot>> Node::snapshots() { co_return std::vector<Snapshot>{}; }

namespace {

[[noreturn]] void refuse_snapshots(const Node& node) {
  throw Error(ENOTSUP, node.display_name() + ": driver '" + std::string(node.driver()) + "' does not support snapshots");
}

}  // namespace

Task<void> Node::create_snapshot(const std::string&) {
  refuse_snapshots(*this);
  co_return;
}

Task<void> Node::apply_snapshot(const std::string&) {
  refuse_snapshots(*this);
  co_return;
}

Task<void> Node::delete_snapshot(const std::string&) {
  refuse_snapshots(*this);
  co_return;
}

Task<void> Node::amend(const Json&) {
  throw Error(ENOTSUP, "Format driver '" + std::string(driver()) + "' does not support option amendment");
  co_return;
}

Task<BlockStatus> Node::block_status(std::uint64_t offset, std::uint64_t length) {
  check_range(offset, length, "block status");
  if (length == 0) throw Error(EINVAL, display_name() + ": block status of 0 bytes");
  BlockStatus s = co_await co_block_status(offset, length);
  if (s.length == 0) throw Error(EIO, display_name() + ": driver returned an empty block status");
  s.length = std::min(s.length, length);
  co_return s;
}

Task<void> Node::close() {
  if (closed_) co_return;
  std::exception_ptr first;
  try {
    if (!caps_.read_only) co_await co_flush();
  } catch (...) {
    first = std::current_exception();
  }
  try {
    co_await co_close();
  } catch (...) {
    if (!first) first = std::current_exception();
  }
  closed_ = true;
  for (auto* child : {backing_.get(), file_.get()}) {
    if (!child) continue;
    try {
      co_await child->close();
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
}

// Default hooks: what a driver does not implement is emulated or refused here.
Task<void> Node::co_write(std::uint64_t, std::span<const std::byte>, unsigned) {
  throw Error(EPERM, display_name() + ": driver '" + std::string(driver()) + "' does not support writes");
  co_return;
}

Task<void> Node::co_write_zeroes(std::uint64_t offset, std::uint64_t length, unsigned flags) {
  if (flags & kZeroFast) throw Error(ENOTSUP, display_name() + ": no fast zeroing");
  const std::uint64_t chunk = std::min<std::uint64_t>(chunk_limit(limits_), 1u << 20);
  Buffer z = Buffer::zeroed(std::min(chunk, length));
  for (std::uint64_t done = 0; done < length;) {
    std::uint64_t n = std::min<std::uint64_t>(z.size(), length - done);
    co_await co_write(offset + done, z.span().subspan(0, n), flags & kWriteFua);
    done += n;
  }
}

Task<void> Node::co_discard(std::uint64_t, std::uint64_t, unsigned) { co_return; }
Task<void> Node::co_truncate(std::uint64_t) {
  throw Error(ENOTSUP, display_name() + ": Image format driver does not support resize");
  co_return;
}
Task<void> Node::co_flush() { co_return; }
Task<BlockStatus> Node::co_block_status(std::uint64_t, std::uint64_t length) {
  co_return BlockStatus{length, kStatusData | kStatusAllocated};
}
Task<void> Node::co_close() { co_return; }
Task<Node*> Node::open_backing() { co_return backing_.get(); }

Task<ChainStatus> chain_block_status(Node& top, std::uint64_t offset, std::uint64_t length) {
  Node* node = &top;
  ChainStatus result;
  while (true) {
    BlockStatus s = co_await node->block_status(offset, length);
    Node* below = nullptr;
    if (!(s.flags & kStatusAllocated) && node->has_backing()) below = co_await node->open_backing();
    if ((s.flags & kStatusAllocated) || !below) {
      result.status = s;
      result.layer = node;
      if (!(s.flags & kStatusAllocated)) {
        // Nothing in the chain defines it: reads return zeroes.
        result.present = false;
        result.status.flags = kStatusZero;
        result.status.host_offset = BlockStatus::kNoOffset;
      }
      co_return result;
    }
    if (offset >= below->size()) {
      // Past the end of a shorter backing image: zeroes, defined by nobody.
      result.status = BlockStatus{s.length, kStatusZero};
      result.layer = node;
      result.present = false;
      co_return result;
    }
    length = std::min(s.length, below->size() - offset);
    node = below;
    ++result.depth;
  }
}

}  // namespace netblk
