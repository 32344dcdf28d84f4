#include "netblk/runtime.hpp"

#include <thread>

namespace netblk {

asio::thread_pool& worker_pool() {
  // Blocking file I/O benefits from more threads than cores (the kernel overlaps them).
  static asio::thread_pool pool(std::max(4u, 2 * std::thread::hardware_concurrency()));
  return pool;
}

Task<void> sleep_for(std::chrono::steady_clock::duration d) {
  Executor ex = co_await asio::this_coro::executor;
  asio::steady_timer t(ex, d);
  co_await t.async_wait(asio::use_awaitable);
}

}  // namespace netblk
