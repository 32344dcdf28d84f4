// HTTP, HTTPS, FTP, FTPS and TFTP through libcurl, with QEMU's curl driver names and
// options (block/curl.c): url, readahead, sslverify, timeout, cookie, cookie-secret,
// username, password-secret, proxy-username, proxy-password-secret, and force-range.
//
// Two ways to read:
//  - ranges (HTTP with byte ranges, FTP with REST): every read is a range request; many
//    run at once over the multi handle's connection pool; small sequential reads get a
//    readahead window that grows, kept in a small cache of recent ranges;
//  - a stream (HTTP servers without ranges, TFTP): one sequential transfer fills a sparse,
//    already-unlinked cache file in $TMPDIR; a read waits until the stream passes its end.
// Transient failures (reset, 5xx) are retried with backoff; `timeout` is the longest time
// without progress (libcurl's low-speed limit), so nothing waits for ever.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <set>
#include <thread>

#include "block/driver.hpp"
#include "core/file_io.hpp"
#include "core/log.hpp"
#include "core/secrets.hpp"
#include "netblk/buffer.hpp"
#include "protocols/curl/curl_loop.hpp"
#include "protocols/curl/headers.hpp"
#include "protocols/curl/tls.hpp"
#include "protocols/curl/url.hpp"

namespace netblk::curlproto {
namespace {

constexpr std::uint64_t kDefaultReadahead = 256 * 1024;
constexpr std::uint64_t kDefaultTimeout = 5;
constexpr std::uint64_t kMaxTimeout = 10000;  // QEMU's CURL_TIMEOUT_MAX
constexpr std::uint64_t kMaxWindow = 4u << 20;  // the largest a growing readahead gets
constexpr std::uint64_t kLargeRead = 1u << 20;  // reads this large get no readahead
constexpr std::size_t kCacheEntries = 8;
// FTP: reads up to this far ahead of the stream's head wait for it rather than opening a
// data connection of their own.
constexpr std::uint64_t kStreamLookahead = 32u << 20;
// FTP: how many bytes the stream keeps in memory, and how far it reads ahead of every read.
constexpr std::uint64_t kStreamBuffer = 32u << 20;
constexpr std::uint64_t kStreamAhead = 1u << 20;
// Streams without ranges (TFTP, servers without ranges): memory holds the newest bytes in
// pieces of kStreamPiece, and kStreamKeep of them (already in the cache file) for reads
// that come a little late.
constexpr std::size_t kStreamPiece = 1u << 20;
constexpr std::uint64_t kStreamKeep = 16u << 20;
constexpr std::size_t kStreamSpare = 4;
constexpr long kConnections = 8;
constexpr std::size_t kPageSize = 4096;            // read_to_file() writes whole pages
constexpr std::uint64_t kMaxZeroBlock = 1u << 20;  // and looks for zero blocks up to this size
constexpr int kMaxRetries = 5;
constexpr long kTftpBlockSize = 65464;  // RFC 2348's maximum

enum class Family { http, ftp, tftp };

// Parallel HTTP(S) connections: as many as CPUs, 2 to kConnections. On 2 CPUs a 256 MiB
// convert over HTTP took 0.23 s with 2 connections and 0.25 s with 8 (curl -o 0.27 s): the
// extra transfers only contend for the cores that nginx and we share. FTP and TFTP keep
// kConnections (one stream plus range requests of their own far from it).
long connection_limit(Family family) {
  if (family != Family::http) return kConnections;
  return std::clamp<long>(static_cast<long>(std::thread::hardware_concurrency()), 2, kConnections);
}

Family family_of(std::string_view driver) {
  if (driver == "http" || driver == "https") return Family::http;
  if (driver == "ftp" || driver == "ftps") return Family::ftp;
  return Family::tftp;
}

// Which URL schemes a transfer (and any redirect) may use.
const char* allowed_protocols(Family f) {
  switch (f) {
    case Family::http: return "http,https";
    case Family::ftp: return "ftp,ftps";
    case Family::tftp: return "tftp";
  }
  return "";
}

struct Config {
  std::string driver;
  Family family = Family::http;
  std::string url;        // as given; may carry a password
  std::string shown_url;  // without the password, for names and messages
  std::uint64_t readahead = kDefaultReadahead;
  bool sslverify = true;
  std::uint64_t timeout = kDefaultTimeout;
  bool has_cookie = false;  // a literal cookie option (never printed)
  std::string cookie;       // the cookie to send (literal or from the secret)
  std::optional<std::string> cookie_secret, username, password_secret, proxy_username, proxy_password_secret;
  std::string password, proxy_password;
  bool force_range = false;
};

// What one transfer saw: its headers, libcurl's error text and where its body goes.
struct Exchange {
  ResponseFacts facts;
  char error[CURL_ERROR_SIZE] = {};
  // Takes body bytes; returning fewer than given aborts the transfer.
  std::function<std::size_t(const char*, std::size_t)> sink;
  // Called with the expected total (TFTP's tsize, a Content-Length) while it runs.
  std::function<void(curl_off_t)> on_total;
};

std::size_t header_cb(char* data, std::size_t size, std::size_t n, void* user) {
  auto* ex = static_cast<Exchange*>(user);
  parse_header_line(std::string_view(data, size * n), ex->facts);
  return size * n;
}

std::size_t write_cb(char* data, std::size_t size, std::size_t n, void* user) {
  auto* ex = static_cast<Exchange*>(user);
  if (!ex->sink) return size * n;
  return ex->sink(data, size * n);
}

int progress_cb(void* user, curl_off_t dltotal, curl_off_t, curl_off_t, curl_off_t) {
  auto* ex = static_cast<Exchange*>(user);
  if (ex->on_total && dltotal > 0) ex->on_total(dltotal);
  return 0;
}

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

// Everything a transfer needs, shared by the node and its background stream so that the
// stream may outlive a node that is dropped without close().
struct Session {
  Session(Executor ex, Config c) : config(std::move(c)), loop(ex, connection_limit(c.family)), executor(std::move(ex)) {
    // libcurl's FTP data-connection setup goes unreported to the socket callback (see
    // CurlLoop::run_idle_transfers_every): keep FTP transfers moving when no event comes.
    if (config.family == Family::ftp) loop.run_idle_transfers_every(std::chrono::milliseconds(50));
    share = curl_share_init();
    if (share) {
      curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    }
    url = config.url;
  }
  ~Session() {
    loop.abort_all();
    // Before the share they use goes; a handle released later is cleaned up at once.
    pool->closed = true;
    for (CURL* e : pool->idle) curl_easy_cleanup(e);
    pool->idle.clear();
    if (share) curl_share_cleanup(share);
  }

  Config config;
  std::string url;                // the URL every block uses (after redirects at open)
  bool send_credentials = true;   // false after a redirect to another host
  CurlLoop loop;
  CURLSH* share = nullptr;
  Executor executor;
  std::shared_ptr<EasyPool> pool = std::make_shared<EasyPool>();

  const std::string& name() const { return config.shown_url; }

