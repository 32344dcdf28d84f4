// Reads through a whole-file transfer that fills a cache file (no byte ranges, TFTP).
#pragma once
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <vector>

#include "netblk/buffer.hpp"
#include "netblk/error.hpp"
#include "protocols/curl/read_destination.hpp"
#include "protocols/curl/session.hpp"

namespace netblk::curlproto {

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
//
// The node reads through read() and read_to_file(); `size`, `finished` and `failure`
// (with `progress` to wait for them) tell it the file's size at open (TFTP's tsize), and
// `closing` with abort_all() ends the transfer (`done` is set when it has).
struct CacheStream : std::enable_shared_from_this<CacheStream> {
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

  explicit CacheStream(std::shared_ptr<Session> s)
      : session(std::move(s)), progress(session->executor), done(session->executor) {}
  ~CacheStream();
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

  void open_cache_file();

  void wake_if_due();

  void set_cache_failure(int err);
  bool write_file(const std::byte* data, std::size_t n, std::uint64_t at);

  // Writes the pieces' new bytes to the cache file, then lets the oldest pieces go beyond
  // kStreamKeep.
  void flush();
  void write_deferred_soon();
  void flush_soon();

  void add_hole(std::uint64_t from, std::uint64_t to);
  bool has_hole(std::uint64_t from, std::uint64_t to) const;
  // The refill wrote [from, to) to the cache file.
  void fill_holes(const char* data, std::uint64_t from, std::uint64_t to);

  // The stream's next n bytes (they start at `streamed`).
  void take(const char* data, std::size_t n);

  // One whole-file transfer; `sink` gets each attempt's body from its start.
  static Task<void> transfer(std::shared_ptr<CacheStream> self, bool refill);

  static Task<void> run(std::shared_ptr<CacheStream> self);
  static Task<void> run_refill(std::shared_ptr<CacheStream> self);

  void start();

  // Copies [offset, end) (passed by the stream, no hole in it) from the pieces and the file.
  void copy_passed(std::uint64_t offset, std::span<std::byte> buf) const;

  // Waits until the stream has passed `end`, or has ended or failed before.
  Task<void> wait_until_passed(std::uint64_t end);
  // Throws when the stream cannot bring the bytes up to `end`: its cache file failed, or
  // the transfer failed or ended before them.
  void check_passed(std::uint64_t end) const;

  // Puts [offset, offset + length) into `file` straight from the stream, in order. False,
  // having written nothing, when the stream has passed `offset` already (read() then
  // serves it from memory or the cache file).
  static Task<bool> read_to_file(std::shared_ptr<CacheStream> self, std::uint64_t offset, std::uint64_t length,
                                 FileStreamWriter& file);

  // Reads [offset, offset + buf.size()): what the stream has passed from memory or the
  // cache file (holes refilled first), the rest straight from the stream into buf.
  static Task<void> read(std::shared_ptr<CacheStream> self, std::uint64_t offset, std::span<std::byte> buf);
};

}  // namespace netblk::curlproto
