// Deadlines: the one way a wait is bounded.
//
// - Deadline: a guard that runs `on_expiry` once if it is still alive when the time
//   comes. The awaited operation is made to fail by it (close the socket or stream it
//   waits on); afterwards expired() tells the caller to report ETIMEDOUT. Destroying the
//   guard disarms it.
// - with_deadline(task, d, what): awaits `task`, or throws Error(ETIMEDOUT, what + " timed
//   out") after `d`. On time-out the task is left to finish on its own and its result
//   is dropped, so it must own everything it touches (no references into the caller's
//   frame).
// - offload(fn, d, what): offload() with a time limit. A blocking library call that does
//   not return in time leaves its worker thread stuck; the caller is not.
#pragma once
#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>

#include "netblk/error.hpp"
#include "netblk/runtime.hpp"

namespace netblk {

class Deadline {
 public:
  using Clock = std::chrono::steady_clock;
  // A time_point of max() never expires.
  Deadline(const Executor& ex, Clock::time_point when, std::function<void()> on_expiry);
  Deadline(const Executor& ex, Clock::duration after, std::function<void()> on_expiry)
      : Deadline(ex, Clock::now() + after, std::move(on_expiry)) {}
  ~Deadline();
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;

  bool expired() const noexcept { return state_->expired; }
  // Disarms early (as the destructor does); expired() keeps its answer.
  void cancel() noexcept;

 private:
  struct State {
    bool expired = false;
    bool disarmed = false;
  };
  std::shared_ptr<State> state_ = std::make_shared<State>();
  asio::steady_timer timer_;
};

namespace detail {

template <class T>
struct DeadlineRace {
  explicit DeadlineRace(const Executor& ex) : wake(ex, std::chrono::steady_clock::time_point::max()) {}
  asio::steady_timer wake;
  bool done = false;
  std::exception_ptr error;
  std::optional<std::conditional_t<std::is_void_v<T>, int, T>> value;
};

template <class T>
Task<void> run_into(std::shared_ptr<DeadlineRace<T>> race, Task<T> task) {
  try {
    if constexpr (std::is_void_v<T>) {
      co_await std::move(task);
      race->value.emplace(0);
    } else {
      race->value.emplace(co_await std::move(task));
    }
  } catch (...) {
    race->error = std::current_exception();
  }
  race->done = true;
  race->wake.cancel();
}

}  // namespace detail

template <class T>
Task<T> with_deadline(Task<T> task, std::chrono::steady_clock::duration d, std::string what) {
  Executor ex = co_await asio::this_coro::executor;
  auto race = std::make_shared<detail::DeadlineRace<T>>(ex);
  race->wake.expires_after(d);
  asio::co_spawn(ex, detail::run_into<T>(race, std::move(task)), asio::detached);
  if (!race->done) {
    std::error_code ec;
    co_await race->wake.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
  if (!race->done) throw Error(ETIMEDOUT, what + " timed out");
  if (race->error) std::rethrow_exception(race->error);
  if constexpr (!std::is_void_v<T>) co_return std::move(*race->value);
}

template <class F>
Task<std::invoke_result_t<F>> offload(F fn, std::chrono::steady_clock::duration limit, std::string what) {
  using R = std::invoke_result_t<F>;
  Task<R> work = offload(std::move(fn));
  if constexpr (std::is_void_v<R>) {
    co_await with_deadline<void>(std::move(work), limit, std::move(what));
  } else {
    co_return co_await with_deadline<R>(std::move(work), limit, std::move(what));
  }
}

}  // namespace netblk