  Easy easy(Exchange& ex) const {
    CURL* handle = nullptr;
    if (!pool->idle.empty()) {
      handle = pool->idle.back();
      pool->idle.pop_back();
      curl_easy_reset(handle);  // every option back to its default; the buffers stay
    } else {
      handle = curl_easy_init();
    }
    if (!handle) throw Error(ENOMEM, name() + ": libcurl cannot create a transfer");
    Easy e(handle, EasyRelease{pool});
    CURL* h = e.get();
    curl_easy_setopt(h, CURLOPT_URL, url.c_str());
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, allowed_protocols(config.family));
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, allowed_protocols(config.family));
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "netblk/" "0.1");
    curl_easy_setopt(h, CURLOPT_BUFFERSIZE, 512L * 1024);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    if (config.timeout > 0) {
      // No progress for `timeout` seconds ends a transfer; a slow but moving one goes on.
      curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, static_cast<long>(config.timeout));
      curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
      curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, static_cast<long>(config.timeout));
    }
    prefer_aes128_gcm(h);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, config.sslverify ? 1L : 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, config.sslverify ? 2L : 0L);
    if (share) curl_easy_setopt(h, CURLOPT_SHARE, share);
    if (config.family == Family::tftp) curl_easy_setopt(h, CURLOPT_TFTP_BLKSIZE, kTftpBlockSize);
    if (config.family == Family::http && !config.cookie.empty())
      curl_easy_setopt(h, CURLOPT_COOKIE, config.cookie.c_str());
    if (send_credentials) {
      if (config.username) curl_easy_setopt(h, CURLOPT_USERNAME, config.username->c_str());
      if (config.password_secret) curl_easy_setopt(h, CURLOPT_PASSWORD, config.password.c_str());
    }
    if (config.proxy_username) curl_easy_setopt(h, CURLOPT_PROXYUSERNAME, config.proxy_username->c_str());
    if (config.proxy_password_secret) curl_easy_setopt(h, CURLOPT_PROXYPASSWORD, config.proxy_password.c_str());
    // NETBLK_CURL_VERBOSE=1 shows libcurl's protocol trace on stderr, for debugging servers.
    static const bool verbose = std::getenv("NETBLK_CURL_VERBOSE") != nullptr;
    if (verbose) curl_easy_setopt(h, CURLOPT_VERBOSE, 1L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, ex.error);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &ex);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &ex);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, progress_cb);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, &ex);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, ex.on_total ? 0L : 1L);
    return e;
  }
};

// How an HTTP answer to a request for the bytes from `start` on fits it: 200 is the whole
// file, which fits only from 0; 206 must start where asked.
enum class RangeAnswer { fits, whole_file, wrong };
RangeAnswer judge_range_answer(const ResponseFacts& f, std::uint64_t start) {
  if (f.status == 200) return start == 0 ? RangeAnswer::fits : RangeAnswer::whole_file;
  if (f.status != 206) return RangeAnswer::wrong;
  if (f.content_range && f.content_range->first && *f.content_range->first != start) return RangeAnswer::wrong;
  return RangeAnswer::fits;
}

long response_code(CURL* e) {
  long code = 0;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
  return code;
}

bool transient(CURLcode rc, long http_status) {
  if (http_status >= 500 && http_status <= 599 && http_status != 501 && http_status != 505) return true;
  if (http_status == 429 || http_status == 408) return true;
  switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_FTP_ACCEPT_FAILED:
    case CURLE_FTP_CANT_GET_HOST:
    case CURLE_FTP_WEIRD_PASV_REPLY:
    case CURLE_FTP_WEIRD_227_FORMAT:
    case CURLE_TFTP_ILLEGAL:
      return true;
    default:
      return false;
  }
}

std::chrono::milliseconds backoff(int attempt) {
  return std::chrono::milliseconds(std::min(2000, 100 << std::min(attempt, 5)));
}

[[noreturn]] void fail(const Session& s, CURLcode rc, long http_status, const Exchange& ex, const std::string& what) {
  std::string prefix = s.name() + ": " + what;
  if (s.config.family == Family::http && http_status >= 400) {
    int err = http_status == 404 || http_status == 410 ? ENOENT
              : http_status == 401 || http_status == 403 ? EACCES
                                                         : EIO;
    throw Error(err, prefix + ": the server answered HTTP " + std::to_string(http_status));
  }
  int err = EIO;
  switch (rc) {
    case CURLE_OPERATION_TIMEDOUT: err = ETIMEDOUT; break;
    case CURLE_REMOTE_FILE_NOT_FOUND:
    case CURLE_TFTP_NOTFOUND: err = ENOENT; break;
    case CURLE_LOGIN_DENIED:
    case CURLE_REMOTE_ACCESS_DENIED:
    case CURLE_TFTP_PERM: err = EACCES; break;
    case CURLE_COULDNT_CONNECT: err = ECONNREFUSED; break;
    case CURLE_UNSUPPORTED_PROTOCOL: err = EPROTONOSUPPORT; break;
    case CURLE_ABORTED_BY_CALLBACK: err = ECANCELED; break;
    default: break;
  }
  std::string detail = ex.error[0] ? std::string(ex.error) : std::string(curl_easy_strerror(rc));
  if (rc == CURLE_OPERATION_TIMEDOUT) detail += " (no progress for " + std::to_string(s.config.timeout) + " s)";
  throw Error(err, prefix + ": " + detail);
}

// A proxy that refuses the tunnel (HTTPS through a proxy: CONNECT answered 401/403/407)
// will not change its mind: fail at once instead of retrying.
void refused_by_proxy(const Session& s, CURL* e) {
  long code = 0;
  curl_easy_getinfo(e, CURLINFO_HTTP_CONNECTCODE, &code);
  if (code >= 400)
    throw Error(code == 401 || code == 403 || code == 407 ? EACCES : EIO,
                s.name() + ": cannot open: the proxy answered HTTP " + std::to_string(code) + " to CONNECT");
}

// The background stream for servers without ranges and for TFTP: one sequential transfer;
// reads wait until it passes them. TFTP sends a block only when the previous one is
// acknowledged, and libcurl acknowledges when the write callback returns, so the callback
// does as little as it can, all on the loop thread (worker threads would compete for the
// CPUs with the lock-step pair of server and loop):
//  - bytes that reads are waiting for are copied straight into their buffers, once;
//  - other bytes are copied into pieces in memory, written to the sparse cache file right
//    after the callback (posted), and kept in memory a while (kStreamKeep) for late reads.
// Bytes handed to waiting reads are not written to the cache file: a copy streams each byte
// exactly once. Should a read come back for such bytes (a hole), a second transfer from the
// start fills the holes, and from then on every byte goes to the cache file.
// Where a read's bytes go: the caller's buffer, or a file through a FileStreamWriter (which
// takes them in order). A failed file write is kept; it ends the read.
struct ReadDestination {
  std::span<std::byte> buf;  // for a file: only its size counts
  FileStreamWriter* file = nullptr;
  int write_error = 0;
  std::uint64_t size() const { return buf.size(); }
  // Puts `n` bytes at `at` of the read (for a file, `at` follows what it has).
  void put(std::uint64_t at, const char* data, std::size_t n) {
    if (!file) std::memcpy(buf.data() + at, data, n);
    else if (!write_error) write_error = file->append(data, n);
  }
  static ReadDestination into_file(std::uint64_t length, FileStreamWriter& writer) {
    return {{static_cast<std::byte*>(nullptr), static_cast<std::size_t>(length)}, &writer};
  }
};

struct Stream : std::enable_shared_from_this<Stream> {
  struct Piece {
    std::uint64_t offset = 0;
    Buffer bytes;
    std::size_t used = 0, flushed = 0;  // bytes [offset, offset + flushed) are in the cache file
    std::uint64_t end() const { return offset + used; }
  };
  // A read waiting for bytes the stream has not passed yet.
  struct Target {
    std::uint64_t offset;  // of the first byte
    ReadDestination to;
    std::vector<char> deferred;  // TFTP: bytes for the file not written yet
    std::uint64_t end() const { return offset + to.size(); }
    void write_deferred() {
      if (!deferred.empty() && !to.write_error) to.write_error = to.file->append(deferred.data(), deferred.size());
      deferred.clear();
    }
  };

