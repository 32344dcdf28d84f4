// What every transfer of one drive shares, and the pieces of one transfer: easy-handle
// setup (Session::easy), how answers are judged and failures reported, the retry policy,
// and the range request (fetch_range) that the node and the streams fall back to.
#pragma once
#include <curl/curl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/backoff.hpp"
#include "core/log.hpp"
#include "netblk/error.hpp"
#include "protocols/curl/curl_loop.hpp"
#include "protocols/curl/headers.hpp"
#include "protocols/curl/options.hpp"

namespace netblk::curlproto {

// Transient failures are retried this many times, 100 ms after the first and twice as long
// after each next one (up to 1.6 s), a little shorter at random so that the clients of one
// restarted server do not all return at once.
constexpr int kMaxRetries = 5;
// The slowest transfer that counts as progress (bytes/s, averaged over `timeout`).
constexpr long kMinSpeed = 1024;
constexpr BackoffPolicy kRetryPolicy{.first = std::chrono::milliseconds(100),
                                     .cap = std::chrono::milliseconds(2000),
                                     .jitter = 0.2};

// What one transfer saw: its headers, libcurl's error text and where its body goes.
struct Exchange {
  ResponseFacts facts;
  char error[CURL_ERROR_SIZE] = {};
  // Takes body bytes; returning fewer than given aborts the transfer.
  std::function<std::size_t(const char*, std::size_t)> sink;
  // Called with the expected total (TFTP's tsize, a Content-Length) while it runs.
  std::function<void(curl_off_t)> on_total;
};

// Finished transfers' handles, kept for the next transfers: a handle keeps its receive
// buffer (CURLOPT_BUFFERSIZE), so reusing it costs no fresh pages (a fresh 512 KiB buffer
// per range request was ~13000 page faults per 256 MiB).
constexpr std::size_t kPooledHandles = 2 * kConnections;
struct EasyPool {
  EasyPool() { idle.reserve(kPooledHandles); }
  ~EasyPool() {
    for (CURL* e : idle) curl_easy_cleanup(e);
  }
  EasyPool(const EasyPool&) = delete;
  EasyPool& operator=(const EasyPool&) = delete;
  std::vector<CURL*> idle;
  bool closed = false;
};
struct EasyRelease {
  std::shared_ptr<EasyPool> pool;
  void operator()(CURL* e) const noexcept {
    if (pool && !pool->closed && pool->idle.size() < kPooledHandles) pool->idle.push_back(e);  // reserved: no throw
    else curl_easy_cleanup(e);
  }
};
using Easy = std::unique_ptr<CURL, EasyRelease>;

// Everything a transfer needs, shared by the node and its background streams so that a
// stream may outlive a node that is dropped without close().
struct Session {
  Session(Executor ex, Config c);
  ~Session();

  Config config;
  std::string url;                // the URL every block uses (after redirects at open)
  bool send_credentials = true;   // false after a redirect to another host
  CurlLoop loop;
  CURLSH* share = nullptr;
  Executor executor;
  std::shared_ptr<EasyPool> pool = std::make_shared<EasyPool>();

  const std::string& name() const { return config.shown_url; }

