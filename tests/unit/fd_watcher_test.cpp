// core/fd_watcher: a library that owns its sockets, driven from the loop. The "library"
// here is a socketpair end that the test reads and writes itself, as libcurl or libiscsi
// would inside their service calls.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

#include "core/fd_watcher.hpp"

using namespace netblk;
using namespace std::chrono_literals;

namespace {

struct Pair {
  Pair() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0)
      throw std::runtime_error("socketpair");
    ours = fds[0], peer = fds[1];
  }
  ~Pair() {
    if (ours >= 0) ::close(ours);
    if (peer >= 0) ::close(peer);
  }
  int ours = -1, peer = -1;
};

void send_byte(int fd, char c = 'x') { ASSERT_EQ(::send(fd, &c, 1, MSG_NOSIGNAL), 1); }

// Reads everything there is (the library's service call).
std::string drain(int fd) {
  std::string got;
  char buf[256];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    got.append(buf, static_cast<std::size_t>(n));
  }
  return got;
}

// Runs the loop until `done()` or a second has passed; returns done().
bool run_until(asio::io_context& io, const std::function<bool()>& done) {
  const auto give_up = std::chrono::steady_clock::now() + 1s;
  while (!done() && std::chrono::steady_clock::now() < give_up) {
    io.restart();
    io.run_for(5ms);
  }
  return done();
}

// Runs the loop for a while (to show that nothing happens).
void run_for(asio::io_context& io, std::chrono::milliseconds d) {
  io.restart();
  io.run_for(d);
}

TEST(FdWatcher, AReadableDescriptorIsReportedAtOnce) {
  asio::io_context io;
  Pair p;
  send_byte(p.peer);  // readable before the watch: no edge will come for it
  std::string got;
  FdWatcher w(io.get_executor(), [&](int fd, FdEvents e) {
    EXPECT_EQ(fd, p.ours);
    EXPECT_EQ(e, FdEvents::read);
    got += drain(fd);
  });
  w.watch(p.ours, FdEvents::read);
  EXPECT_TRUE(got.empty());  // never inside watch()
  ASSERT_TRUE(run_until(io, [&] { return got == "x"; }));
  // Still watched: the next byte comes through the re-armed wait.
  send_byte(p.peer, 'y');
  ASSERT_TRUE(run_until(io, [&] { return got == "xy"; }));
}

TEST(FdWatcher, WriteInterest) {
  asio::io_context io;
  Pair p;
  int writes = 0;
  std::unique_ptr<FdWatcher> w;
  w = std::make_unique<FdWatcher>(io.get_executor(), [&](int fd, FdEvents e) {
    EXPECT_EQ(e, FdEvents::write);
    send_byte(fd, 'w');
    if (++writes == 3) w->watch(fd, FdEvents::read);  // the library has said all it had
  });
  w->watch(p.ours, FdEvents::write);
  ASSERT_TRUE(run_until(io, [&] { return writes == 3; }));
  run_for(io, 20ms);
  EXPECT_EQ(writes, 3);  // no write events once they are not wanted
  EXPECT_EQ(drain(p.peer), "www");
}

TEST(FdWatcher, ReadAndWriteTogether) {
  asio::io_context io;
  Pair p;
  send_byte(p.peer);
  FdEvents seen = FdEvents::none;
  FdWatcher w(io.get_executor(), [&](int fd, FdEvents e) {
    seen = seen | e;
    if (has(e, FdEvents::read)) drain(fd);
    w.watch(fd, FdEvents::none);
  });
  w.watch(p.ours, FdEvents::read_write);
  ASSERT_TRUE(run_until(io, [&] { return seen == FdEvents::read_write; }));
}

TEST(FdWatcher, UnwatchLeavesTheDescriptorOpenAndStopsEvents) {
  asio::io_context io;
  Pair p;
  int events = 0;
  FdWatcher w(io.get_executor(), [&](int fd, FdEvents) {
    ++events;
    drain(fd);
  });
  w.watch(p.ours, FdEvents::read);
  run_for(io, 5ms);  // the read wait is pending
  w.unwatch(p.ours);
  EXPECT_FALSE(w.watching(p.ours));
  EXPECT_NE(::fcntl(p.ours, F_GETFD), -1);  // released, not closed
  send_byte(p.peer);
  run_for(io, 20ms);
  ::close(p.ours);  // the library closes its socket
  p.ours = -1;
  run_for(io, 20ms);
  EXPECT_EQ(events, 0);
}

