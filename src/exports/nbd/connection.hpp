// The NBD server's connection, shared by the files that run it (private to exports/nbd):
// handshake.cpp negotiates options, transmission.cpp reads requests and runs them on the
// node, replies.cpp builds replies and sends them in batches, server.cpp accepts
// connections and runs each one's life.
//
// One connection = a reader coroutine that parses requests as they arrive (bounded
// in-flight count and bytes), one coroutine per request, and a queue of finished replies
// that one writer coroutine sends, whatever has gathered each time it runs, with
// non-blocking syscalls: one gathered sendmsg, and sendfile for large reads of a file on
// unix sockets. When the node lies in a file held in memory (raw over tmpfs), reads go
// out straight from the file's mapping and, on unix sockets, buffered writes are copied
// into it by the reader (see Node::file_span()). With TLS the writer sends each batch
// through the TLS session.
#pragma once
#include <array>
#include <asio/generic/stream_protocol.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/write.hpp>
#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "core/deadline.hpp"
#include "exports/nbd/server.hpp"
#include "nbd/protocol.hpp"
#include "nbd/stream_reader.hpp"
#include "nbd/tls_session.hpp"
#include "netblk/buffer.hpp"

namespace netblk::nbd {
namespace server_detail {

using Socket = asio::generic::stream_protocol::socket;
constexpr std::uint32_t kBaseAllocationId = 1;
// The input buffer: small until the handshake is done (it grows for a long option), so that
// connections that never finish one cost little; full size for transmission's requests.
constexpr std::size_t kHandshakeInputCapacity = 4u << 10;
constexpr std::size_t kInputCapacity = 256u << 10;
constexpr std::size_t kMaxExtents = 2048;
// Reads at least this large are sent from the file with sendfile when the node lies in one
// and the client is on a unix socket: the kernel passes the page-cache pages to the
// socket, so the server makes no copy. Smaller ones gain more from being gathered with
// other replies into one sendmsg. Over loopback TCP, sendfile was no faster than copying
// from the mapping (decisions.md).
constexpr std::size_t kSendfileMinimum = 32u << 10;
// The send buffer asked for on unix sockets (the kernel caps it at net.core.wmem_max).
// sendfile's replies hold page-cache pages, and the default buffer (208 KiB) let only a
// few 64 KiB replies wait for the client, which then waited for the server.
constexpr int kUnixSendBuffer = 2 << 20;

// A hard disconnect: the peer broke the protocol and the stream cannot be trusted.
struct Disconnect {
  std::string why;
};

// Reusable I/O buffers by power-of-two size class, per connection.
class BufferPool {
 public:
  Buffer get(std::size_t n) {
    std::size_t cls = size_class(n);
    if (cls < kClasses && !free_[cls].empty()) {
      Buffer b = std::move(free_[cls].back());
      free_[cls].pop_back();
      kept_bytes_ -= b.size();
      return b;
    }
    return Buffer(cls < kClasses ? (kMinSize << cls) : n);
  }
  void put(Buffer b) {
    if (b.size() == 0) return;
    std::size_t cls = size_class(b.size());
    if (cls < kClasses && (kMinSize << cls) == b.size() && free_[cls].size() < kKeep &&
        kept_bytes_ + b.size() <= kKeepBytes) {
      kept_bytes_ += b.size();
      free_[cls].push_back(std::move(b));
    }
  }

 private:
  static constexpr std::size_t kMinSize = 4096;
  static constexpr std::size_t kClasses = 9;  // 4 KiB .. 1 MiB
  static constexpr std::size_t kKeep = 80;
  static constexpr std::size_t kKeepBytes = 16u << 20;  // idle buffers kept per connection
  static std::size_t size_class(std::size_t n) {
    std::size_t cls = 0;
    while ((kMinSize << cls) < n && cls < kClasses) ++cls;
    return cls;
  }
  std::array<std::vector<Buffer>, kClasses> free_;
  std::size_t kept_bytes_ = 0;
};

// One finished reply: a small header, an optional data buffer, an optional tail.
struct Reply {
  std::array<std::byte, 64> head{};
  std::size_t head_len = 0;
  Buffer data;
  std::size_t data_len = 0;
  // Read data that lies in a file: sent from there with sendfile (data stays empty; no tail).
  int file_fd = -1;
  std::uint64_t file_offset = 0;
  const std::byte* mapped = nullptr;  // read data in a file mapping, sent from there (no tail)
  std::vector<std::byte> tail;
  std::uint64_t charge = 0;  // bytes counted against kMaxBytesInFlight
};

class Connection;

}  // namespace server_detail

struct Server::Impl : std::enable_shared_from_this<Server::Impl> {
  Impl(Executor ex, Node& n, ExportConfig c)
      : executor(std::move(ex)), node(n), config(std::move(c)), changed(executor), budget_freed(executor) {
    if (node.read_only()) config.read_only = true;
  }

