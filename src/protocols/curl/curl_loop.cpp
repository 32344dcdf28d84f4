#include "protocols/curl/curl_loop.hpp"

#include <algorithm>
#include <mutex>

#include "netblk/error.hpp"

namespace netblk::curlproto {

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK) throw Error(EIO, "libcurl failed to initialise");
  });
}

struct CurlLoop::Transfer {
  explicit Transfer(const Executor& ex) : done(ex) {}
  CURL* easy = nullptr;
  AsyncEvent done;
  CURLcode result = CURLE_OK;
  bool finished = false;
};

CurlLoop::CurlLoop(Executor executor, long max_connections)
    : executor_(std::move(executor)),
      // libcurl reports a socket's removal (CURL_POLL_REMOVE) before it closes it, so a
      // descriptor number never changes sockets under a watch: no fstat per wait.
      watcher_(executor_, [this](int fd, FdEvents happened) {
        act(fd, (has(happened, FdEvents::read) ? CURL_CSELECT_IN : 0) |
                (has(happened, FdEvents::write) ? CURL_CSELECT_OUT : 0));
      }, FdWatcher::Options{.detect_replaced = false}),
      timer_(executor_),
      idle_kick_(executor_) {
  global_init();
  multi_ = curl_multi_init();
  if (!multi_) throw Error(ENOMEM, "libcurl: cannot create a multi handle");
  curl_multi_setopt(multi_, CURLMOPT_SOCKETFUNCTION, &CurlLoop::on_socket);
  curl_multi_setopt(multi_, CURLMOPT_SOCKETDATA, this);
  curl_multi_setopt(multi_, CURLMOPT_TIMERFUNCTION, &CurlLoop::on_timer);
  curl_multi_setopt(multi_, CURLMOPT_TIMERDATA, this);
  curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS, max_connections);
  curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, max_connections);
  curl_multi_setopt(multi_, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
}

CurlLoop::~CurlLoop() {
  *alive_ = false;
  idle_kick_.cancel();
  for (Transfer* t : active_) curl_multi_remove_handle(multi_, t->easy);
  active_.clear();
  curl_multi_setopt(multi_, CURLMOPT_SOCKETFUNCTION, nullptr);
  curl_multi_setopt(multi_, CURLMOPT_TIMERFUNCTION, nullptr);
  watcher_.unwatch_all();
  curl_multi_cleanup(multi_);
}

Task<CURLcode> CurlLoop::perform(CURL* easy) {
  Transfer t(executor_);
  t.easy = easy;
  curl_easy_setopt(easy, CURLOPT_PRIVATE, &t);
  if (curl_multi_add_handle(multi_, easy) != CURLM_OK) co_return CURLE_FAILED_INIT;
  active_.insert(&t);
  arm_idle_kick(true);
  // If the awaiting coroutine is destroyed, take the handle back out of the multi.
  struct Guard {
    CurlLoop* loop;
    Transfer* t;
    std::shared_ptr<bool> alive;
    ~Guard() {
      if (!t->finished && *alive) {
        curl_multi_remove_handle(loop->multi_, t->easy);
        loop->active_.erase(t);
      }
    }
  } guard{this, &t, alive_};
  co_await t.done.wait();
  co_return t.result;
}

void CurlLoop::abort_all() {
  auto transfers = active_;
  active_.clear();
  for (Transfer* t : transfers) {
    curl_multi_remove_handle(multi_, t->easy);
    t->result = CURLE_ABORTED_BY_CALLBACK;
    t->finished = true;
    t->done.set();
  }
}

int CurlLoop::on_socket(CURL*, curl_socket_t fd, int what, void* loop, void*) {
  auto* self = static_cast<CurlLoop*>(loop);
  if (what == CURL_POLL_REMOVE)
    self->watcher_.unwatch(fd);
  else
    self->watcher_.watch(fd, ((what & CURL_POLL_IN) ? FdEvents::read : FdEvents::none) |
                                 ((what & CURL_POLL_OUT) ? FdEvents::write : FdEvents::none));
  // libcurl changes the sockets it watches when a transfer changes phase: that is when
  // an FTP control connection may go unreported, so look again soon.
  self->arm_idle_kick(true);
  return 0;
}

