#include "block/filter.hpp"

namespace netblk {

FilterNode::FilterNode(const OpenContext& ctx, std::unique_ptr<Node> child) : Node(ctx.executor) {
  size_ = child->size();
  limits_ = child->limits();
  caps_ = child->caps();
  if (ctx.read_only) caps_.read_only = true;
  file_ = std::move(child);
}

Json FilterNode::options() const { return Json{{"driver", std::string(driver())}, {"file", file_->options()}}; }

Task<CheckResult> FilterNode::check(unsigned fix) { co_return co_await file_->check(fix); }

Task<void> FilterNode::co_read(std::uint64_t offset, std::span<std::byte> buf) { co_await file_->read(offset, buf); }

Task<FileRead> FilterNode::co_read_to_file(std::uint64_t offset, std::uint64_t length, int fd, std::uint64_t fd_offset,
                                           std::uint64_t zero_block) {
  co_return co_await file_->read_to_file(offset, length, fd, fd_offset, zero_block);
}

Task<void> FilterNode::co_write(std::uint64_t offset, std::span<const std::byte> buf, unsigned flags) {
  co_await file_->write(offset, buf, flags);
}

Task<void> FilterNode::co_write_zeroes(std::uint64_t offset, std::uint64_t length, unsigned flags) {
  co_await file_->write_zeroes(offset, length, flags);
}

Task<void> FilterNode::co_discard(std::uint64_t offset, std::uint64_t length, unsigned flags) {
  co_await file_->discard(offset, length, flags);
}

Task<void> FilterNode::co_flush() { co_await file_->flush(); }

Task<BlockStatus> FilterNode::co_block_status(std::uint64_t offset, std::uint64_t length) {
  ChainStatus c = co_await chain_block_status(*file_, offset, length);
  BlockStatus s = c.status;
  s.flags |= kStatusAllocated;
  if (c.depth) s.host_offset = BlockStatus::kNoOffset;
  co_return s;
}

}  // namespace netblk