  Executor executor;
  Node& node;
  ExportConfig config;
  std::vector<std::unique_ptr<asio::ip::tcp::acceptor>> tcp_acceptors;
  std::unique_ptr<asio::local::stream_protocol::acceptor> unix_acceptor;
  std::string unix_path;
  std::uint16_t bound_port = 0;

  bool stopping = false;
  bool served_any = false;
  int active = 0;        // connections being served
  int accept_loops = 0;  // accept loops still running
  std::list<std::weak_ptr<server_detail::Connection>> connections;
  AsyncCondition changed;  // any of the above changed
  // Read and write payloads in flight over all connections (kServerBytesInFlight): the sum
  // of every connection's bytes_in_flight_.
  std::uint64_t bytes_in_flight = 0;
  AsyncCondition budget_freed;
  std::unique_ptr<Deadline> grace;  // closes what stop() could not finish

  // Accepts clients on a TCP or unix acceptor while there is room for them.
  template <class Acceptor>
  Task<void> accept_loop(Acceptor& acceptor);
  Task<bool> wait_for_slot();
  void start_connection(server_detail::Socket socket, bool tcp);
  void connection_done();
  void stop();
  std::uint16_t transmission_flags(bool structured) const;
};

namespace server_detail {

// The connection's bytes as a Stream for the shared reader: the socket, or the TLS
// session once NBD_OPT_STARTTLS has succeeded. The connection closes the socket itself.
class ConnectionStream final : public Stream {
 public:
  ConnectionStream(Socket& socket, const std::unique_ptr<tls::Session>& tls) : socket_(socket), tls_(tls) {}
  Task<std::size_t> read_some(std::span<std::byte> out) override {
    if (tls_) co_return co_await tls_->read_some(out);
    co_return co_await socket_.async_read_some(asio::buffer(out.data(), out.size()), asio::use_awaitable);
  }
  Task<void> write(const std::vector<asio::const_buffer>& buffers) override {
    if (tls_) co_return co_await tls_->write(buffers);
    co_await asio::async_write(socket_, buffers, asio::use_awaitable);
  }
  void close() override {}
  int native_handle() override { return socket_.is_open() ? socket_.native_handle() : -1; }

 private:
  Socket& socket_;
  const std::unique_ptr<tls::Session>& tls_;
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  // `unix_socket`: large reads of a file go out with sendfile, writes may land in place.
  Connection(std::shared_ptr<Server::Impl> server, Socket socket, bool unix_socket)
      : unix_socket_(unix_socket),
        server_(std::move(server)),
        node_(server_->node),
        config_(server_->config),
        socket_(std::move(socket)),
        stream_(std::make_shared<ConnectionStream>(socket_, tls_)),
        reader_(stream_, kHandshakeInputCapacity, 1),
        slots_(server_->executor),
        queue_changed_(server_->executor),
        writer_done_(server_->executor) {}

  ~Connection() { release_budget(bytes_in_flight_); }
  Task<void> run();
  // Server stop: stop reading new requests; in-flight ones still complete.
  void request_stop();
  void close_socket();

 private:
  // ---- handshake.cpp: options until transmission ---------------------------
  Task<void> write_all(std::span<const std::byte> bytes);
  Task<void> send_option_reply(std::uint32_t option, std::uint32_t type, std::span<const std::byte> payload = {});
  Task<void> send_option_error(std::uint32_t option, std::uint32_t type, const std::string& message);
  Task<bool> negotiate();
  Task<void> start_tls();
  Task<void> meta_context(std::uint32_t option, std::span<const std::byte> payload);
  BlockSizes block_sizes() const;

