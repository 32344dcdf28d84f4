// Remembers the last block-status answer for a whole-image walk (convert, compare).
// Asking once for "the rest of the image" and reusing the extent matters: a file
// system answers SEEK_HOLE by scanning to the next hole, and NBD/curl answers cost a
// round trip, so one query per chunk would make a full copy quadratic or chatty.
// A miss while a query is in flight waits for that answer first: the workers of a copy
// start together, and the first answer usually covers them all (on Gluster, whose seeks
// go one at a time, 8 queries at the start held the first read back by 16 round trips).
#pragma once
#include <optional>

#include "netblk/node.hpp"
#include "netblk/runtime.hpp"

namespace netblk::cli {

class StatusCache {
 public:
  explicit StatusCache(Node& node) : node_(node) {}

  // The status at `offset`, at most `max_length` long.
  Task<ChainStatus> at(std::uint64_t offset, std::uint64_t max_length) {
    if (!answered_) answered_.emplace(co_await asio::this_coro::executor);
    if (!covers(offset) && asking_ > 0) co_await answered_->wait();
    if (!covers(offset)) {
      const Asking asking(*this);
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
  bool covers(std::uint64_t offset) const { return offset >= start_ && offset < end_; }

  // One query in flight; when it ends, answered or not, the waiters look again.
  struct Asking {
    explicit Asking(StatusCache& c) : cache(c) { ++cache.asking_; }
    ~Asking() {
      --cache.asking_;
      cache.answered_->notify_all();
    }
    StatusCache& cache;
  };

  Node& node_;
  std::uint64_t start_ = 0, end_ = 0;
  ChainStatus cached_;
  unsigned asking_ = 0;                       // queries in flight
  std::optional<AsyncCondition> answered_;   // a query finished (made on the first call)
};

}  // namespace netblk::cli
