// Reads served in order from one transfer (FTP's reads, HTTP's reads into a file).
#pragma once
#include <curl/curl.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "protocols/curl/read_destination.hpp"
#include "protocols/curl/session.hpp"

namespace netblk::curlproto {

// A sequential stream (FTP's reads, HTTP's reads into a file): one transfer from the first
// read's offset to the end of the file, whose bytes go straight into the buffers (or files)
// of the reads waiting for them. Bytes nobody waits for yet are kept in memory
// (up to kStreamBuffer) for the reads that come for them soon; past that, the stream
// pauses until a read wants more. A byte that has left the buffer is fetched again with a
// range request of its own.
//
// The node asks can_serve() first and, when it may, read() or wait_for(); what they cannot
// bring it fetches with range requests. `closing` with abort_all() ends the transfer
// (`done` is set when it has).
struct SequentialStream {
  explicit SequentialStream(std::shared_ptr<Session> s) : session(std::move(s)), done(session->executor) {}

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
  bool wanted_from(std::uint64_t pos) const;

  std::size_t deliver(const char* data, std::size_t n);

  // Forgets the kept pieces that reads have taken whole.
  void forget_taken();

  // Gives the waiter what the kept pieces hold from where it stands; returns how many bytes
  // it could.
  std::uint64_t copy_kept(Waiter& w);

  void fail_waiters();

  static Task<void> run(std::shared_ptr<SequentialStream> self);

  // True when the stream can bring [offset, offset + size): kept, or not passed yet.
  bool can_serve(std::uint64_t offset) const;

  // Reads [offset, offset + buf.size()) from the stream. False when the stream cannot
  // bring it (passed and forgotten, ended, failed): use a range request.
  Task<bool> read(std::uint64_t offset, std::span<std::byte> buf, const std::shared_ptr<SequentialStream>& self);

  // Gives `w` its bytes from the stream; false when the stream cannot bring them all (the
  // waiter's `filled` then says how many it got).
  Task<bool> wait_for(Waiter& w, const std::shared_ptr<SequentialStream>& self);
};

}  // namespace netblk::curlproto
