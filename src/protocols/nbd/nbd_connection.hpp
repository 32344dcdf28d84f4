// One NBD client connection: a byte stream (TCP or unix socket), the fixed-newstyle
// handshake, and the transmission phase with many requests in flight. Requests are queued
// to one writer coroutine (headers and payloads gathered into few writes); one reader
// coroutine dispatches replies by cookie and reads data straight into the caller's buffer.
// A connection that fails (EOF, reset, no answer for io_timeout) marks its requests
// `lost` so the owner can retry them on a new connection; a reply that breaks the
// protocol fails them with EIO.
//
// connect.cpp opens the socket, handshake.cpp negotiates, transmission.cpp runs Connection.
#pragma once
#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include <asio/buffer.hpp>

#include "nbd/protocol.hpp"
#include "nbd/stream_reader.hpp"
#include "netblk/node.hpp"
#include "protocols/nbd/nbd_config.hpp"

namespace netblk::nbd_client {

// The stream and its buffered reader are the ones the server uses too.
using nbd::Stream;
using nbd::StreamReader;

// Opens a socket to `address` (TCP with TCP_NODELAY, or unix), closed if `deadline` passes.
Task<std::shared_ptr<Stream>> connect_stream(const NbdAddress& address, std::chrono::steady_clock::time_point deadline,
                                             const std::string& name);

// What the handshake learned about the export.
struct ExportInfo {
  std::uint64_t size = 0;
  std::uint16_t flags = 0;  // nbd::kFlag* transmission flags
  bool have_block_sizes = false;
  nbd::BlockSizes block_sizes;
  bool structured = false;  // structured replies negotiated
  bool extended = false;    // extended headers negotiated
  std::optional<std::uint32_t> base_allocation;  // meta context id
};

// Runs the client side of the handshake on a fresh stream (fixed newstyle with
// NBD_OPT_GO, falling back to NBD_OPT_EXPORT_NAME; plain newstyle; oldstyle).
// Throws Error naming `name`: ENOENT for an unknown export, EPROTO for broken replies.
// With TLS, `stream` is replaced by the encrypted stream.
Task<ExportInfo> handshake(StreamReader& reader, std::shared_ptr<Stream>& stream, const NbdConfig& config,
                           const std::string& name);

// One request from submission to reply. Lives in the requesting coroutine's frame.
struct Pending {
  explicit Pending(const Executor& ex) : done(ex) {}
  nbd::Request request;                       // type, flags, offset, length (cookie set by submit)
  std::span<const std::byte> write_data;      // NBD_CMD_WRITE payload
  std::span<std::byte> read_buf;              // NBD_CMD_READ destination, or:
  int read_fd = -1;                           // a file to pwrite the data to, at
  std::uint64_t read_fd_offset = 0;           // this offset (for request.offset)
  std::vector<nbd::Extent> extents;           // NBD_CMD_BLOCK_STATUS answer (base:allocation)
  int error = 0;                              // errno from the server or the protocol
  std::string message;
  bool file_write_failed = false;             // error is read_fd's, not the server's
  bool lost = false;                          // the connection died first: retry elsewhere
  bool replied = false;
  bool queued = false;                        // still waiting in the send queue
  AsyncEvent done;
  std::array<std::byte, nbd::kExtendedRequestSize> header{};
  std::size_t header_size = 0;

  void reset() {
    extents.clear();
    error = 0;
    message.clear();
    lost = replied = queued = file_write_failed = false;
    done.reset();
  }
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(Executor ex, std::shared_ptr<Stream> stream, std::unique_ptr<StreamReader> reader, ExportInfo info,
             std::string name, std::chrono::seconds io_timeout);
  ~Connection();

  // Starts the reader, writer and watchdog coroutines.
  void start();
  bool alive() const noexcept { return alive_; }
  std::size_t in_flight() const noexcept { return pending_.size(); }
  const ExportInfo& info() const noexcept { return info_; }

  // Queues `p`; p.done is set when its reply arrived (or failed) or the connection died.
  void submit(Pending& p);
  // Sends NBD_CMD_DISC (when idle) and closes.
  Task<void> disconnect();
  // Closes the socket now; requests in flight become lost.
  void shutdown(const std::string& why);

  // Called once when the connection dies (not after shutdown()).
  std::function<void(const std::string& why)> on_dead;

 private:
  Task<void> reader_loop();
  Task<void> writer_loop();
  Task<void> watchdog_loop();
  Task<void> read_chunk(Pending& p, const nbd::ReplyHeader& h);
  void finish(Pending& p);
  // Reads n bytes of p's data into its file, `at` bytes past the request's offset.
  Task<void> read_to_file(Pending& p, std::uint64_t at, std::uint64_t n);
  // Records a failed write of a read's data to its file (read_fd) as the request's error.
  void failed_file_write(Pending& p, int error);
  void release_written();
  void fail_all(const std::string& why, bool fatal);
  [[noreturn]] void protocol_error(const std::string& what) const;

  Executor ex_;
  std::shared_ptr<Stream> stream_;
  std::unique_ptr<StreamReader> reader_;
  ExportInfo info_;
  std::string name_;
  std::chrono::seconds io_timeout_;
  bool alive_ = true;
  bool notified_ = false;
  std::uint64_t next_cookie_ = 1;
  std::unordered_map<std::uint64_t, Pending*> pending_;
  std::size_t file_reads_ = 0;  // reads in pending_ whose data goes to a file
  std::vector<Pending*> send_queue_;
  std::vector<Pending*> writing_;  // taken from send_queue_, being written now
  AsyncCondition send_ready_;
  asio::steady_timer watchdog_;
  std::chrono::steady_clock::time_point last_activity_;
};

}  // namespace netblk::nbd_client