  explicit Stream(std::shared_ptr<Session> s) : session(std::move(s)), progress(session->executor), done(session->executor) {}
  ~Stream() {
    if (fd >= 0) ::close(fd);
  }
  std::shared_ptr<Session> session;
  int fd = -1;
  std::uint64_t streamed = 0;           // the stream has passed [0, streamed)
  std::optional<std::uint64_t> size;    // announced (tsize, Content-Length) or final
  bool started = false, finished = false, closing = false, flush_posted = false, deferred_posted = false;
  bool keep_all = false;                // a hole was wanted: every byte goes to the cache file
  bool refilling = false;
  std::optional<Error> failure;         // the transfer failed (bytes below `streamed` stay good)
  std::optional<Error> cache_failure;   // the cache file failed: nothing can be read any more
  std::optional<Error> refill_failure;
  AsyncCondition progress;              // streamed, size, holes or the end changed
  AsyncEvent done;                      // the stream coroutine has ended
  std::multiset<std::uint64_t> waiting; // ends that readers wait for
  std::multimap<std::uint64_t, Target*> targets;
  std::deque<Piece> pieces;             // in order, not overlapping, below `streamed`
  std::map<std::uint64_t, std::uint64_t> holes;  // start -> end: passed, in neither memory nor file
  std::uint64_t in_memory = 0;          // bytes held by `pieces`
  std::vector<Buffer> spare;            // recycled piece buffers: fresh ones cost page faults

  void open_cache_file() {
    const char* dir = std::getenv("TMPDIR");
    std::string tmpl = std::string(dir && *dir ? dir : "/tmp") + "/netblk-curl-XXXXXX";
    fd = mkostemp(tmpl.data(), O_CLOEXEC);
    if (fd < 0) throw_errno(errno, session->name() + ": cannot create a cache file in " + tmpl);
    // Unlinked at once: the cache lives as long as the descriptor.
    ::unlink(tmpl.c_str());
  }

  void wake_if_due() {
    if (!waiting.empty() && streamed >= *waiting.begin()) progress.notify_all();
  }

  void set_cache_failure(int err) {
    if (!cache_failure)
      cache_failure = Error(err, session->name() + ": cannot write the stream cache file: " + std::strerror(err));
    progress.notify_all();
  }
  bool write_file(const std::byte* data, std::size_t n, std::uint64_t at) {
    if (int err = pwrite_fully(fd, data, n, at)) {
      set_cache_failure(err);
      return false;
    }
    return true;
  }

  // Writes the pieces' new bytes to the cache file, then lets the oldest pieces go beyond
  // kStreamKeep.
  void flush() {
    for (Piece& p : pieces) {
      if (p.flushed < p.used && !cache_failure) {
        if (!write_file(p.bytes.data() + p.flushed, p.used - p.flushed, p.offset + p.flushed)) return;
        p.flushed = p.used;
      }
    }
    while (in_memory > kStreamKeep && pieces.size() > 1 && pieces.front().flushed == pieces.front().used) {
      in_memory -= pieces.front().bytes.size();
      if (spare.size() < kStreamSpare) spare.push_back(std::move(pieces.front().bytes));
      pieces.pop_front();
    }
  }
  void write_deferred_soon() {
    if (deferred_posted) return;
    deferred_posted = true;
    asio::post(session->executor, [self = shared_from_this()] {
      self->deferred_posted = false;
      for (auto& [off, t] : self->targets)
        if (t->to.file) t->write_deferred();
    });
  }
  void flush_soon() {
    if (flush_posted) return;
    flush_posted = true;
    asio::post(session->executor, [self = shared_from_this()] {
      self->flush_posted = false;
      self->flush();
    });
  }

  void add_hole(std::uint64_t from, std::uint64_t to) {
    if (!holes.empty()) {
      auto last = std::prev(holes.end());
      if (last->second == from) {
        last->second = to;
        return;
      }
    }
    holes.emplace(from, to);
  }
  bool has_hole(std::uint64_t from, std::uint64_t to) const {
    auto it = holes.upper_bound(from);
    if (it != holes.begin() && std::prev(it)->second > from) return true;
    return it != holes.end() && it->first < to;
  }
  // The refill wrote [from, to) to the cache file.
  void fill_holes(const char* data, std::uint64_t from, std::uint64_t to) {
    auto it = holes.upper_bound(from);
    if (it != holes.begin()) --it;
    while (it != holes.end() && it->first < to) {
      std::uint64_t a = std::max(from, it->first), b = std::min(to, it->second);
      if (a >= b) {
        ++it;
        continue;
      }
      if (!write_file(reinterpret_cast<const std::byte*>(data + (a - from)), b - a, a)) return;
      std::uint64_t hole_start = it->first, hole_end = it->second;
      it = holes.erase(it);
      if (hole_start < a) holes.emplace(hole_start, a);
      if (b < hole_end) it = holes.emplace(b, hole_end).first;
    }
  }

  // The stream's next n bytes (they start at `streamed`).
  void take(const char* data, std::size_t n) {
    const std::uint64_t from = streamed, to = from + n;
    // Copy into the reads waiting for these bytes; note whether they want every byte.
    std::uint64_t covered_to = from;
    for (auto& [off, t] : targets) {
      if (off >= to) break;
      std::uint64_t a = std::max(from, t->offset), b = std::min(to, t->end());
      if (a >= b) continue;
      if (t->to.file && session->config.family == Family::tftp) {
        // TFTP sends a block only when the one before is acknowledged, and libcurl
        // acknowledges after this callback: write the file after the acknowledgement has
        // gone, while the server sends the next block.
        t->deferred.insert(t->deferred.end(), data + (a - from), data + (b - from));
        write_deferred_soon();
      } else {
        t->to.put(a - t->offset, data + (a - from), b - a);
      }
      if (a <= covered_to) covered_to = std::max(covered_to, b);
    }
    streamed = to;
    if (covered_to >= to && !keep_all) {
      add_hole(from, to);  // every byte went to a read: nothing to keep
      return;
    }
    if (covered_to >= to) {
      write_file(reinterpret_cast<const std::byte*>(data), n, from);
      return;
    }
    for (std::size_t done = 0; done < n;) {
      const std::uint64_t at = from + done;
      if (pieces.empty() || pieces.back().used == pieces.back().bytes.size() || pieces.back().end() != at) {
        Piece p;
        p.offset = at;
        if (!spare.empty()) {
          p.bytes = std::move(spare.back());
          spare.pop_back();
        } else {
          p.bytes = Buffer(kStreamPiece);
        }
        in_memory += p.bytes.size();
        pieces.push_back(std::move(p));
      }
      Piece& p = pieces.back();
      std::size_t m = std::min(n - done, p.bytes.size() - p.used);
      std::memcpy(p.bytes.data() + p.used, data + done, m);
      p.used += m;
      done += m;
    }
    flush_soon();
  }