  // ---- transmission.cpp: reading requests and running them -----------------
  Task<void> transmission();
  Task<void> read_requests();
  bool write_in_place(const Request& request);
  int validate(const Request& r) const;
  std::string error_text(const Request& r, int err) const;
  static Task<void> handle(std::shared_ptr<Connection> self, Request request, Reply* reply, Buffer data);
  Task<void> execute(const Request& r, Reply& reply, Buffer data);
  Task<void> do_read(const Request& r, Reply& reply);
  bool reply_from_file(const Request& r, Reply& reply, std::size_t len);
  Task<void> do_block_status(const Request& r, Reply& reply);

  // ---- replies.cpp: building replies and the batching writer ---------------
  void encode_read_header(Reply& reply, const Request& r, std::size_t len);
  void finish_hole(Reply& reply, const Request& r);
  void finish_ok(Reply& reply, const Request& r);
  void finish_error(Reply& reply, const Request& r, int err, const std::string& message);
  bool push_out();
  void advance(std::size_t sent);
  Task<void> write_batch_tls();
  Task<void> writer();
  Task<void> drain();

  // ---- small helpers of every part --------------------------------------------
  bool export_matches(const std::string& name) const { return name == config_.name; }
  static std::size_t reply_bytes(const Reply* r) { return r->head_len + r->data_len + r->tail.size(); }
  bool writer_started() const { return transmission_started_; }

  void reset_reply(Reply& reply) {
    if (reply.data.size()) pool_.put(std::move(reply.data));
    reply.data = Buffer();
    reply.data_len = 0;
    reply.file_fd = -1;
    reply.mapped = nullptr;
    reply.head_len = 0;
    reply.tail.clear();
  }

  Reply* acquire_reply() {
    ++in_flight_;
    if (free_replies_.empty()) {
      replies_.push_back(std::make_unique<Reply>());
      return replies_.back().get();
    }
    Reply* r = free_replies_.back();
    free_replies_.pop_back();
    return r;
  }

  // Counts `bytes` of a request's payload against this connection and the server.
  void charge(Reply* r, std::uint64_t bytes) {
    r->charge = bytes;
    bytes_in_flight_ += bytes;
    server_->bytes_in_flight += bytes;
  }
  void release_budget(std::uint64_t bytes) {
    if (!bytes) return;
    server_->bytes_in_flight -= bytes;
    server_->budget_freed.notify_all();
  }

  void release_reply(Reply* r) {
    bytes_in_flight_ -= r->charge;
    release_budget(r->charge);
    r->charge = 0;
    reset_reply(*r);
    free_replies_.push_back(r);
    --in_flight_;
  }

  void enqueue(Reply* r) {
    if (dead_) {
      release_reply(r);
      slots_.notify_all();
      return;
    }
    queue_.push_back(r);
    // The writer runs after the request handlers already scheduled, so replies that finish
    // together leave in one sendmsg (measured: 1.4x the 4k IOPS of one sendmsg per reply).
    queue_changed_.notify_all();
  }

  const bool unix_socket_;
  std::shared_ptr<Server::Impl> server_;
  Node& node_;
  const ExportConfig& config_;
  Socket socket_;

  std::unique_ptr<tls::Session> tls_;  // set once NBD_OPT_STARTTLS has succeeded
  // Every byte the client sends: request headers and options from the buffer, write
  // payloads straight into their buffers (no read-ahead past them).
  std::shared_ptr<ConnectionStream> stream_;
  StreamReader reader_;

  bool negotiating_ = false;
  bool stop_requested_ = false;
  bool no_zeroes_ = false;
  bool structured_ = false;
  bool extended_ = false;
  bool base_allocation_ = false;

  std::size_t in_flight_ = 0;
  std::uint64_t bytes_in_flight_ = 0;
  bool dead_ = false;
  bool reading_done_ = false;
  bool transmission_started_ = false;
  std::size_t partial_ = 0;  // bytes of queue_.front() already sent
  AsyncCondition slots_;          // in-flight count went down
  AsyncCondition queue_changed_;  // replies queued, or the connection is ending
  AsyncEvent writer_done_;
  std::deque<Reply*> queue_;
  std::vector<std::unique_ptr<Reply>> replies_;
  std::vector<Reply*> free_replies_;
  BufferPool pool_;
};

}  // namespace server_detail
}  // namespace netblk::nbd
