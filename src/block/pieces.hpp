// Splitting a range into requests that run a few at a time: what a driver does when the
// server takes at most `piece` bytes a request, or when it keeps several in flight.
#pragma once
#include <algorithm>
#include <cstdint>

#include "netblk/runtime.hpp"

namespace netblk {

// Runs `co_await fn(at, n)` for every piece [at, at + n) of [0, length), `piece` bytes each
// (the last may be shorter), claimed in ascending order by at most `workers` coroutines at
// once on the caller's executor. After a failure no further piece is claimed; once the
// running ones have ended, the first exception is rethrown. A range of one piece runs
// without a new coroutine. `fn` must outlive the call (it is taken by reference).
template <class Fn>
Task<void> for_each_piece(std::uint64_t length, std::uint64_t piece, unsigned workers, Fn& fn) {
  if (length == 0) co_return;
  if (length <= piece) {
    const std::uint64_t at = 0;
    co_await fn(at, length);
    co_return;
  }
  std::uint64_t next = 0;
  const std::uint64_t pieces = (length + piece - 1) / piece;
  workers = static_cast<unsigned>(std::min<std::uint64_t>(pieces, std::max(1u, workers)));
  auto worker = [&]() -> Task<void> {
    while (next < length) {
      const std::uint64_t at = next;
      const std::uint64_t n = std::min(piece, length - at);
      next += n;
      co_await fn(at, n);
    }
  };
  // Named, not temporaries in the co_await (GCC 12).
  auto start = [&] { return worker(); };
  auto stop = [&] { next = length; };
  co_await run_concurrently(workers, start, stop);
}

}  // namespace netblk
