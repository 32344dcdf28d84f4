// The coroutine primitives of netblk/runtime.hpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <stdexcept>

#include "netblk/runtime.hpp"

using namespace netblk;
using namespace std::chrono_literals;

namespace {

TEST(AsyncSemaphore, NeverLetsMoreThanItsCountRunAndEveryoneFinishes) {
  unsigned running = 0, most = 0, finished = 0;
  run_sync<void>([&]() -> Task<void> {
    Executor ex = co_await asio::this_coro::executor;
    AsyncSemaphore permits(ex, 3);
    co_await run_concurrently(
        10,
        [&]() -> Task<void> {
          for (int round = 0; round < 3; ++round) {
            co_await permits.acquire();
            const AsyncSemaphore::Permit permit(permits);
            most = std::max(most, ++running);
            co_await sleep_for(1ms);
            --running;
          }
          ++finished;
        },
        [] {});
  });
  EXPECT_EQ(most, 3u);
  EXPECT_EQ(finished, 10u);
}

TEST(AsyncSemaphore, APermitComesBackWhenItsHolderThrows) {
  unsigned after = 0;
  run_sync<void>([&]() -> Task<void> {
    Executor ex = co_await asio::this_coro::executor;
    AsyncSemaphore permits(ex, 1);
    try {
      co_await permits.acquire();
      const AsyncSemaphore::Permit permit(permits);
      throw std::runtime_error("failed while holding the permit");
    } catch (const std::runtime_error&) {
    }
    co_await permits.acquire();
    const AsyncSemaphore::Permit again(permits);
    ++after;
  });
  EXPECT_EQ(after, 1u);
}

}  // namespace
