// The runtime: standalone Asio with C++20 coroutines. One io_context per thread runs the
// coroutines; calls that can only block (pread on a cold page, a library's connect or
// login) run on a shared worker pool through offload() and resume on the caller's executor.
#pragma once
#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/redirect_error.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/thread_pool.hpp>
#include <asio/use_awaitable.hpp>
#include <chrono>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

namespace netblk {

using Executor = asio::any_io_executor;
template <class T = void>
using Task = asio::awaitable<T>;

// The process-wide pool for blocking calls (created on first use).
asio::thread_pool& worker_pool();

// Runs `fn` on the worker pool and resumes the awaiting coroutine on its own executor.
// Exceptions thrown by `fn` are rethrown in the caller.
template <class F>
Task<std::invoke_result_t<F>> offload(F fn) {
  using R = std::invoke_result_t<F>;
  // Named, not a temporary in the co_await expression: GCC 12 may destroy such a
  // temporary twice (the GCC 12 rule, docs/architecture.md).
  auto work = [fn = std::move(fn)]() mutable -> Task<R> { co_return fn(); };
  co_return co_await asio::co_spawn(worker_pool(), std::move(work), asio::use_awaitable);
}

// Runs one coroutine to completion on a fresh io_context and returns its result.
// For the CLI's main and for tests.
template <class T>
T run_sync(std::function<Task<T>()> make) {
  asio::io_context ctx;
  std::exception_ptr error;
  std::optional<std::conditional_t<std::is_void_v<T>, int, T>> result;
  asio::co_spawn(
      ctx,
      [&]() -> Task<void> {
        if constexpr (std::is_void_v<T>) {
          co_await make();
          result.emplace(0);
        } else {
          result.emplace(co_await make());
        }
      },
      [&](std::exception_ptr e) { error = e; });
  ctx.run();
  if (error) std::rethrow_exception(error);
  if constexpr (!std::is_void_v<T>) return std::move(*result);
}

// A manual-reset event for coroutines on one executor: wait() suspends until set().
class AsyncEvent {
 public:
  explicit AsyncEvent(const Executor& ex) : timer_(ex, std::chrono::steady_clock::time_point::max()) {}
  void set() {
    set_ = true;
    timer_.cancel();
  }
  void reset() {
    set_ = false;
    timer_.expires_at(std::chrono::steady_clock::time_point::max());
  }
  bool is_set() const noexcept { return set_; }
  Task<void> wait() {
    while (!set_) {
      std::error_code ec;
      co_await timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
  }

 private:
  asio::steady_timer timer_;
  bool set_ = false;
};

// A condition variable for coroutines on one executor: wait() suspends until the next
// notify_all(); callers re-check their predicate in a loop.
class AsyncCondition {
 public:
  explicit AsyncCondition(const Executor& ex) : timer_(ex, std::chrono::steady_clock::time_point::max()) {}
  Task<void> wait() {
    ++waiters_;
    std::error_code ec;
    co_await timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    --waiters_;
  }
  // Without waiters, nothing to do (a cancel takes the timer queue's lock: callers such as
  // the NBD server notify on every reply).
  void notify_all() {
    if (waiters_) timer_.cancel();
  }

 private:
  asio::steady_timer timer_;
  unsigned waiters_ = 0;  // a frame destroyed while waiting leaves it high: a spare cancel
};

// A counting semaphore for coroutines on one executor (a mutex with count 1). acquire()
// takes a permit, waiting while all `count` are out; waiters are served first come, first
// served, and a permit given back wakes exactly one of them (no thundering herd with many
// requests in flight). A Permit built right after acquire() gives the permit back when
// destroyed. (acquire() returns nothing: GCC 12 may destroy a non-trivial object returned
// from a coroutine twice.)
class AsyncSemaphore {
 public:
  AsyncSemaphore(const Executor& ex, unsigned count) : ex_(ex), free_(count) {}
  Task<void> acquire() {
    if (free_ > 0 && waiters_.empty()) {
      --free_;
      co_return;
    }
    auto turn = std::make_shared<AsyncEvent>(ex_);
    waiters_.push_back(turn);
    co_await turn->wait();  // release() handed its permit over to us
  }
  class Permit {
   public:
    explicit Permit(AsyncSemaphore& owner) noexcept : owner_(&owner) {}
    Permit(const Permit&) = delete;
    Permit& operator=(const Permit&) = delete;
    ~Permit() { owner_->release(); }

   private:
    AsyncSemaphore* owner_;
  };

 private:
  void release() {
    if (waiters_.empty()) {
      ++free_;
      return;
    }
    auto next = std::move(waiters_.front());
    waiters_.pop_front();
    next->set();
  }
  Executor ex_;
  std::deque<std::shared_ptr<AsyncEvent>> waiters_;
  unsigned free_;
};

// Runs `count` coroutines `make()` concurrently on the caller's executor and waits for all
// of them. On a failure `on_failure()` is called (so the others can stop early); once all
// have ended, the first exception is rethrown.
template <class Make, class OnFailure>
Task<void> run_concurrently(unsigned count, Make make, OnFailure on_failure) {
  Executor ex = co_await asio::this_coro::executor;
  AsyncCondition done(ex);
  std::exception_ptr failure;
  unsigned running = count;
  for (unsigned i = 0; i < count; ++i)
    asio::co_spawn(ex, make(), [&](std::exception_ptr e) {
      if (e) {
        if (!failure) failure = e;
        on_failure();
      }
      --running;
      done.notify_all();
    });
  while (running) co_await done.wait();
  if (failure) std::rethrow_exception(failure);
}

// Suspends the current coroutine for `d`.
Task<void> sleep_for(std::chrono::steady_clock::duration d);

}  // namespace netblk
