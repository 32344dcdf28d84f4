// The NBD export server: serves one node over TCP and/or unix sockets with the fixed
// newstyle handshake (NBD_OPT_GO/INFO/EXPORT_NAME/LIST, structured replies, extended
// headers, base:allocation) and pipelined transmission (many requests in flight per
// connection, replies written in batches). All connections share the node and run on the
// server's executor; the node must outlive the server. File data may go out with
// sendfile(), which raises SIGPIPE when the client has gone: the process must ignore
// SIGPIPE (the netblk CLI does).
#pragma once
#include <asio/generic/stream_protocol.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "netblk/node.hpp"

namespace netblk::nbd {

namespace tls {
class ServerCredentials;
}

struct ExportConfig {
  std::string name;         // the export name clients ask for ("" by default, as qemu-nbd)
  std::string description;  // NBD_INFO_DESCRIPTION / NBD_OPT_LIST; may be empty
  bool read_only = false;   // also forced when the node itself is read-only
  int max_clients = 1;      // qemu-nbd's --shared: clients served at once; 0 = unlimited
  bool persistent = false;  // false: stop once the last client has disconnected (qemu-nbd without -t)
  // When set, TLS is required (qemu-nbd --tls-creds): a client must send NBD_OPT_STARTTLS
  // before any other option but NBD_OPT_ABORT.
  std::shared_ptr<const tls::ServerCredentials> tls;
  // A client that has not finished its handshake within this time is disconnected.
  std::chrono::milliseconds handshake_limit{10000};
  // On stop(), connections get this long to finish in-flight requests before being closed.
  std::chrono::milliseconds stop_grace{5000};
};

// Limits a connection holds itself to (a hostile client gets errors, never unbounded memory).
inline constexpr std::size_t kMaxRequestsInFlight = 64;
inline constexpr std::uint64_t kMaxBytesInFlight = 256u << 20;
// The whole server's bound on read and write payloads in flight, over all connections: a
// request waits (unread, its payload left in the socket) until it fits, unless nothing is in
// flight at all. The server's data buffers stay within this plus one request.
inline constexpr std::uint64_t kServerBytesInFlight = 512u << 20;

class Server {
 public:
  Server(Executor executor, Node& node, ExportConfig config);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and listens (before run()). Throws Error naming the address.
  void listen_tcp(const std::string& host, std::uint16_t port);
  // Replaces a stale socket file at `path`; removes it again when the server stops.
  void listen_unix(const std::string& path);
  // Serves an already-connected stream socket (a socketpair in fuzzers and tests, an
  // inherited socket); it counts against max_clients like an accepted one.
  void adopt(asio::generic::stream_protocol::socket socket);
  // The TCP port bound by listen_tcp (useful with port 0), or 0.
  std::uint16_t tcp_port() const;

  // Accepts and serves until stop() is called or, without `persistent`, until the last
  // client has gone. Returns once every connection has finished.
  Task<void> run();
  // Stops accepting, lets connections finish what is in flight (bounded by stop_grace) and
  // makes run() return. Safe to call more than once, from a handler on the executor.
  void stop();

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace netblk::nbd
