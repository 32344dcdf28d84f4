#include "netblk/range_lock.hpp"

#include <algorithm>
#include <iterator>

namespace netblk {

bool RangeLocks::conflicts(std::uint64_t start, std::uint64_t end, bool exclusive) const {
  return std::any_of(held_.begin(), held_.end(), [&](const Range& r) {
    return r.start < end && start < r.end && (exclusive || r.exclusive);
  });
}

Task<RangeLocks::Handle> RangeLocks::acquire(std::uint64_t start, std::uint64_t end, bool exclusive, bool* waited) {
  while (conflicts(start, end, exclusive)) {
    if (waited) *waited = true;
    Executor ex = co_await asio::this_coro::executor;
    AsyncCondition wake(ex);
    waiters_.push_back(&wake);
    // Off the list however the wait ends (a release clears the list itself).
    struct Unlist {
      std::vector<AsyncCondition*>& list;
      AsyncCondition* entry;
      ~Unlist() { std::erase(list, entry); }
    } unlist{waiters_, &wake};
    co_await wake.wait();
  }
  held_.push_back(Range{start, end, exclusive});
  co_return std::prev(held_.end());
}

void RangeLocks::release(Handle held) {
  held_.erase(held);
  for (AsyncCondition* waiter : waiters_) waiter->notify_all();
  waiters_.clear();
}

}  // namespace netblk
