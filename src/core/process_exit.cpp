#include "core/process_exit.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <future>
#include <memory>
#include <thread>

namespace netblk {
namespace {

struct ExitStop {
  std::function<bool()> stop;
  std::chrono::milliseconds limit;
};

void run_stop(int status, void* arg) {
  const std::unique_ptr<ExitStop> handler(static_cast<ExitStop*>(arg));
  // The thread may outlive the wait (a stop that hangs): the promise's state is shared.
  std::promise<bool> stopped;
  std::future<bool> result = stopped.get_future();
  std::thread([stop = std::move(handler->stop), stopped = std::move(stopped)]() mutable {
    try {
      stopped.set_value(stop());
    } catch (...) {
      stopped.set_value(false);
    }
  }).detach();
  if (result.wait_for(handler->limit) == std::future_status::ready && result.get()) return;
  std::fflush(nullptr);
  ::_exit(status);
}

}  // namespace

void at_process_exit(std::function<bool()> stop, std::chrono::milliseconds limit) {
  // on_exit (glibc), not atexit: the handler needs exit()'s status for _exit.
  ::on_exit(run_stop, new ExitStop{std::move(stop), limit});
}

}  // namespace netblk
