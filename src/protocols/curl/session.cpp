#include "protocols/curl/session.hpp"

#include <cstdlib>

#include "protocols/curl/tls.hpp"

namespace netblk::curlproto {
namespace {

constexpr long kTftpBlockSize = 65464;  // RFC 2348's maximum

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

}  // namespace

Session::Session(Executor ex, Config c)
    : config(std::move(c)), loop(ex, connection_limit(c.family)), executor(std::move(ex)) {
  // libcurl's FTP data-connection setup goes unreported to the socket callback (see
  // CurlLoop::run_idle_transfers_every): keep FTP transfers moving when no event comes.
  if (config.family == Family::ftp) loop.run_idle_transfers_every(std::chrono::milliseconds(50));
  share = curl_share_init();
  if (share) {
    curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
  }
  url = config.url;
}

Session::~Session() {
  loop.abort_all();
  // Before the share they use goes; a handle released later is cleaned up at once.
  pool->closed = true;
  for (CURL* e : pool->idle) curl_easy_cleanup(e);
  pool->idle.clear();
  if (share) curl_share_cleanup(share);
}

Easy Session::easy(Exchange& ex) const {
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
    // Less than kMinSpeed over `timeout` seconds ends a transfer (and it is retried): a
    // server that trickles a few bytes a second is given up like a silent one, while a
    // slow but useful one (nginx's limit_rate 16k) goes on. A paused transfer is not
    // measured (libcurl skips the check while receiving is paused).
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, static_cast<long>(config.timeout));
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, kMinSpeed);
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

bool transient(CURLcode rc, long http_status, Family family, std::uint64_t received) {
  if (rc == CURLE_OPERATION_TIMEDOUT && family == Family::tftp && received > 0) return true;
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
  if (rc == CURLE_OPERATION_TIMEDOUT)
    detail += " (no progress, or under " + std::to_string(kMinSpeed) + " bytes/s, for " +
              std::to_string(s.config.timeout) + " s)";
  throw Error(err, prefix + ": " + detail);
}

void refused_by_proxy(const Session& s, CURL* e) {
  long code = 0;
  curl_easy_getinfo(e, CURLINFO_HTTP_CONNECTCODE, &code);
  if (code >= 400)
    throw Error(code == 401 || code == 403 || code == 407 ? EACCES : EIO,
                s.name() + ": cannot open: the proxy answered HTTP " + std::to_string(code) + " to CONNECT");
}

}  // namespace netblk::curlproto