  // One whole-file transfer; `sink` gets each attempt's body from its start.
  static Task<void> transfer(std::shared_ptr<Stream> self, bool refill) {
    Session& s = *self->session;
    bool tftp_plain = false;
    std::uint64_t passed = 0;  // the refill's bytes so far
    for (int attempt = 0;; ++attempt) {
      Exchange ex;
      std::uint64_t position = 0;  // of this attempt's body
      bool bad_status = false, refill_done = false;
      ex.sink = [&](const char* data, std::size_t n) -> std::size_t {
        if (position == 0 && s.config.family == Family::http && (ex.facts.status < 200 || ex.facts.status > 299)) {
          bad_status = true;
          return 0;
        }
        if (self->closing || self->cache_failure) return 0;
        std::uint64_t end = position + n;
        if (self->size) end = std::min<std::uint64_t>(end, std::max<std::uint64_t>(*self->size, position));
        if (refill) {
          std::uint64_t from = std::max(position, passed);
          if (from < end) self->fill_holes(data + (from - position), from, end);
          passed = std::max(passed, end);
          position += n;
          self->progress.notify_all();
          if (self->holes.empty() || self->holes.begin()->first >= self->streamed) {
            refill_done = true;
            return 0;  // nothing left to fill
          }
          return n;
        }
        // After a restart, what the stream has passed is skipped.
        std::uint64_t from = std::max(position, self->streamed);
        if (from < end) self->take(data + (from - position), static_cast<std::size_t>(end - from));
        position += n;
        self->wake_if_due();
        return n;
      };
      if (!refill) {
        ex.on_total = [&](curl_off_t total) {
          if (!self->size) {
            self->size = static_cast<std::uint64_t>(total);
            self->progress.notify_all();
          }
        };
      }
      Easy e = s.easy(ex);
      if (tftp_plain) curl_easy_setopt(e.get(), CURLOPT_TFTP_NO_OPTIONS, 1L);
      CURLcode rc = co_await s.loop.perform(e.get());
      long status = response_code(e.get());
      if (refill_done) co_return;
      if (rc == CURLE_TFTP_ILLEGAL && s.config.family == Family::tftp && self->streamed == 0 && !tftp_plain) {
        // libcurl rejects a tsize of 0 in the server's option answer (an empty file):
        // ask again without options (512-byte blocks, no tsize).
        tftp_plain = true;
        self->size.reset();
        --attempt;
        continue;
      }
      std::optional<Error> error;
      if (self->closing) {
        error = Error(ECANCELED, s.name() + ": closed");
      } else if (self->cache_failure) {
        error = *self->cache_failure;
      } else {
        std::uint64_t reached = refill ? passed : self->streamed;
        bool complete = rc == CURLE_OK && !bad_status && (!self->size || reached >= *self->size) &&
                        (s.config.family != Family::http || (status >= 200 && status <= 299));
        if (complete) {
          if (!refill) {
            self->finished = true;
            if (!self->size) self->size = self->streamed;
          }
          co_return;
        }
        if (rc == CURLE_OK && !bad_status && status < 400) rc = CURLE_PARTIAL_FILE;  // ended early
        if (attempt < kMaxRetries && transient(rc, bad_status || rc == CURLE_OK ? status : 0)) {
          NETBLK_LOG(info, "{}: stream failed at byte {} ({}), retrying", s.name(), reached, curl_easy_strerror(rc));
          co_await sleep_for(backoff(attempt));
          continue;
        }
        try {
          fail(s, rc, bad_status || rc == CURLE_OK ? status : 0, ex, "streaming failed at byte " + std::to_string(reached));
        } catch (const Error& err) {
          error = err;
        }
      }
      if (refill) self->refill_failure = *error;
      else self->failure = *error;
      co_return;
    }
  }

  static Task<void> run(std::shared_ptr<Stream> self) {
    co_await transfer(self, false);
    self->flush();
    self->progress.notify_all();
    self->done.set();
  }
  static Task<void> run_refill(std::shared_ptr<Stream> self) {
    co_await transfer(self, true);
    self->refilling = false;
    self->progress.notify_all();
  }

  void start() {
    if (started) return;
    started = true;
    if (fd < 0) open_cache_file();
    asio::co_spawn(session->executor, run(shared_from_this()), asio::detached);
  }

  // Copies [offset, end) (passed by the stream, no hole in it) from the pieces and the file.
  void copy_passed(std::uint64_t offset, std::span<std::byte> buf) const {
    const std::uint64_t end = offset + buf.size();
    std::uint64_t pos = offset;  // [offset, pos) is done
    auto from_file = [&](std::uint64_t to) {
      while (pos < to) {
        ssize_t n = ::pread(fd, buf.data() + (pos - offset), to - pos, static_cast<off_t>(pos));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) throw_errno(n < 0 ? errno : EIO, session->name() + ": cannot read the stream cache file");
        pos += static_cast<std::uint64_t>(n);
      }
    };
    for (const Piece& p : pieces) {
      if (p.end() <= pos) continue;
      if (p.offset >= end) break;
      from_file(std::max(pos, std::min(end, p.offset)));
      std::uint64_t b = std::min(end, p.end());
      if (pos < b) std::memcpy(buf.data() + (pos - offset), p.bytes.data() + (pos - p.offset), b - pos);
      pos = std::max(pos, b);
    }
    from_file(end);
  }

  // Waits until the stream has passed `end`, or has ended or failed before.
  Task<void> wait_until_passed(std::uint64_t end) {
    while (streamed < end && !finished && !failure && !cache_failure) co_await progress.wait();
  }
  // Throws when the stream cannot bring the bytes up to `end`: its cache file failed, or
  // the transfer failed or ended before them.
  void check_passed(std::uint64_t end) const {
    if (cache_failure) throw *cache_failure;
    if (streamed < end) {
      if (failure) throw *failure;
      throw Error(EIO, session->name() + ": the transfer ended at byte " + std::to_string(streamed) +
                           ", before the announced size (" + std::to_string(size.value_or(0)) + ")");
    }
  }

  // Puts [offset, offset + length) into `file` straight from the stream, in order. False,
  // having written nothing, when the stream has passed `offset` already (read() then
  // serves it from memory or the cache file).
  static Task<bool> read_to_file(std::shared_ptr<Stream> self, std::uint64_t offset, std::uint64_t length,
                                 FileStreamWriter& file) {
    if (!self->started) self->start();
    if (offset < self->streamed) co_return false;
    const std::uint64_t end = offset + length;
    Target target{offset, ReadDestination::into_file(length, file), {}};
    auto registered = self->targets.emplace(offset, &target);
    auto waiting_it = self->waiting.insert(end);
    struct Unregister {
      Stream* s;
      std::multimap<std::uint64_t, Target*>::iterator it;
      std::multiset<std::uint64_t>::iterator waiting;
      ~Unregister() {
        s->targets.erase(it);
        s->waiting.erase(waiting);
      }
    } unregister{self.get(), registered, waiting_it};
    co_await self->wait_until_passed(end);
    target.write_deferred();
    if (const int err = target.to.write_error) throw FileWriteError(err, std::strerror(err));
    self->check_passed(end);
    co_return true;
  }

  // Reads [offset, offset + buf.size()): what the stream has passed from memory or the
  // cache file (holes refilled first), the rest straight from the stream into buf.
  static Task<void> read(std::shared_ptr<Stream> self, std::uint64_t offset, std::span<std::byte> buf) {
    const std::uint64_t end = offset + buf.size();
    if (!self->started) self->start();
    // Register for the part the stream has not passed yet before anything can suspend.
    Target target{std::max(offset, self->streamed),
                  {buf.subspan(std::min<std::uint64_t>(buf.size(), self->streamed > offset ? self->streamed - offset : 0))},
                  {}};
    std::optional<std::multimap<std::uint64_t, Target*>::iterator> registered;
    if (target.to.size()) registered = self->targets.emplace(target.offset, &target);
    struct Unregister {
      Stream* s;
      std::optional<std::multimap<std::uint64_t, Target*>::iterator>& it;
      ~Unregister() {
        if (it) s->targets.erase(*it);
      }
    } unregister{self.get(), registered};
    const std::uint64_t passed_end = end - target.to.size();  // [offset, passed_end) was passed already
    if (offset < passed_end) {
      while (self->has_hole(offset, passed_end) && !self->cache_failure) {
        if (self->refill_failure) throw *self->refill_failure;
        if (!self->refilling) {
          self->keep_all = true;
          self->refilling = true;
          NETBLK_LOG(info, "{}: a read wants bytes the stream gave away; streaming again to fill them", self->session->name());
          asio::co_spawn(self->session->executor, run_refill(self), asio::detached);
        }
        co_await self->progress.wait();
      }
      if (self->cache_failure) throw *self->cache_failure;
      self->copy_passed(offset, buf.first(static_cast<std::size_t>(passed_end - offset)));
    }
    if (registered) {
      auto waiting_it = self->waiting.insert(end);
      struct Unwait {
        std::multiset<std::uint64_t>& set;
        std::multiset<std::uint64_t>::iterator it;
        ~Unwait() { set.erase(it); }
      } unwait{self->waiting, waiting_it};
      co_await self->wait_until_passed(end);
    }
    self->check_passed(end);
  }
};