TEST(FdWatcher, DestroyedWithWaitsPending) {
  asio::io_context io;
  Pair p;
  int events = 0;
  {
    FdWatcher w(io.get_executor(), [&](int, FdEvents) { ++events; });
    w.watch(p.ours, FdEvents::read_write);  // write is ready: an event is posted
    send_byte(p.peer);
  }
  run_for(io, 20ms);
  EXPECT_EQ(events, 0);
  EXPECT_NE(::fcntl(p.ours, F_GETFD), -1);
}

TEST(FdWatcher, TheCallbackMayUnwatchAndWatchAgain) {
  asio::io_context io;
  Pair p;
  std::string got;
  FdWatcher w(io.get_executor(), [&](int fd, FdEvents) {
    got += drain(fd);
    w.unwatch(fd);
    w.watch(fd, FdEvents::read);
  });
  w.watch(p.ours, FdEvents::read);
  for (char c : std::string("abc")) {
    send_byte(p.peer, c);
    ASSERT_TRUE(run_until(io, [&] { return got.size() == static_cast<std::size_t>(c - 'a' + 1); }));
  }
  EXPECT_EQ(got, "abc");
}

// The fake library that reconnects the way libiscsi 1.19 does: a new socket is dup2()ed
// onto the old descriptor number inside its service call. epoll registered the old open
// file, so without a new registration the new socket's data would never be reported.
struct ReconnectingLibrary {
  ReconnectingLibrary(asio::io_context& io, FdWatcher::Options options)
      : watcher(io.get_executor(), [this](int fd, FdEvents e) { service(fd, e); }, options) {}

  void service(int fd, FdEvents e) {
    EXPECT_EQ(fd, first.ours);
    EXPECT_EQ(e, FdEvents::read);
    got += drain(fd);
    if (++events == 3) reconnect();
    if (tell_owner) watcher.watch(fd, FdEvents::read);  // the owner passes which_events() on
  }
  void reconnect() {
    ASSERT_EQ(::dup2(second.ours, first.ours), first.ours);  // closes the old socket
    ::close(second.ours);
    second.ours = -1;
    peer = second.peer;
    if (refresh_explicitly) watcher.refresh(first.ours);
  }

  Pair first, second;
  int peer = first.peer;
  int events = 0;
  std::string got;
  bool tell_owner = false, refresh_explicitly = false;
  FdWatcher watcher;
};

void check_reconnect(ReconnectingLibrary& lib, asio::io_context& io) {
  lib.watcher.watch(lib.first.ours, FdEvents::read);
  for (char c : std::string("abc")) {
    send_byte(lib.peer, c);
    ASSERT_TRUE(run_until(io, [&] { return !lib.got.empty() && lib.got.back() == c; })) << lib.got;
  }
  ASSERT_EQ(lib.events, 3);
  ASSERT_EQ(lib.peer, lib.second.peer);  // swapped
  run_for(io, 10ms);                      // the wait for the new socket is armed
  for (char c : std::string("def")) {
    send_byte(lib.peer, c);
    ASSERT_TRUE(run_until(io, [&] { return !lib.got.empty() && lib.got.back() == c; })) << lib.got;
  }
  EXPECT_EQ(lib.got, "abcdef");
  EXPECT_EQ(lib.events, 6);
}

TEST(FdWatcher, ASocketReplacedBehindTheNumberIsFoundOnReArm) {
  asio::io_context io;
  ReconnectingLibrary lib(io, {});
  check_reconnect(lib, io);
}

TEST(FdWatcher, ASocketReplacedBehindTheNumberIsFoundOnWatch) {
  asio::io_context io;
  ReconnectingLibrary lib(io, {});
  lib.tell_owner = true;
  check_reconnect(lib, io);
}

TEST(FdWatcher, ExplicitRefreshWithoutDetection) {
  asio::io_context io;
  ReconnectingLibrary lib(io, FdWatcher::Options{.detect_replaced = false});
  lib.refresh_explicitly = true;
  check_reconnect(lib, io);
}

// What the check is for: without detection or refresh the new socket stays silent.
TEST(FdWatcher, WithoutRefreshTheNewSocketIsNotReported) {
  asio::io_context io;
  ReconnectingLibrary lib(io, FdWatcher::Options{.detect_replaced = false});
  lib.watcher.watch(lib.first.ours, FdEvents::read);
  for (char c : std::string("abc")) {
    send_byte(lib.peer, c);
    ASSERT_TRUE(run_until(io, [&] { return !lib.got.empty() && lib.got.back() == c; })) << lib.got;
  }
  run_for(io, 10ms);
  send_byte(lib.peer, 'd');
  run_for(io, 50ms);
  EXPECT_EQ(lib.got, "abc");
}

}  // namespace
