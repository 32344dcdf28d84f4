// Byte (or cluster) ranges held by requests in flight: the one range lock of netblk.
//
// A range is held shared or exclusive; two ranges conflict when they overlap and either
// is exclusive. acquire() waits until the range conflicts with nothing held and takes it;
// a Guard built right after it gives it back, however the holder ends. (acquire() returns
// a plain handle: GCC 12 may destroy a non-trivial object returned from a coroutine twice.)
//
//   auto held = co_await locks.acquire(start, end, exclusive);
//   const RangeLocks::Guard guard(locks, held);
//
// Waiters wait on their own executor, so one node may be used from several io_contexts
// (each request on its own thread's loop) as long as calls do not overlap in time on two
// threads; a release wakes every waiter, which then checks again.
#pragma once
#include <cstdint>
#include <list>
#include <vector>

#include "netblk/runtime.hpp"

namespace netblk {

class RangeLocks {
 public:
  struct Range {
    std::uint64_t start, end;
    bool exclusive;
  };
  using Handle = std::list<Range>::iterator;

  // `waited`, when given, is set to true if the call had to wait for another holder.
  Task<Handle> acquire(std::uint64_t start, std::uint64_t end, bool exclusive, bool* waited = nullptr);
  void release(Handle held);
  bool conflicts(std::uint64_t start, std::uint64_t end, bool exclusive) const;
  bool empty() const noexcept { return held_.empty(); }

  class Guard {
   public:
    Guard(RangeLocks& locks, Handle held) noexcept : locks_(&locks), held_(held) {}
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    ~Guard() { locks_->release(held_); }

   private:
    RangeLocks* locks_;
    Handle held_;
  };

 private:
  std::list<Range> held_;
  std::vector<AsyncCondition*> waiters_;
};

}  // namespace netblk