// A sequential stream (FTP's reads, HTTP's reads into a file): one transfer from the first
// read's offset to the end of the file, whose bytes go straight into the buffers (or files)
// of the reads waiting for them. Bytes nobody waits for yet are kept in memory
// (up to kStreamBuffer) for the reads that come for them soon; past that, the stream
// pauses until a read wants more. A byte that has left the buffer is fetched again with a
// range request of its own.
struct DirectStream {
  explicit DirectStream(std::shared_ptr<Session> s) : session(std::move(s)), done(session->executor) {}

  struct Waiter {
    Waiter(const Executor& ex, std::uint64_t o, ReadDestination d) : offset(o), to(d), ready(ex) {}
    std::uint64_t offset;
    ReadDestination to;
    std::uint64_t filled = 0;
    bool ok = false;
    AsyncEvent ready;
    // Takes bytes that follow what it has.
    void take(const char* data, std::size_t n) {
      to.put(filled, data, n);
      filled += n;
    }
  };
  struct Piece {
    std::uint64_t offset;
    std::vector<char> bytes;
    std::uint64_t taken = 0;  // bytes copied out to reads; all taken: the first to go
  };

  std::shared_ptr<Session> session;
  std::uint64_t start = 0, head = 0;  // the stream began at `start` and has passed `head`
  bool started = false, ended = false, paused = false, closing = false;
  CURL* easy = nullptr;
  std::multimap<std::uint64_t, Waiter*> waiters;
  std::deque<Piece> pieces;     // recent bytes, in order, below `head`
  std::uint64_t buffered = 0;   // bytes in `pieces`
  std::uint64_t untaken = 0;    // bytes in `pieces` that no read has taken yet
  AsyncEvent done;

  // True when a waiter wants bytes at or after `pos`.
  bool wanted_from(std::uint64_t pos) const {
    for (const auto& [off, w] : waiters)
      if (off + w->to.size() > pos) return true;
    return false;
  }

  std::size_t deliver(const char* data, std::size_t n) {
    if (closing) return 0;
    const bool wanted = wanted_from(head);
    // Nobody wants these bytes yet: read ahead only a little (kStreamAhead). Bytes kept for
    // later are copied twice; paused, they wait in the socket for a read to come, and then
    // go straight into its buffer.
    if (!wanted && buffered + n > kStreamBuffer) forget_taken();
    if (!wanted && (untaken + n > kStreamAhead || buffered + n > kStreamBuffer)) {
      paused = true;
      NETBLK_LOG(trace, "{}: stream paused at byte {}", session->name(), head);
      return CURL_WRITEFUNC_PAUSE;  // libcurl keeps these bytes and gives them again
    }
    const std::uint64_t end = head + n;
    std::uint64_t to_waiters = 0;
    for (auto it = waiters.begin(); it != waiters.end();) {
      Waiter* w = it->second;
      std::uint64_t wend = w->offset + w->to.size();
      std::uint64_t from = w->offset + w->filled, to = std::min(wend, end);
      if (from >= head && from < to) {
        w->take(data + (from - head), to - from);
        to_waiters += to - from;
      }
      if (w->filled == w->to.size() || w->to.write_error) {
        w->ok = !w->to.write_error;
        w->ready.set();
        it = waiters.erase(it);
      } else {
        ++it;
      }
    }
    if (to_waiters < n) {
      // Someone may want these soon; keep the piece (a few waiters may overlap, so keep it
      // whole) and forget the oldest beyond the budget.
      Piece piece{head, std::vector<char>(data, data + n), std::min<std::uint64_t>(to_waiters, n)};
      untaken += n - piece.taken;
      pieces.push_back(std::move(piece));
      buffered += n;
      if (buffered > kStreamBuffer) {
        // Forget what reads already took, then (a reader far ahead waits) the oldest.
        forget_taken();
        while (buffered > kStreamBuffer && pieces.size() > 1) {
          buffered -= pieces.front().bytes.size();
          untaken -= pieces.front().bytes.size() - pieces.front().taken;
          pieces.pop_front();
        }
      }
    }
    head = end;
    return n;
  }

  // Forgets the kept pieces that reads have taken whole.
  void forget_taken() {
    for (auto it = pieces.begin(); it != pieces.end();) {
      if (it->taken >= it->bytes.size()) {
        buffered -= it->bytes.size();
        it = pieces.erase(it);
      } else {
        ++it;
      }
    }
  }

  // Gives the waiter what the kept pieces hold from where it stands; returns how many bytes
  // it could.
  std::uint64_t copy_kept(Waiter& w) {
    std::uint64_t done = 0;
    const std::uint64_t offset = w.offset + w.filled, want = w.to.size() - w.filled;
    for (auto& p : pieces) {
      std::uint64_t pos = offset + done;
      if (done == want) break;
      if (pos < p.offset) break;  // a hole
      std::uint64_t pend = p.offset + p.bytes.size();
      if (pos >= pend) continue;
      std::uint64_t m = std::min<std::uint64_t>(want - done, pend - pos);
      w.take(p.bytes.data() + (pos - p.offset), m);
      const std::uint64_t before = p.taken;
      p.taken = std::min<std::uint64_t>(p.bytes.size(), p.taken + m);  // overlapping reads count once
      untaken -= p.taken - before;
      done += m;
    }
    return done;
  }

  void fail_waiters() {
    for (auto& [off, w] : waiters) w->ready.set();
    waiters.clear();
  }

