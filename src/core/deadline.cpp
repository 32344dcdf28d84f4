#include "core/deadline.hpp"

namespace netblk {

Deadline::Deadline(const Executor& ex, Clock::time_point when, std::function<void()> on_expiry) : timer_(ex, when) {
  if (when == Clock::time_point::max()) return;
  timer_.async_wait([state = state_, on_expiry = std::move(on_expiry)](std::error_code ec) {
    if (ec || state->disarmed) return;
    state->expired = true;
    state->disarmed = true;
    on_expiry();
  });
}

Deadline::~Deadline() { cancel(); }

void Deadline::cancel() noexcept {
  state_->disarmed = true;  // a timer that already fired must not act on what comes next
  timer_.cancel();
}

}  // namespace netblk
