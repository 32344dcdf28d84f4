// Remembers the last block-status answer for a whole-image walk (convert, compare).
// Asking once for "the rest of the image" and reusing the extent matters: a file
// system answers SEEK_HOLE by scanning to the next hole, and NBD/curl answers cost a
// round trip, so one query per chunk would make a full copy quadratic or chatty.
#pragma once
#include "netblk/node.hpp"

namespace netblk::cli {

class StatusCache {
 public:
  explicit StatusCache(Node& node) : node_(node) {}

  // The status at `offset`, at most `max_length` long.
  Task<ChainStatus> at(std::uint64_t offset, std::uint64_t max_length) {
    if (!(offset >= start_ && offset < end_)) {
      ChainStatus fresh = co_await chain_block_status(node_, offset, node_.size() - offset);
      start_ = offset;
      end_ = offset + fresh.status.length;
      cached_ = fresh;
    }
    ChainStatus c = cached_;
    if (c.status.host_offset != BlockStatus::kNoOffset) c.status.host_offset += offset - start_;
    c.status.length = std::min(end_ - offset, max_length);
    co_return c;
  }

 private:
  Node& node_;
  std::uint64_t start_ = 0, end_ = 0;
  ChainStatus cached_;
};

}  // namespace netblk::cli
