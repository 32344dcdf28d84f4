#include "core/backoff.hpp"

#include <algorithm>
#include <random>

namespace netblk {

Backoff::Clock::time_point Backoff::deadline() const noexcept {
  return policy_.give_up.count() ? start_ + policy_.give_up : Clock::time_point::max();
}

std::optional<std::chrono::milliseconds> Backoff::next_delay() {
  auto delay = next_;
  if (policy_.jitter > 0 && delay.count() > 1) {
    thread_local std::minstd_rand rng(std::random_device{}());
    std::uniform_real_distribution<double> shorten(0.0, std::min(policy_.jitter, 1.0));
    delay = std::chrono::milliseconds(static_cast<long long>(static_cast<double>(delay.count()) * (1.0 - shorten(rng))));
  }
  if (policy_.give_up.count() && Clock::now() + delay >= deadline()) return std::nullopt;
  ++attempts_;
  next_ = std::min(next_ * 2, std::max(policy_.cap, policy_.first));
  return delay;
}

Task<bool> Backoff::wait() {
  auto delay = next_delay();
  if (!delay) co_return false;
  co_await sleep_for(*delay);
  co_return true;
}

}  // namespace netblk