  static Task<void> run(std::shared_ptr<DirectStream> self) {
    Session& s = *self->session;
    Exchange ex;
    bool checked = false;
    ex.sink = [raw = self.get(), &ex, &checked](const char* data, std::size_t n) -> std::size_t {
      // HTTP: only the bytes from `start` on, as asked for (200 for the whole file from 0).
      if (!checked && raw->session->config.family == Family::http) {
        checked = true;
        if (judge_range_answer(ex.facts, raw->start) != RangeAnswer::fits) return 0;
      }
      return raw->deliver(data, n);
    };
    Easy e = s.easy(ex);
    if (self->start) curl_easy_setopt(e.get(), CURLOPT_RESUME_FROM_LARGE, static_cast<curl_off_t>(self->start));
    self->easy = e.get();
    CURLcode rc = co_await s.loop.perform(e.get());
    self->easy = nullptr;
    self->ended = true;
    if (rc != CURLE_OK && !self->closing)
      NETBLK_LOG(info, "{}: the stream ended at byte {} ({}); reading with range requests", s.name(), self->head,
                 curl_easy_strerror(rc));
    self->fail_waiters();
    self->done.set();
  }

  // True when the stream can bring [offset, offset + size): kept, or not passed yet.
  bool can_serve(std::uint64_t offset) const {
    if (!started) return true;
    if (offset >= head) return !ended && offset - head <= kStreamLookahead;
    return !pieces.empty() && offset >= pieces.front().offset;
  }

  // Reads [offset, offset + buf.size()) from the stream. False when the stream cannot
  // bring it (passed and forgotten, ended, failed): use a range request.
  Task<bool> read(std::uint64_t offset, std::span<std::byte> buf, const std::shared_ptr<DirectStream>& self) {
    Waiter w(session->executor, offset, {buf});
    co_return co_await wait_for(w, self);
  }

  // Gives `w` its bytes from the stream; false when the stream cannot bring them all (the
  // waiter's `filled` then says how many it got).
  Task<bool> wait_for(Waiter& w, const std::shared_ptr<DirectStream>& self) {
    const std::uint64_t offset = w.offset;
    if (!started) {
      started = true;
      start = head = offset;
      asio::co_spawn(session->executor, run(self), asio::detached);
    }
    if (offset < head) {
      copy_kept(w);
      if (w.to.write_error) co_return false;
      if (w.filled == w.to.size()) co_return true;
      if (offset + w.filled < head) co_return false;  // a hole in what was kept
    }
    if (ended) co_return false;
    auto it = waiters.emplace(offset, &w);
    if (paused && easy) {
      paused = false;
      NETBLK_LOG(trace, "{}: stream resumed at byte {} for a read at {}", session->name(), head, offset);
      curl_easy_pause(easy, CURLPAUSE_CONT);  // may deliver at once
    }
    struct Unregister {
      DirectStream* s;
      Waiter* w;
      std::multimap<std::uint64_t, Waiter*>::iterator it;
      ~Unregister() {
        if (!w->ready.is_set()) s->waiters.erase(it);
      }
    } unregister{this, &w, it};
    co_await w.ready.wait();
    co_return w.ok;
  }
};

struct CachedRange {
  std::uint64_t offset = 0;
  Buffer data;
  std::uint64_t length = 0;
};

struct InFlight {
  InFlight(const Executor& ex, std::uint64_t o, std::uint64_t l) : offset(o), length(l), done(ex) {}
  std::uint64_t offset, length;
  AsyncEvent done;
};

class CurlNode final : public Node {
 public:
  CurlNode(const Executor& ex, std::shared_ptr<Session> session)
      : Node(ex), session_(std::move(session)), window_(session_->config.readahead) {
    caps_.read_only = true;
    limits_.request_alignment = 1;
    limits_.preferred_alignment = 512;
  }
  ~CurlNode() override {
    if (stream_) stream_->closing = true;
    if (direct_) direct_->closing = true;
    session_->loop.abort_all();
  }

  std::string_view driver() const override { return session_->config.driver; }

  Json options() const override {
    const Config& c = session_->config;
    Json j{{"driver", c.driver}, {"url", c.shown_url}};
    if (c.readahead != kDefaultReadahead) j["readahead"] = c.readahead;
    if (!c.sslverify) j["sslverify"] = false;
    if (c.timeout != kDefaultTimeout) j["timeout"] = c.timeout;
    if (c.cookie_secret) j["cookie-secret"] = *c.cookie_secret;
    if (c.username) j["username"] = *c.username;
    if (c.password_secret) j["password-secret"] = *c.password_secret;
    if (c.proxy_username) j["proxy-username"] = *c.proxy_username;
    if (c.proxy_password_secret) j["proxy-password-secret"] = *c.proxy_password_secret;
    if (c.force_range) j["force-range"] = true;
    return j;
  }

  // The URL alone says everything only when every other option has its default.
  std::string plain_filename() const override { return options().size() == 2 ? session_->config.shown_url : ""; }

  Task<void> open() {
    Config& c = session_->config;
    if (c.family == Family::tftp) {
      // TFTP has no size query: the transfer itself announces tsize, so start it now.
      ranges_ = false;
      stream_ = make_stream();
      stream_->start();
      while (!stream_->size && !stream_->finished && !stream_->failure) co_await stream_->progress.wait();
      if (stream_->failure && !stream_->size) throw *stream_->failure;
      size_ = *stream_->size;
      co_return;
    }
    if (c.family == Family::ftp) {
      co_await probe_head();
      co_return;
    }
    bool known = false;
    if (!c.force_range) known = co_await probe_head();
    if (!known || !ranges_) co_await probe_range();
  }

 protected:
  Task<void> co_read(std::uint64_t offset, std::span<std::byte> buf) override {
    while (!buf.empty()) {
      if (!ranges_) {
        co_await stream_read(offset, buf);
        co_return;
      }
      if (stream_first_) {
        // FTP and FTPS: a sequential stream serves the reads at or a little ahead of its
        // head; a read behind it or far ahead is a range request of its own (FTPS: two TLS
        // handshakes each, so the stream matters even more). (The "Bad PASV/EPSV response"
        // once blamed on FTPS range connections was the loop missing control-connection
        // answers; see CurlLoop::run_idle_transfers_every.) After the stream has ended,
        // what it kept still serves reads.
        if (!direct_) direct_ = std::make_shared<DirectStream>(session_);
        if (direct_->can_serve(offset)) {
          auto keep = direct_;
          if (co_await keep->read(offset, buf, keep)) co_return;
        }
      }
      std::size_t hit = copy_from_cache(offset, buf);
      if (hit) {
        offset += hit;
        buf = buf.subspan(hit);
        continue;
      }
      if (auto f = in_flight_covering(offset)) {
        co_await f->done.wait();
        if (copy_from_cache(offset, buf.subspan(0, std::min<std::size_t>(buf.size(), 1))) == 0) {
          // The fetch failed or its range was evicted: fetch it ourselves below.
        } else {
          continue;
        }
      }
      co_await fetch_with_readahead(offset, buf);
      co_return;
    }
  }

