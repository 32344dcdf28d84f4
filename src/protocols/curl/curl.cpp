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
//
// This file holds the node (probing at open, the readahead cache, choosing between ranges
// and streams) and the drivers' registration. Around it: options.* (the options and their
// canonical form), session.* (easy handles, failures, retries, range requests),
// cache_stream.* and sequential_stream.* (the two streams), curl_loop.* (libcurl's multi
// handle on the event loop).
#include <algorithm>
#include <cstring>
#include <deque>
#include <list>

#include "block/driver.hpp"
#include "core/file_io.hpp"
#include "core/log.hpp"
#include "netblk/buffer.hpp"
#include "protocols/curl/cache_stream.hpp"
#include "protocols/curl/options.hpp"
#include "protocols/curl/sequential_stream.hpp"
#include "protocols/curl/session.hpp"
#include "protocols/curl/url.hpp"
#include "spec/uri.hpp"

namespace netblk::curlproto {
namespace {

constexpr std::uint64_t kMaxWindow = 4u << 20;  // the largest a growing readahead gets
constexpr std::uint64_t kLargeRead = 1u << 20;  // reads this large get no readahead
constexpr std::size_t kCacheEntries = 8;
constexpr std::size_t kPageSize = 4096;            // read_to_file() writes whole pages
constexpr std::uint64_t kMaxZeroBlock = 1u << 20;  // and looks for zero blocks up to this size

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
    if (sequential_) sequential_->closing = true;
    session_->loop.abort_all();
  }

  std::string_view driver() const override { return session_->config.driver; }

  Json options() const override { return config_options(session_->config); }

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
        if (!sequential_) sequential_ = std::make_shared<SequentialStream>(session_);
        if (sequential_->can_serve(offset)) {
          auto keep = sequential_;
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
      if (!co_await CacheStream::read_to_file(stream_, offset, length, writer)) co_return FileRead::unsupported;
    } else {
      if (!sequential_) sequential_ = std::make_shared<SequentialStream>(session_);
      std::uint64_t streamed = 0;
      if (sequential_->can_serve(offset)) {
        auto keep = sequential_;
        SequentialStream::Waiter w(executor(), offset, ReadDestination::into_file(length, writer));
        const bool all = co_await keep->wait_for(w, keep);
        if (const int err = w.to.write_error) throw FileWriteError(err, std::strerror(err));
        streamed = all ? length : w.filled;
      }
      if (streamed < length) {
        const bool ranged = co_await fetch_range(*session_, offset + streamed, length - streamed,
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
    if (sequential_ && sequential_->started && !sequential_->done.is_set()) {
      sequential_->closing = true;
      session_->loop.abort_all();
      co_await sequential_->done.wait();
    }
    session_->loop.abort_all();
  }

 private:
  std::shared_ptr<CacheStream> make_stream() { return std::make_shared<CacheStream>(session_); }

  // HEAD (FTP: SIZE), following redirects. Returns whether it gave the size.
  Task<bool> probe_head() {
    Session& s = *session_;
    Backoff retry(kRetryPolicy);
    for (;;) {
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
        if (retry.attempts() < kMaxRetries && transient(rc, 0)) {
          co_await retry.wait();
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
      if (status >= 500 && retry.attempts() < kMaxRetries && transient(CURLE_OK, status)) {
        co_await retry.wait();
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
    Backoff retry(kRetryPolicy);
    for (;;) {
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
        if (retry.attempts() < kMaxRetries && transient(ok ? CURLE_OK : rc, status)) {
          co_await retry.wait();
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
    NETBLK_LOG(info, "{}: redirected to {}", session_->name(), spec::redact_password(final_url));
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

  // One range request into `a` then `b` (see fetch_range).
  Task<bool> fetch(std::uint64_t offset, std::span<std::byte> a, std::span<std::byte> b) {
    auto place = [a, b](std::uint64_t pos, const char* data, std::size_t n) {
      while (n) {
        std::span<std::byte> to = pos < a.size() ? a.subspan(pos) : b.subspan(pos - a.size());
        const std::size_t m = std::min(n, to.size());
        std::memcpy(to.data(), data, m);
        pos += m, data += m, n -= m;
      }
      return 0;
    };
    co_return co_await fetch_range(*session_, offset, a.size() + b.size(), place);
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
    co_await CacheStream::read(stream_, offset, buf);
  }

  std::shared_ptr<Session> session_;
  bool ranges_ = true;
  bool stream_first_ = false;  // FTP: read from a sequential stream while it is near
  std::shared_ptr<CacheStream> stream_;
  std::shared_ptr<SequentialStream> sequential_;
  std::uint64_t window_;
  std::uint64_t next_sequential_ = ~std::uint64_t{0};
  std::deque<CachedRange> cache_;
  std::list<std::shared_ptr<InFlight>> in_flight_;
};

Task<std::unique_ptr<Node>> open_curl(const OpenContext& ctx, spec::Options& o, const std::string& driver) {
  auto session = std::make_shared<Session>(ctx.executor, parse_config(o, driver));
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
      .library_version = [] { return std::string("libcurl ") + curl_version_info(CURLVERSION_NOW)->version; },
  };
}

const DriverRegistration kHttp{make_driver("http")};
const DriverRegistration kHttps{make_driver("https")};
const DriverRegistration kFtp{make_driver("ftp")};
const DriverRegistration kFtps{make_driver("ftps")};
const DriverRegistration kTftp{make_driver("tftp")};

}  // namespace
}  // namespace netblk::curlproto
