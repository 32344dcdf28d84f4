// The pass-through base of filter nodes (copy-on-read, readahead, ...): one child, file(),
// that every request goes to unchanged. A filter overrides only what it changes.
//
// It takes the child's size, limits and capabilities; `info`, `check` and has_zero_init
// answer for the child; block status looks through the child's backing chain (a range
// the child leaves to its backing file is still this node's to read), so a filter on top
// of an overlay keeps the chain's answers. File spans are not offered: a filter may act
// on reads.
#pragma once
#include <memory>

#include "block/driver.hpp"

namespace netblk {

class FilterNode : public Node {
 public:
  FilterNode(const OpenContext& ctx, std::unique_ptr<Node> child);

  bool is_filter() const override { return true; }
  Json options() const override;  // {"driver": driver(), "file": child's options}
  ImageInfo image_info() const override { return file_->image_info(); }
  bool has_zero_init() const override { return file_->has_zero_init(); }
  bool supports_check() const override { return file_->supports_check(); }
  Task<CheckResult> check(unsigned fix) override;

 protected:
  Task<void> co_read(std::uint64_t offset, std::span<std::byte> buf) override;
  Task<FileRead> co_read_to_file(std::uint64_t offset, std::uint64_t length, int fd, std::uint64_t fd_offset,
                                 std::uint64_t zero_block) override;
  Task<void> co_write(std::uint64_t offset, std::span<const std::byte> buf, unsigned flags) override;
  Task<void> co_write_zeroes(std::uint64_t offset, std::uint64_t length, unsigned flags) override;
  Task<void> co_discard(std::uint64_t offset, std::uint64_t length, unsigned flags) override;
  Task<void> co_flush() override;
  Task<BlockStatus> co_block_status(std::uint64_t offset, std::uint64_t length) override;
};

}  // namespace netblk