  // The bytes go into the file from libcurl's own buffer (no copy into a caller's buffer,
  // no hand-over to a writer thread), and zero blocks are seen while they are still in
  // cache. Without ranges (TFTP, servers without them) the reads come from the one stream
  // there is. With ranges, sequential reads (a convert's chunks) share one stream, as FTP's
  // memory reads do: a range request per chunk costs a round trip each, and on a small
  // machine a second connection takes a core from the server. A read the stream cannot
  // serve, or the rest of one when the stream ends early, is a range request of its own.
  Task<FileRead> co_read_to_file(std::uint64_t offset, std::uint64_t length, int fd, std::uint64_t fd_offset,
                                 std::uint64_t zero_block) override {
    // Larger -S blocks would be kept whole in memory: leave those to the caller.
    const bool skip = zero_block && zero_block <= kMaxZeroBlock;
    FileStreamWriter writer(fd, fd_offset, skip ? zero_block : kPageSize, skip);
    if (!ranges_) {
      if (!stream_) {
        stream_ = make_stream();
        stream_->size = size_;
      }
      if (!co_await Stream::read_to_file(stream_, offset, length, writer)) co_return FileRead::unsupported;
    } else {
      if (!direct_) direct_ = std::make_shared<DirectStream>(session_);
      std::uint64_t streamed = 0;
      if (direct_->can_serve(offset)) {
        auto keep = direct_;
        DirectStream::Waiter w(executor(), offset, ReadDestination::into_file(length, writer));
        const bool all = co_await keep->wait_for(w, keep);
        if (const int err = w.to.write_error) throw FileWriteError(err, std::strerror(err));
        streamed = all ? length : w.filled;
      }
      if (streamed < length) {
        const bool ranged = co_await fetch_to(offset + streamed, length - streamed,
                                              [&writer](std::uint64_t, const char* data, std::size_t n) {
                                                return writer.append(data, n);
                                              });
        if (!ranged) {
          if (streamed == 0) co_return FileRead::unsupported;  // nothing written: the caller reads
          throw Error(EIO, session_->name() + ": the server stopped honouring byte ranges");
        }
      }
    }
    if (const int err = writer.finish()) throw FileWriteError(err, std::strerror(err));
    co_return skip ? FileRead::zeros_left_out : FileRead::written;
  }

  Task<BlockStatus> co_block_status(std::uint64_t, std::uint64_t length) override {
    co_return BlockStatus{length, kStatusData | kStatusAllocated};
  }

  Task<void> co_close() override {
    if (stream_ && stream_->started && !stream_->done.is_set()) {
      stream_->closing = true;
      session_->loop.abort_all();
      co_await stream_->done.wait();
    }
    if (direct_ && direct_->started && !direct_->done.is_set()) {
      direct_->closing = true;
      session_->loop.abort_all();
      co_await direct_->done.wait();
    }
    session_->loop.abort_all();
  }

 private:
  std::shared_ptr<Stream> make_stream() { return std::make_shared<Stream>(session_); }

  // HEAD (FTP: SIZE), following redirects. Returns whether it gave the size.
  Task<bool> probe_head() {
    Session& s = *session_;
    for (int attempt = 0;; ++attempt) {
      Exchange ex;
      Easy e = s.easy(ex);
      curl_easy_setopt(e.get(), CURLOPT_NOBODY, 1L);
      if (s.config.family == Family::http) {
        curl_easy_setopt(e.get(), CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(e.get(), CURLOPT_MAXREDIRS, 10L);
      }
      CURLcode rc = co_await s.loop.perform(e.get());
      long status = response_code(e.get());
      if (rc != CURLE_OK) {
        refused_by_proxy(s, e.get());
        if (attempt < kMaxRetries && transient(rc, 0)) {
          co_await sleep_for(backoff(attempt));
          continue;
        }
        fail(s, rc, 0, ex, "cannot open");
      }
      if (s.config.family == Family::ftp) {
        curl_off_t length = -1;
        curl_easy_getinfo(e.get(), CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length);
        if (length < 0) throw Error(EIO, s.name() + ": the server did not tell the file's size");
        size_ = static_cast<std::uint64_t>(length);
        ranges_ = true;
        // A range transfer ends by abandoning its data connection (ABOR), so sequential reads
        // come from one whole-file stream and other ranges each get a fresh connection.
        stream_first_ = true;
        co_return true;
      }
      adopt_effective_url(e.get());
      if (status >= 500 && attempt < kMaxRetries && transient(CURLE_OK, status)) {
        co_await sleep_for(backoff(attempt));
        continue;
      }
      if (status == 401 || status == 404 || status == 410) fail(s, rc, status, ex, "cannot open");
      // Anything else that is not a plain answer with a length (e.g. S3 presigned URLs refuse
      // HEAD with 403): ask with a one-byte range instead.
      if (status < 200 || status > 299 || !ex.facts.content_length) co_return false;
      size_ = *ex.facts.content_length;
      ranges_ = ex.facts.accept_ranges && !ex.facts.ranges_refused;
      co_return true;
    }
  }

  // GET "Range: bytes=0-0", following redirects: 206 with Content-Range gives the size
  // and proves ranges work; 200 means the server ignores ranges (its length is the size).
  Task<void> probe_range() {
    Session& s = *session_;
    for (int attempt = 0;; ++attempt) {
      Exchange ex;
      bool got_headers = false;
      ex.sink = [&](const char*, std::size_t) -> std::size_t {
        got_headers = true;
        return 0;  // the headers say all we need
      };
      Easy e = s.easy(ex);
      curl_easy_setopt(e.get(), CURLOPT_RANGE, "0-0");
      curl_easy_setopt(e.get(), CURLOPT_FOLLOWLOCATION, 1L);
      curl_easy_setopt(e.get(), CURLOPT_MAXREDIRS, 10L);
      CURLcode rc = co_await s.loop.perform(e.get());
      long status = response_code(e.get());
      bool ok = rc == CURLE_OK || (rc == CURLE_WRITE_ERROR && got_headers);
      if (!ok || status < 200 || status > 299) {
        refused_by_proxy(s, e.get());
        if (attempt < kMaxRetries && transient(ok ? CURLE_OK : rc, status)) {
          co_await sleep_for(backoff(attempt));
          continue;
        }
        fail(s, ok ? CURLE_OK : rc, status, ex, "cannot open");
      }
      adopt_effective_url(e.get());
      if (status == 206 && ex.facts.content_range && ex.facts.content_range->total) {
        size_ = *ex.facts.content_range->total;
        ranges_ = true;
      } else if (status == 200 && ex.facts.content_length) {
        size_ = *ex.facts.content_length;
        ranges_ = false;
      } else if (status == 206) {
        throw Error(EIO, s.name() + ": the server's partial answer does not tell the file's size");
      } else {
        throw Error(EIO, s.name() + ": the server did not tell the file's size");
      }
      co_return;
    }
  }

  // Redirects are followed once, at open; every block then goes to the final URL.
  void adopt_effective_url(CURL* e) {
    char* effective = nullptr;
    curl_easy_getinfo(e, CURLINFO_EFFECTIVE_URL, &effective);
    if (!effective || session_->url == effective) return;
    std::string final_url = effective;
    if (!same_origin(session_->url, final_url)) session_->send_credentials = false;
    NETBLK_LOG(info, "{}: redirected to {}", session_->name(), redact_password(final_url));
    session_->url = final_url;
  }

  std::size_t copy_from_cache(std::uint64_t offset, std::span<std::byte> buf) {
    for (const auto& c : cache_) {
      if (offset >= c.offset && offset < c.offset + c.length) {
        std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), c.offset + c.length - offset));
        std::memcpy(buf.data(), c.data.data() + (offset - c.offset), n);
        return n;
      }
    }
    return 0;
  }

  std::shared_ptr<InFlight> in_flight_covering(std::uint64_t offset) {
    for (auto& f : in_flight_)
      if (offset >= f->offset && offset < f->offset + f->length) return f;
    return nullptr;
  }

  Task<void> fetch_with_readahead(std::uint64_t offset, std::span<std::byte> buf) {
    // A sequential reader's window doubles up to kMaxWindow; a jump resets it.
    const std::uint64_t base = session_->config.readahead;
    if (offset == next_sequential_) window_ = std::min<std::uint64_t>(std::max(window_ * 2, base), kMaxWindow);
    else window_ = base;
    next_sequential_ = offset + buf.size();
    std::uint64_t extra = 0;
    if (buf.size() < kLargeRead && buf.size() < window_) {
      std::uint64_t end = std::min<std::uint64_t>(offset + window_, size_);
      // Stop where something already cached or in flight begins.
      for (const auto& c : cache_)
        if (c.offset >= offset + buf.size() && c.offset < end) end = c.offset;
      for (const auto& f : in_flight_)
        if (f->offset >= offset + buf.size() && f->offset < end) end = f->offset;
      if (end > offset + buf.size()) extra = end - offset - buf.size();
    }
    if (extra == 0) {
      if (!co_await fetch(offset, buf, {})) co_await fall_back_to_stream(offset, buf);
      co_return;
    }
    auto flight = std::make_shared<InFlight>(executor(), offset + buf.size(), extra);
    in_flight_.push_back(flight);
    Buffer ahead(static_cast<std::size_t>(extra));
    bool ranged = false;
    std::exception_ptr error;
    try {
      ranged = co_await fetch(offset, buf, ahead.span());
    } catch (...) {
      error = std::current_exception();
    }
    in_flight_.remove(flight);
    if (ranged && !error) {
      if (cache_.size() >= kCacheEntries) cache_.pop_front();
      cache_.push_back(CachedRange{flight->offset, std::move(ahead), extra});
    }
    flight->done.set();
    if (error) std::rethrow_exception(error);
    if (!ranged) co_await fall_back_to_stream(offset, buf);
  }

  // One range request into `a` then `b` (see fetch_to).
  Task<bool> fetch(std::uint64_t offset, std::span<std::byte> a, std::span<std::byte> b) {
    co_return co_await fetch_to(offset, a.size() + b.size(), [a, b](std::uint64_t pos, const char* data, std::size_t n) {
      while (n) {
        std::span<std::byte> to = pos < a.size() ? a.subspan(pos) : b.subspan(pos - a.size());
        const std::size_t m = std::min(n, to.size());
        std::memcpy(to.data(), data, m);
        pos += m, data += m, n -= m;
      }
      return 0;
    });
  }

  // One range request of `total` bytes, resumed where it stopped on transient failures.
  // `place(pos, data, n)` puts body bytes at `pos` of the range (each call follows the one
  // before) and returns 0, or an errno: the transfer then ends with a FileWriteError.
  // Returns false when the server ignored the range (answered 200 with the whole file),
  // before any byte was placed.
  template <class Place>
  Task<bool> fetch_to(std::uint64_t offset, std::uint64_t total, Place place) {
    Session& s = *session_;
    int place_error = 0;
    std::uint64_t got = 0;
    for (int attempt = 0;; ++attempt) {
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
      if (attempt < kMaxRetries && transient(rc, http_status)) {
        NETBLK_LOG(info, "{}: range {} failed ({}{}), retrying", s.name(), range, curl_easy_strerror(rc),
                   http_status ? ", HTTP " + std::to_string(http_status) : std::string());
        co_await sleep_for(backoff(attempt));
        continue;
      }
      if (bad_status && http_status < 400) {
        throw Error(EIO, s.name() + ": the server answered range " + range + " with HTTP " + std::to_string(status) +
                             " and the wrong bytes");
      }
      fail(s, rc, http_status, ex, "reading " + std::to_string(total) + " bytes at offset " + std::to_string(offset));
    }
  }

  Task<void> fall_back_to_stream(std::uint64_t offset, std::span<std::byte> buf) {
    ranges_ = false;
    co_await stream_read(offset, buf);
  }

  Task<void> stream_read(std::uint64_t offset, std::span<std::byte> buf) {
    if (!stream_) {
      stream_ = make_stream();
      stream_->size = size_;
    }
    co_await Stream::read(stream_, offset, buf);
  }

  std::shared_ptr<Session> session_;
  bool ranges_ = true;
  bool stream_first_ = false;  // FTP: read from a sequential stream while it is near
  std::shared_ptr<Stream> stream_;
  std::shared_ptr<DirectStream> direct_;
  std::uint64_t window_;
  std::uint64_t next_sequential_ = ~std::uint64_t{0};
  std::deque<CachedRange> cache_;
  std::list<std::shared_ptr<InFlight>> in_flight_;
};

