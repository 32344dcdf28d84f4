#include "core/process_exit.hpp"

#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>

namespace netblk {
namespace {

struct ExitStop {
  std::function<bool()> stop;
  std::chrono::milliseconds limit;
};

// The outcome of one stop, shared with its thread (which may outlive the wait).
struct Outcome {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  bool stopped = false;
};

void run_stop(int status, void* arg) {
  const std::unique_ptr<ExitStop> handler(static_cast<ExitStop*>(arg));
  auto outcome = std::make_shared<Outcome>();
  std::thread([outcome, stop = handler->stop] {
    bool stopped = false;
    try {
      stopped = stop();
    } catch (...) {
    }
    {
      std::lock_guard lock(outcome->m);
      outcome->done = true;
      outcome->stopped = stopped;
    }
    outcome->cv.notify_all();
  }).detach();
  std::unique_lock lock(outcome->m);
  const bool done = outcome->cv.wait_for(lock, handler->limit, [&] { return outcome->done; });
  if (done && outcome->stopped) return;
  std::fflush(nullptr);
  ::_exit(status);
}

}  // namespace

void at_process_exit(std::function<bool()> stop, std::chrono::milliseconds limit) {
  // on_exit (glibc), not atexit: the handler needs exit()'s status for _exit.
  ::on_exit(run_stop, new ExitStop{std::move(stop), limit});
}

}  // namespace netblk
