// core/deadline.hpp and core/backoff.hpp: bounded waits and the one retry policy.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "core/backoff.hpp"
#include "core/deadline.hpp"

using namespace netblk;
using namespace std::chrono_literals;

namespace {

TEST(WithDeadline, ReturnsTheResultInTime) {
  int v = run_sync<int>([]() -> Task<int> {
    auto quick = []() -> Task<int> {
      co_await sleep_for(1ms);
      co_return 42;
    };
    co_return co_await with_deadline<int>(quick(), 5s, "quick");
  });
  EXPECT_EQ(v, 42);
}

TEST(WithDeadline, ATaskThatHangsIsETIMEDOUTAndTheLoopGoesOn) {
  const auto start = std::chrono::steady_clock::now();
  int err = 0;
  std::string what;
  run_sync<void>([&]() -> Task<void> {
    auto slow = []() -> Task<void> { co_await sleep_for(300ms); };
    try {
      co_await with_deadline<void>(slow(), 20ms, "nbd://h/x: connect");
    } catch (const Error& e) {
      err = e.code();
      what = e.what();
    }
  });
  EXPECT_EQ(err, ETIMEDOUT);
  EXPECT_EQ(what, "nbd://h/x: connect timed out");
  // run_sync also waited for the abandoned task to end: it was left to finish, not killed.
  EXPECT_GE(std::chrono::steady_clock::now() - start, 300ms);
}

TEST(WithDeadline, ExceptionsPassThrough) {
  EXPECT_THROW(run_sync<void>([]() -> Task<void> {
                 auto failing = []() -> Task<void> {
                   throw Error(EIO, "boom");
                   co_return;
                 };
                 co_await with_deadline<void>(failing(), 1s, "x");
               }),
               Error);
}

TEST(OffloadWithTimeout, AStuckBlockingCallDoesNotHoldTheCaller) {
  auto release = std::make_shared<std::atomic<bool>>(false);
  int err = 0;
  const auto start = std::chrono::steady_clock::now();
  run_sync<void>([&]() -> Task<void> {
    // Named first: the GCC 12 rule (a temporary in a co_await expression may be destroyed
    // twice).
    auto stuck = [release] {
      while (!*release) std::this_thread::sleep_for(1ms);
      return 1;
    };
    try {
      co_await offload(std::move(stuck), 30ms, "login");
    } catch (const Error& e) {
      err = e.code();
    }
    EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
    *release = true;  // let the worker go so the test ends cleanly
  });
  EXPECT_EQ(err, ETIMEDOUT);
}

TEST(OffloadWithTimeout, ReturnsInTime) {
  int v = run_sync<int>([]() -> Task<int> { co_return co_await offload([] { return 7; }, 5s, "x"); });
  EXPECT_EQ(v, 7);
}

TEST(Deadline, RunsItsActionOnceWhenTimeComesAndNotAfterCancel) {
  int fired = 0;
  bool expired = false, cancelled_expired = true;
  run_sync<void>([&]() -> Task<void> {
    Executor ex = co_await asio::this_coro::executor;
    {
      Deadline d(ex, 10ms, [&] { ++fired; });
      co_await sleep_for(40ms);
      expired = d.expired();
    }
    {
      Deadline d(ex, 10ms, [&] { ++fired; });
      d.cancel();
      co_await sleep_for(40ms);
      cancelled_expired = d.expired();
    }
    {
      Deadline d(ex, std::chrono::steady_clock::time_point::max(), [&] { ++fired; });
    }
  });
  EXPECT_EQ(fired, 1);
  EXPECT_TRUE(expired);
  EXPECT_FALSE(cancelled_expired);
}

TEST(Backoff, DoublesUpToItsCap) {
  Backoff b(BackoffPolicy{100ms, 400ms});
  EXPECT_EQ(*b.next_delay(), 100ms);
  EXPECT_EQ(*b.next_delay(), 200ms);
  EXPECT_EQ(*b.next_delay(), 400ms);
  EXPECT_EQ(*b.next_delay(), 400ms);
  EXPECT_EQ(b.attempts(), 4);
  b.reset();
  EXPECT_EQ(*b.next_delay(), 100ms);
}

TEST(Backoff, JitterOnlyShortens) {
  Backoff b(BackoffPolicy{1000ms, 1000ms, 0.5});
  for (int i = 0; i < 50; ++i) {
    auto d = *b.next_delay();
    EXPECT_LE(d, 1000ms);
    EXPECT_GE(d, 500ms);
  }
}

TEST(Backoff, GivesUpWhenTheNextWaitWouldPassTheDeadline) {
  Backoff b(BackoffPolicy{100ms, 100ms, 0.0, 250ms});
  EXPECT_TRUE(b.next_delay());
  EXPECT_TRUE(b.next_delay());
  EXPECT_TRUE(b.next_delay());  // still "now": nothing has slept
  const auto t = std::chrono::steady_clock::now();
  run_sync<void>([&]() -> Task<void> {
    while (co_await b.wait()) {
    }
  });
  EXPECT_LT(std::chrono::steady_clock::now() - t, 400ms);
  EXPECT_FALSE(b.next_delay());
}

}  // namespace
