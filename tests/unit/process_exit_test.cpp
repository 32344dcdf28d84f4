// core/process_exit.hpp: what an exit does after a stop succeeded, refused or hung. Each
// case runs in a child process, which exits through the handler.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <thread>

#include "core/process_exit.hpp"

using namespace netblk;
using namespace std::chrono_literals;

namespace {

// The child's exit status, and whether a handler registered before the stop ran (it writes
// to `ran`, a pipe).
struct Child {
  int status = -1;
  bool earlier_handler_ran = false;
  std::chrono::steady_clock::duration took{};
};

int ran_fd = -1;

Child run_child(std::function<bool()> stop, std::chrono::milliseconds limit, int status) {
  int fds[2];
  EXPECT_EQ(::pipe(fds), 0);
  const auto start = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    ran_fd = fds[1];
    std::atexit([] {
      const char c = 'x';
      (void)!::write(ran_fd, &c, 1);
    });
    at_process_exit(std::move(stop), limit);
    std::exit(status);
  }
  ::close(fds[1]);
  Child c;
  int ws = 0;
  ::waitpid(pid, &ws, 0);
  c.took = std::chrono::steady_clock::now() - start;
  c.status = WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
  char byte = 0;
  c.earlier_handler_ran = ::read(fds[0], &byte, 1) == 1;
  ::close(fds[0]);
  return c;
}

TEST(AtProcessExit, AStopThatSucceedsLetsTheExitGoOn) {
  const Child c = run_child([] { return true; }, 2s, 3);
  EXPECT_EQ(c.status, 3);
  EXPECT_TRUE(c.earlier_handler_ran);
}

TEST(AtProcessExit, AStopThatCannotEndsTheProcessWithItsStatus) {
  const Child c = run_child([] { return false; }, 2s, 5);
  EXPECT_EQ(c.status, 5);
  EXPECT_FALSE(c.earlier_handler_ran);
}

TEST(AtProcessExit, AStopThatThrowsEndsTheProcessWithItsStatus) {
  const Child c = run_child([]() -> bool { throw std::runtime_error("no"); }, 2s, 6);
  EXPECT_EQ(c.status, 6);
  EXPECT_FALSE(c.earlier_handler_ran);
}

TEST(AtProcessExit, AStopThatHangsEndsTheProcessAtTheLimit) {
  const Child c = run_child(
      [] {
        std::this_thread::sleep_for(1h);
        return true;
      },
      200ms, 0);
  EXPECT_EQ(c.status, 0);
  EXPECT_FALSE(c.earlier_handler_ran);
  EXPECT_GE(c.took, 200ms);
  EXPECT_LT(c.took, 10s);
}

}  // namespace
