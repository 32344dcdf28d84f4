#include "protocols/curl/sequential_stream.hpp"

#include "core/log.hpp"

namespace netblk::curlproto {
namespace {

// Reads up to this far ahead of the stream's head wait for it rather than opening a data
// connection of their own.
constexpr std::uint64_t kStreamLookahead = 32u << 20;
// How many bytes the stream keeps in memory, and how far it reads ahead of every read.
constexpr std::uint64_t kStreamBuffer = 32u << 20;
constexpr std::uint64_t kStreamAhead = 1u << 20;

}  // namespace

bool SequentialStream::wanted_from(std::uint64_t pos) const {
  for (const auto& [off, w] : waiters)
    if (off + w->to.size() > pos) return true;
  return false;
}

std::size_t SequentialStream::deliver(const char* data, std::size_t n) {
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

void SequentialStream::forget_taken() {
  for (auto it = pieces.begin(); it != pieces.end();) {
    if (it->taken >= it->bytes.size()) {
      buffered -= it->bytes.size();
      it = pieces.erase(it);
    } else {
      ++it;
    }
  }
}

std::uint64_t SequentialStream::copy_kept(Waiter& w) {
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

void SequentialStream::fail_waiters() {
  for (auto& [off, w] : waiters) w->ready.set();
  waiters.clear();
}

Task<void> SequentialStream::run(std::shared_ptr<SequentialStream> self) {
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

bool SequentialStream::can_serve(std::uint64_t offset) const {
  if (!started) return true;
  if (offset >= head) return !ended && offset - head <= kStreamLookahead;
  return !pieces.empty() && offset >= pieces.front().offset;
}

Task<bool> SequentialStream::read(std::uint64_t offset, std::span<std::byte> buf,
                                  const std::shared_ptr<SequentialStream>& self) {
  Waiter w(session->executor, offset, {buf});
  co_return co_await wait_for(w, self);
}

Task<bool> SequentialStream::wait_for(Waiter& w, const std::shared_ptr<SequentialStream>& self) {
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
    SequentialStream* s;
    Waiter* w;
    std::multimap<std::uint64_t, Waiter*>::iterator it;
    ~Unregister() {
      if (!w->ready.is_set()) s->waiters.erase(it);
    }
  } unregister{this, &w, it};
  co_await w.ready.wait();
  co_return w.ok;
}

}  // namespace netblk::curlproto