int CurlLoop::on_timer(CURLM*, long timeout_ms, void* loop) {
  // libcurl moves its deadline on almost every packet (TFTP: once per block). Re-arming an
  // Asio timer each time costs a cancelled handler and a timerfd update; instead the timer
  // stays armed when the new deadline is later and, when it fires early, re-arms itself.
  auto* self = static_cast<CurlLoop*>(loop);
  if (timeout_ms < 0) {
    self->deadline_.reset();
    return 0;
  }
  auto due = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  self->deadline_ = due;
  if (self->timer_armed_ && self->timer_.expiry() <= due) return 0;
  self->arm_timer(due);
  return 0;
}

void CurlLoop::arm_timer(std::chrono::steady_clock::time_point due) {
  timer_armed_ = true;
  timer_.expires_at(due);  // cancels a pending wait, whose handler then sees a newer generation
  timer_.async_wait([this, alive = alive_, generation = ++timer_generation_](std::error_code ec) {
    if (!*alive || generation != timer_generation_) return;
    timer_armed_ = false;
    if (ec || !deadline_) return;
    if (std::chrono::steady_clock::now() < *deadline_) {
      arm_timer(*deadline_);
      return;
    }
    deadline_.reset();
    act(CURL_SOCKET_TIMEOUT, 0);
  });
}

void CurlLoop::run_idle_transfers_every(std::chrono::milliseconds every) { idle_kick_max_ = every; }

void CurlLoop::arm_idle_kick(bool sooner) {
  if (idle_kick_max_.count() <= 0 || active_.empty()) return;
  // A new transfer, or one changing phase, is when libcurl may go quiet on an FTP control
  // connection (its data connection is being set up): look again after 1 ms, then back off.
  if (sooner) idle_kick_next_ = std::min(idle_kick_max_, std::chrono::milliseconds(1));
  auto due = std::chrono::steady_clock::now() + idle_kick_next_;
  if (idle_kick_armed_ && idle_kick_.expiry() <= due) return;
  idle_kick_armed_ = true;
  idle_kick_.expires_at(due);  // a pending wait ends with a stale generation
  idle_kick_.async_wait([this, alive = alive_, seen = actions_, generation = ++idle_kick_generation_](std::error_code ec) {
    if (!*alive || generation != idle_kick_generation_) return;
    idle_kick_armed_ = false;
    if (ec || active_.empty()) return;
    if (actions_ == seen) {
      int running = 0;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
      // The one call that runs every transfer and still reports sockets through
      // CURLMOPT_SOCKETFUNCTION (curl_multi_perform would leave them stale).
      curl_multi_socket_all(multi_, &running);
#pragma GCC diagnostic pop
      ++actions_;
      finish_done();
      watcher_.rearm_all();
    }
    // Wait longer next time: a paused stream may sit idle for long, and while data flows
    // the events keep everything moving (a timer firing every millisecond would cost).
    idle_kick_next_ = std::min(idle_kick_max_, idle_kick_next_ * 2);
    arm_idle_kick(false);
  });
}

void CurlLoop::act(curl_socket_t fd, int events) {
  int running = 0;
  ++actions_;
  curl_multi_socket_action(multi_, fd, events, &running);
  finish_done();
  // A socket's waits are re-armed by the watcher when this returns.
}

void CurlLoop::finish_done() {
  int left = 0;
  while (CURLMsg* m = curl_multi_info_read(multi_, &left)) {
    if (m->msg != CURLMSG_DONE) continue;
    CURL* easy = m->easy_handle;
    CURLcode result = m->data.result;
    Transfer* t = nullptr;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, &t);
    curl_multi_remove_handle(multi_, easy);
    if (t && active_.erase(t)) {
      t->result = result;
      t->finished = true;
      t->done.set();
    }
  }
}

}  // namespace netblk::curlproto
