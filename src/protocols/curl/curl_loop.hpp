// libcurl's multi interface driven from one Asio executor: libcurl tells us which sockets
// to watch (CURLMOPT_SOCKETFUNCTION) and when to wake it (CURLMOPT_TIMERFUNCTION); Asio
// watches the descriptors with async_wait and a steady_timer, and we hand the events back
// with curl_multi_socket_action. Every callback of every transfer runs on that executor,
// so the transfers' state needs no locks. The multi handle keeps the connection pool
// (keep-alive, HTTP/2 multiplexing), shared by every transfer of one node.
#pragma once
#include <curl/curl.h>

#include <memory>
#include <unordered_map>
#include <unordered_set>

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

 private:
  struct Watch;
  struct Transfer;
  static int on_socket(CURL* easy, curl_socket_t fd, int what, void* loop, void* socket_data);
  static int on_timer(CURLM* multi, long timeout_ms, void* loop);
  void watch(curl_socket_t fd, int what);
  void unwatch(curl_socket_t fd);
  void arm(const std::shared_ptr<Watch>& w);
  void act(curl_socket_t fd, int events);
  void finish_done();

  Executor executor_;
  CURLM* multi_ = nullptr;
  asio::steady_timer timer_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  std::unordered_map<curl_socket_t, std::shared_ptr<Watch>> watches_;
  std::unordered_set<Transfer*> active_;
};

// Makes sure curl_global_init ran once (thread-safe).
void global_init();

}  // namespace netblk::curlproto