  // A handle for one transfer of `url` with every option of the drive set, reporting into
  // `ex` (which must outlive the transfer). Returned to the pool when released.
  Easy easy(Exchange& ex) const;
};

// How an HTTP answer to a request for the bytes from `start` on fits it: 200 is the whole
// file, which fits only from 0; 206 must start where asked.
enum class RangeAnswer { fits, whole_file, wrong };
RangeAnswer judge_range_answer(const ResponseFacts& f, std::uint64_t start);

long response_code(CURL* e);
// Worth another try: a connection reset, a 5xx, 408 or 429, ...; and a TFTP transfer that
// timed out after `received` > 0 bytes (over UDP a server that went away mid-transfer shows
// only as silence; nothing listening at the start still fails at the first timeout).
bool transient(CURLcode rc, long http_status, Family family = Family::http, std::uint64_t received = 0);
// Throws the Error for a failed transfer: the errno libcurl's result or the HTTP status
// means, and a message naming the drive, `what` failed and why.
[[noreturn]] void fail(const Session& s, CURLcode rc, long http_status, const Exchange& ex, const std::string& what);
// A proxy that refused the tunnel (CONNECT answered >= 400) will not change its mind:
// throws then, so that the caller fails at once instead of retrying.
void refused_by_proxy(const Session& s, CURL* e);

// One range request of `total` bytes at `offset`, resumed where it stopped on transient
// failures. `place(pos, data, n)` puts body bytes at `pos` of the range (each call follows
// the one before) and returns 0, or an errno: the transfer then ends with a FileWriteError.
// Returns false when the server ignored the range (answered 200 with the whole file),
// before any byte was placed.
template <class Place>
Task<bool> fetch_range(Session& s, std::uint64_t offset, std::uint64_t total, Place place) {
  int place_error = 0;
  std::uint64_t got = 0;
  Backoff retry(kRetryPolicy);
  for (;;) {
    const std::uint64_t start = offset + got;
    Exchange ex;
    bool bad_status = false, ignored_range = false, checked = false;
    ex.sink = [&](const char* data, std::size_t n) -> std::size_t {
      if (!checked && s.config.family == Family::http) {
        checked = true;
        // A whole file from 0 fits: take what we asked for, then stop.
        switch (judge_range_answer(ex.facts, start)) {
          case RangeAnswer::fits:
            break;
          case RangeAnswer::whole_file:
            ignored_range = true;
            return 0;
          case RangeAnswer::wrong:
            bad_status = true;
            return 0;
        }
      }
      std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(n, total - got));
      if (const int err = place(got, data, take)) {
        place_error = err;
        return 0;
      }
      got += take;
      if (got == total && take < n) return 0;  // more than asked (a 200 answer): stop here
      return n;
    };
    Easy e = s.easy(ex);
    std::string range = std::to_string(start) + "-" + std::to_string(offset + total - 1);
    NETBLK_LOG(trace, "{}: range {}", s.name(), range);
    curl_easy_setopt(e.get(), CURLOPT_RANGE, range.c_str());
    if (s.config.family == Family::ftp) {
      curl_easy_setopt(e.get(), CURLOPT_FRESH_CONNECT, 1L);
      curl_easy_setopt(e.get(), CURLOPT_FORBID_REUSE, 1L);
    }
    CURLcode rc = co_await s.loop.perform(e.get());
    if (place_error) throw FileWriteError(place_error, std::strerror(place_error));
    if (got == total && (rc == CURLE_OK || rc == CURLE_WRITE_ERROR)) co_return true;
    long status = response_code(e.get());
    if (ignored_range) {
      NETBLK_LOG(info, "{}: the server ignores byte ranges; streaming instead", s.name());
      co_return false;
    }
    if (rc == CURLE_OK && !bad_status && (s.config.family != Family::http || status == 206 || status == 200))
      rc = CURLE_PARTIAL_FILE;  // the answer ended before the range did
    long http_status = s.config.family == Family::http && (bad_status || rc == CURLE_OK) ? status : 0;
    if (rc == CURLE_WRITE_ERROR && bad_status) rc = CURLE_OK;
    if (retry.attempts() < kMaxRetries && transient(rc, http_status)) {
      NETBLK_LOG(info, "{}: range {} failed ({}{}), retrying", s.name(), range, curl_easy_strerror(rc),
                 http_status ? ", HTTP " + std::to_string(http_status) : std::string());
      co_await retry.wait();
      continue;
    }
    if (bad_status && http_status < 400) {
      throw Error(EIO, s.name() + ": the server answered range " + range + " with HTTP " + std::to_string(status) +
                           " and the wrong bytes");
    }
    fail(s, rc, http_status, ex, "reading " + std::to_string(total) + " bytes at offset " + std::to_string(offset));
  }
}

}  // namespace netblk::curlproto
