// block/pieces.hpp's splitting, and core/library_call.hpp's hand-off of a result from
// another thread.
#include <gtest/gtest.h>

#include <algorithm>
#include <stdexcept>
#include <thread>
#include <vector>

#include "block/pieces.hpp"
#include "core/library_call.hpp"

using namespace netblk;
using namespace std::chrono_literals;

namespace {

TEST(ForEachPiece, CoversTheRangeOnceInPiecesWithAtMostWorkersAtATime) {
  const std::uint64_t length = (10u << 20) + 123;
  const std::uint64_t piece = 1u << 20;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> seen;
  unsigned running = 0, most = 0;
  run_sync<void>([&]() -> Task<void> {
    auto fn = [&](std::uint64_t at, std::uint64_t n) -> Task<void> {
      most = std::max(most, ++running);
      co_await sleep_for(1ms);
      seen.emplace_back(at, n);
      --running;
    };
    co_await for_each_piece(length, piece, 3, fn);
  });
  EXPECT_EQ(most, 3u);
  std::sort(seen.begin(), seen.end());
  ASSERT_EQ(seen.size(), 11u);
  std::uint64_t next = 0;
  for (const auto& [at, n] : seen) {
    EXPECT_EQ(at, next);
    EXPECT_EQ(n, std::min(piece, length - at));
    next = at + n;
  }
  EXPECT_EQ(next, length);
}

TEST(ForEachPiece, OnePieceRunsAloneAndNothingRunsForNothing) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> seen;
  run_sync<void>([&]() -> Task<void> {
    auto fn = [&](std::uint64_t at, std::uint64_t n) -> Task<void> {
      seen.emplace_back(at, n);
      co_return;
    };
    co_await for_each_piece(4096, 1u << 20, 8, fn);
    co_await for_each_piece(0, 1u << 20, 8, fn);
  });
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], std::make_pair(std::uint64_t{0}, std::uint64_t{4096}));
}

TEST(ForEachPiece, AFailureStopsNewPiecesAndIsRethrown) {
  unsigned started = 0;
  EXPECT_THROW(run_sync<void>([&]() -> Task<void> {
                 auto fn = [&](std::uint64_t at, std::uint64_t) -> Task<void> {
                   ++started;
                   co_await sleep_for(1ms);
                   if (at == 0) throw std::runtime_error("piece 0 failed");
                 };
                 co_await for_each_piece(100, 1, 2, fn);
               }),
               std::runtime_error);
  EXPECT_LT(started, 10u);
}

TEST(LibraryCall, ResultFromAnotherThreadResumesOnTheCallersThread) {
  std::thread library;
  std::thread::id resumed_on;
  const std::thread::id caller = std::this_thread::get_id();
  const int result = run_sync<int>([&]() -> Task<int> {
    auto start = [&](LibraryCall<int>* call) {
      library = std::thread([call] {
        std::this_thread::sleep_for(5ms);
        call->complete(42);
      });
    };
    const int r = co_await await_library_call<int>(std::move(start));
    resumed_on = std::this_thread::get_id();
    co_return r;
  });
  library.join();
  EXPECT_EQ(result, 42);
  EXPECT_EQ(resumed_on, caller);
}

TEST(LibraryCall, CompletedInsideStartStillResumesLater) {
  const int result = run_sync<int>([&]() -> Task<int> {
    auto start = [](LibraryCall<int>* call) { call->complete(-5); };  // a submission that failed
    co_return co_await await_library_call<int>(std::move(start));
  });
  EXPECT_EQ(result, -5);
}

}  // namespace
