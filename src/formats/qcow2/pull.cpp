// QEMU's block-stream for qcow2 overlays (see pull.hpp).
#include "formats/qcow2/pull.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "netblk/buffer.hpp"

namespace netblk::qcow2 {
namespace {

struct Piece {
  std::uint64_t offset, length;
};

// The ranges the overlay leaves to its backing chain, cut into pieces of at most `piece`.
Task<std::vector<Piece>> missing_pieces(Qcow2Node& overlay, std::uint64_t piece) {
  std::vector<Piece> pieces;
  const std::uint64_t size = overlay.size();
  for (std::uint64_t pos = 0; pos < size;) {
    BlockStatus s = co_await overlay.block_status(pos, size - pos);
    if (!(s.flags & kStatusAllocated)) {
      for (std::uint64_t p = pos; p < pos + s.length;) {
        // Pieces end on multiples of `piece`, so a resumed pull cuts them as the first did.
        const std::uint64_t end = std::min(pos + s.length, (p / piece + 1) * piece);
        if (!pieces.empty() && pieces.back().offset + pieces.back().length == p &&
            pieces.back().length + (end - p) <= piece)
          pieces.back().length += end - p;
        else
          pieces.push_back({p, end - p});
        p = end;
      }
    }
    pos += s.length;
  }
  co_return pieces;
}

struct Pull {
  Qcow2Node& overlay;
  const PullOptions& options;
  std::vector<Piece> pieces;
  std::size_t next = 0;
  std::uint64_t done = 0;  // bytes allocated in the overlay, for progress
  bool failed = false;
  PullResult result;

  // Reads [offset, offset + data.size()) as the backing chain has it; zero ranges the
  // chain knows of are not fetched.
  Task<void> read_chain(Node& backing, std::uint64_t offset, std::span<std::byte> data) {
    const std::uint64_t end = offset + data.size();
    for (std::uint64_t pos = offset; pos < end;) {
      std::byte* at = data.data() + (pos - offset);
      if (pos >= backing.size()) {
        std::memset(at, 0, end - pos);  // past the end of a shorter backing file
        break;
      }
      const std::uint64_t want = std::min(end, backing.size()) - pos;
      ChainStatus c = co_await chain_block_status(backing, pos, want);
      const std::uint64_t n = std::min(c.status.length, want);
      if (c.status.flags & kStatusZero) {
        std::memset(at, 0, n);
      } else {
        co_await backing.read(pos, std::span<std::byte>(at, n));
        result.fetched += n;
      }
      pos += n;
    }
  }

  // What a kill now would make the next run fetch again: the pieces in flight, and the
  // bytes written into the overlay whose L2 entries are not yet written back. Workers wait
  // while the two come to twice flush_every, so a slow checkpoint holds the fetching back
  // instead of letting it run ahead of what is recorded.
  std::uint64_t in_flight = 0;
  std::uint64_t unrecorded = 0;
  std::uint64_t unflushed = 0;  // of those, not yet in a flush under way
  bool flushing = false;
  AsyncCondition recorded;

  Task<void> record(std::uint64_t bytes) {
    unrecorded += bytes;
    unflushed += bytes;
    while (unflushed >= options.flush_every && !flushing) {
      // One flush at a time; the other workers go on meanwhile.
      const std::uint64_t covered = unflushed;
      unflushed = 0;
      flushing = true;
      try {
        co_await overlay.checkpoint();
      } catch (...) {
        flushing = false;
        recorded.notify_all();
        throw;
      }
      flushing = false;
      unrecorded -= covered;
      recorded.notify_all();
    }
  }

  Task<void> worker() {
    Buffer buf(options.piece);
    while (!failed && next < pieces.size()) {
      if (options.wait_turn) co_await options.wait_turn();
      // Nothing in flight and no checkpoint under way: nothing would wake a waiter.
      while (!failed && in_flight + unrecorded + options.piece > 2 * options.flush_every &&
             (in_flight || flushing))
        co_await recorded.wait();
      if (failed || next >= pieces.size()) break;
      const Piece p = pieces[next++];
      in_flight += p.length;  // a failure ends every worker: no guard needed
      // A writer (the guest, or its copy-on-read) may have filled it meanwhile.
      BlockStatus now = co_await overlay.block_status(p.offset, p.length);
      const bool missing = !((now.flags & kStatusAllocated) && now.length == p.length);
      if (missing) {
        Node* backing = co_await overlay.open_backing();
        const auto data = buf.span().first(p.length);
        co_await read_chain(*backing, p.offset, data);
        result.written += co_await overlay.fill_unallocated(p.offset, data);
      }
      // The waiters look again (they run once this worker suspends, after record() has
      // counted the piece): with nothing left in flight, no one else would wake them.
      in_flight -= p.length;
      recorded.notify_all();
      if (missing) co_await record(p.length);
      done += p.length;
      if (options.progress) options.progress(done, overlay.size());
    }
  }
};

}  // namespace

Qcow2Node* qcow2_under(Node& node) {
  Node* n = &node;
  while (n->is_filter() && n->file()) n = n->file();
  return dynamic_cast<Qcow2Node*>(n);
}

Task<std::uint64_t> unallocated_bytes(Qcow2Node& overlay) {
  std::uint64_t missing = 0;
  for (std::uint64_t pos = 0; pos < overlay.size();) {
    BlockStatus s = co_await overlay.block_status(pos, overlay.size() - pos);
    if (!(s.flags & kStatusAllocated)) missing += s.length;
    pos += s.length;
  }
  co_return missing;
}

Task<PullResult> pull(Qcow2Node& overlay, const PullOptions& options) {
  if (!overlay.has_backing()) co_return PullResult{};
  const std::uint64_t cluster = overlay.image_info().cluster_size;
  PullOptions opts = options;
  opts.piece = std::max(cluster, opts.piece / cluster * cluster);
  Executor ex = co_await asio::this_coro::executor;
  Pull pull{overlay, opts, {}, 0, 0, false, {}, 0, 0, 0, false, AsyncCondition(ex)};
  pull.pieces = co_await missing_pieces(overlay, opts.piece);
  std::uint64_t missing = 0;
  for (const Piece& p : pull.pieces) missing += p.length;
  pull.done = overlay.size() - missing;
  if (opts.progress) opts.progress(pull.done, overlay.size());
  auto work = [&pull] { return pull.worker(); };
  auto stop = [&pull] {
    pull.failed = true;
    pull.recorded.notify_all();
  };
  co_await run_concurrently(std::max(1u, opts.requests), work, stop);
  co_await overlay.flush();
  co_return pull.result;
}

}  // namespace netblk::qcow2
