// libcurl's multi interface driven from one Asio executor: libcurl tells us which sockets
// to watch (CURLMOPT_SOCKETFUNCTION) and when to wake it (CURLMOPT_TIMERFUNCTION); the
// FdWatcher (core/fd_watcher) waits on the descriptors and a steady_timer on the time, and
// we hand the events back with curl_multi_socket_action. Every callback of every transfer runs on that executor,
// so the transfers' state needs no locks. The multi handle keeps the connection pool
// (keep-alive, HTTP/2 multiplexing), shared by every transfer of one node.
#pragma once
#include <curl/curl.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <unordered_set>

#include "core/fd_watcher.hpp"
#include "netblk/runtime.hpp"

namespace netblk::curlproto {

class CurlLoop {
 public:
  // `max_connections`: how many connections to one host may be open at once.
  CurlLoop(Executor executor, long max_connections);
  ~CurlLoop();
  CurlLoop(const CurlLoop&) = delete;
  CurlLoop& operator=(const CurlLoop&) = delete;

  // Runs `easy` (configured by the caller, who keeps owning it) to completion and returns
  // libcurl's result. Must be awaited on this loop's executor.
  Task<CURLcode> perform(CURL* easy);
  // Ends every transfer in flight; their perform() returns CURLE_ABORTED_BY_CALLBACK.
  void abort_all();
  // While transfers are in flight and no event has come for a while (1 ms after a transfer
  // starts or libcurl changes the sockets it watches, doubling up to `every`), runs every
  // transfer's state machine once. For FTP: libcurl 7.88 (ftp_domore_getsock) stops reporting the
  // control connection while the data connection is being set up (and reports no socket
  // at all before the data socket exists), so an event-driven loop is never told that
  // the server answered on the control connection. With FTPS the data connection's TLS
  // handshake waits for RETR, which waits for that unread answer: the transfer hangs
  // until the connect timeout, then libcurl falls back to PASV and reads the stale
  // answer ("Bad PASV/EPSV response: 213"). curl_multi_perform users (the curl tool)
  // escape because they run every transfer at least once a second.
  void run_idle_transfers_every(std::chrono::milliseconds every);

 private:
  struct Transfer;
  static int on_socket(CURL* easy, curl_socket_t fd, int what, void* loop, void* socket_data);
  static int on_timer(CURLM* multi, long timeout_ms, void* loop);
  void act(curl_socket_t fd, int events);
  void finish_done();
  void arm_idle_kick(bool sooner);
  void arm_timer(std::chrono::steady_clock::time_point due);

  Executor executor_;
  CURLM* multi_ = nullptr;
  FdWatcher watcher_;
  asio::steady_timer timer_;
  std::optional<std::chrono::steady_clock::time_point> deadline_;  // libcurl's, if any
  bool timer_armed_ = false;
  std::uint64_t timer_generation_ = 0;  // tells a cancelled wait from the current one
  asio::steady_timer idle_kick_;
  std::chrono::milliseconds idle_kick_max_{0};   // 0: no idle kicks
  std::chrono::milliseconds idle_kick_next_{1};  // grows while nothing moves
  bool idle_kick_armed_ = false;
  std::uint64_t idle_kick_generation_ = 0;
  std::uint64_t actions_ = 0;  // socket actions so far, to tell an idle period
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  std::unordered_set<Transfer*> active_;
};

// Makes sure curl_global_init ran once (thread-safe).
void global_init();

}  // namespace netblk::curlproto