std::optional<std::string> secret_option(spec::Options& o, const std::string& key, std::string& value) {
  auto id = o.str(key);
  if (id) value = secrets::lookup(*id);
  return id;
}

Task<std::unique_ptr<Node>> open_curl(const OpenContext& ctx, spec::Options& o, const std::string& driver) {
  Config c;
  c.driver = driver;
  c.family = family_of(driver);
  auto url = o.str("url");
  if (!url || url->empty()) throw Error(EINVAL, "curl block driver requires an 'url' option");
  c.url = *url;
  std::string scheme = url_scheme(c.url);
  std::string family_schemes = allowed_protocols(c.family);
  bool scheme_ok = false;
  for (std::string_view rest = family_schemes; !rest.empty();) {
    auto comma = rest.find(',');
    if (rest.substr(0, comma) == scheme) scheme_ok = true;
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
  }
  if (!scheme_ok)
    throw Error(EINVAL, "The '" + driver + "' driver cannot open '" + redact_password(c.url) + "': its scheme is not " +
                            family_schemes);
  c.shown_url = redact_password(c.url);
  c.readahead = o.size("readahead", kDefaultReadahead);
  if (c.readahead % 512)
    throw Error(EINVAL, "HTTP_READAHEAD_SIZE " + std::to_string(c.readahead) + " is not a multiple of 512");
  c.sslverify = o.boolean("sslverify", true);
  c.timeout = o.uint("timeout", kDefaultTimeout, UINT64_MAX);
  if (c.timeout > kMaxTimeout) throw Error(EINVAL, "timeout parameter is too large or negative");
  auto cookie = o.str("cookie");
  if (cookie && o.has("cookie-secret")) throw Error(EINVAL, "curl driver cannot handle both cookie and cookie secret");
  c.cookie_secret = secret_option(o, "cookie-secret", c.cookie);
  if (cookie) c.cookie = *cookie, c.has_cookie = true;
  c.username = o.str("username");
  c.password_secret = secret_option(o, "password-secret", c.password);
  c.proxy_username = o.str("proxy-username");
  c.proxy_password_secret = secret_option(o, "proxy-password-secret", c.proxy_password);
  c.force_range = o.boolean("force-range", false);
  o.finish();  // reject unknown options before connecting anywhere

  auto session = std::make_shared<Session>(ctx.executor, std::move(c));
  auto node = std::make_unique<CurlNode>(ctx.executor, session);
  co_await node->open();
  NETBLK_LOG(debug, "{}: {} bytes", session->name(), node->size());
  co_return node;
}

void parse_curl_filename(const std::string& filename, Json& options) { options["url"] = filename; }

ProtocolDriver make_driver(const std::string& name) {
  return ProtocolDriver{
      .name = name,
      .prefixes = {name},
      .parse_filename = parse_curl_filename,
      .open = [name](const OpenContext& ctx, spec::Options& o) { return open_curl(ctx, o, name); },
      .create = nullptr,
  };
}

const DriverRegistration kHttp{make_driver("http")};
const DriverRegistration kHttps{make_driver("https")};
const DriverRegistration kFtp{make_driver("ftp")};
const DriverRegistration kFtps{make_driver("ftps")};
const DriverRegistration kTftp{make_driver("tftp")};

}  // namespace
}  // namespace netblk::curlproto
