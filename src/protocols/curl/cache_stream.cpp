#include "protocols/curl/cache_stream.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/log.hpp"

namespace netblk::curlproto {
namespace {

// Memory holds the newest bytes in pieces of kStreamPiece, and kStreamKeep of them
// (already in the cache file) for reads that come a little late.
constexpr std::size_t kStreamPiece = 1u << 20;
constexpr std::uint64_t kStreamKeep = 16u << 20;
constexpr std::size_t kStreamSpare = 4;

}  // namespace

CacheStream::~CacheStream() {
  if (fd >= 0) ::close(fd);
}

void CacheStream::open_cache_file() {
  const char* dir = std::getenv("TMPDIR");
  std::string tmpl = std::string(dir && *dir ? dir : "/tmp") + "/netblk-curl-XXXXXX";
  fd = mkostemp(tmpl.data(), O_CLOEXEC);
  if (fd < 0) throw_errno(errno, session->name() + ": cannot create a cache file in " + tmpl);
  // Unlinked at once: the cache lives as long as the descriptor.
  ::unlink(tmpl.c_str());
}

void CacheStream::wake_if_due() {
  if (!waiting.empty() && streamed >= *waiting.begin()) progress.notify_all();
}

void CacheStream::set_cache_failure(int err) {
  if (!cache_failure)
    cache_failure = Error(err, session->name() + ": cannot write the stream cache file: " + std::strerror(err));
  progress.notify_all();
}

bool CacheStream::write_file(const std::byte* data, std::size_t n, std::uint64_t at) {
  if (int err = pwrite_fully(fd, data, n, at)) {
    set_cache_failure(err);
    return false;
  }
  return true;
}

void CacheStream::flush() {
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

void CacheStream::write_deferred_soon() {
  if (deferred_posted) return;
  deferred_posted = true;
  asio::post(session->executor, [self = shared_from_this()] {
    self->deferred_posted = false;
    for (auto& [off, t] : self->targets)
      if (t->to.file) t->write_deferred();
  });
}

void CacheStream::flush_soon() {
  if (flush_posted) return;
  flush_posted = true;
  asio::post(session->executor, [self = shared_from_this()] {
    self->flush_posted = false;
    self->flush();
  });
}

void CacheStream::add_hole(std::uint64_t from, std::uint64_t to) {
  if (!holes.empty()) {
    auto last = std::prev(holes.end());
    if (last->second == from) {
      last->second = to;
      return;
    }
  }
  holes.emplace(from, to);
}

bool CacheStream::has_hole(std::uint64_t from, std::uint64_t to) const {
  auto it = holes.upper_bound(from);
  if (it != holes.begin() && std::prev(it)->second > from) return true;
  return it != holes.end() && it->first < to;
}

void CacheStream::fill_holes(const char* data, std::uint64_t from, std::uint64_t to) {
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

void CacheStream::take(const char* data, std::size_t n) {
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

Task<void> CacheStream::transfer(std::shared_ptr<CacheStream> self, bool refill) {
  Session& s = *self->session;
  bool tftp_plain = false;
  std::uint64_t passed = 0;  // the refill's bytes so far
  Backoff retry(kRetryPolicy);
  for (;;) {
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
      continue;  // not a retry: `retry` counts only the waits after failures
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
      const long failed_status = bad_status || rc == CURLE_OK ? status : 0;
      if (retry.attempts() < kMaxRetries && transient(rc, failed_status, s.config.family, reached)) {
        NETBLK_LOG(info, "{}: stream failed at byte {} ({}), retrying", s.name(), reached, curl_easy_strerror(rc));
        co_await retry.wait();
        continue;
      }
      try {
        fail(s, rc, failed_status, ex, "streaming failed at byte " + std::to_string(reached));
      } catch (const Error& err) {
        error = err;
      }
    }
    if (refill) self->refill_failure = *error;
    else self->failure = *error;
    co_return;
  }
}

Task<void> CacheStream::run(std::shared_ptr<CacheStream> self) {
  co_await transfer(self, false);
  self->flush();
  self->progress.notify_all();
  self->done.set();
}

Task<void> CacheStream::run_refill(std::shared_ptr<CacheStream> self) {
  co_await transfer(self, true);
  self->refilling = false;
  self->progress.notify_all();
}

void CacheStream::start() {
  if (started) return;
  started = true;
  if (fd < 0) open_cache_file();
  asio::co_spawn(session->executor, run(shared_from_this()), asio::detached);
}

void CacheStream::copy_passed(std::uint64_t offset, std::span<std::byte> buf) const {
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

Task<void> CacheStream::wait_until_passed(std::uint64_t end) {
  while (streamed < end && !finished && !failure && !cache_failure) co_await progress.wait();
}

void CacheStream::check_passed(std::uint64_t end) const {
  if (cache_failure) throw *cache_failure;
  if (streamed < end) {
    if (failure) throw *failure;
    throw Error(EIO, session->name() + ": the transfer ended at byte " + std::to_string(streamed) +
                         ", before the announced size (" + std::to_string(size.value_or(0)) + ")");
  }
}

Task<bool> CacheStream::read_to_file(std::shared_ptr<CacheStream> self, std::uint64_t offset,
                                     std::uint64_t length, FileStreamWriter& file) {
  if (!self->started) self->start();
  if (offset < self->streamed) co_return false;
  const std::uint64_t end = offset + length;
  Target target{offset, ReadDestination::into_file(length, file), {}};
  auto registered = self->targets.emplace(offset, &target);
  auto waiting_it = self->waiting.insert(end);
  struct Unregister {
    CacheStream* s;
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

Task<void> CacheStream::read(std::shared_ptr<CacheStream> self, std::uint64_t offset, std::span<std::byte> buf) {
  const std::uint64_t end = offset + buf.size();
  if (!self->started) self->start();
  // Register for the part the stream has not passed yet before anything can suspend.
  Target target{std::max(offset, self->streamed),
                {buf.subspan(std::min<std::uint64_t>(buf.size(), self->streamed > offset ? self->streamed - offset : 0))},
                {}};
  std::optional<std::multimap<std::uint64_t, Target*>::iterator> registered;
  if (target.to.size()) registered = self->targets.emplace(target.offset, &target);
  struct Unregister {
    CacheStream* s;
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

}  // namespace netblk::curlproto
