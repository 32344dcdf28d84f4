// The one retry policy: every loop that tries again after a failure (a reconnect, a
// transfer resumed, a connect retried until open-timeout) waits through a Backoff.
//
// Delays start at `first`, double after every attempt up to `cap`, and are shortened by
// up to `jitter` (a fraction) at random, so that many clients of one restarted server do
// not all come back in the same millisecond. A policy with `give_up` set stops offering
// delays once the next wait would end past start + give_up: the caller then reports its
// last error.
#pragma once
#include <chrono>
#include <optional>

#include "netblk/runtime.hpp"

namespace netblk {

struct BackoffPolicy {
  std::chrono::milliseconds first{100};
  std::chrono::milliseconds cap{2000};
  double jitter = 0.0;                    // 0 .. 1: the share a delay may be shortened by
  std::chrono::milliseconds give_up{0};  // 0: never give up (the caller counts attempts)
};

class Backoff {
 public:
  using Clock = std::chrono::steady_clock;
  explicit Backoff(BackoffPolicy policy, Clock::time_point start = Clock::now()) noexcept
      : policy_(policy), start_(start), next_(policy.first) {}

  // The delay before the next attempt, or nullopt when the policy gives up (the wait
  // would end past its deadline). Each call counts one attempt.
  std::optional<std::chrono::milliseconds> next_delay();
  // Sleeps for next_delay() on the caller's executor; false (at once) when it gives up.
  Task<bool> wait();

  int attempts() const noexcept { return attempts_; }
  // start + give_up, or time_point::max() when the policy never gives up.
  Clock::time_point deadline() const noexcept;
  // Starts over from `first` (after a success).
  void reset(Clock::time_point start = Clock::now()) noexcept {
    start_ = start;
    next_ = policy_.first;
    attempts_ = 0;
  }

 private:
  BackoffPolicy policy_;
  Clock::time_point start_;
  std::chrono::milliseconds next_;
  int attempts_ = 0;
};

}  // namespace netblk
