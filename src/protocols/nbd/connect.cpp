// Connecting: a TCP (TCP_NODELAY) or unix socket to the server's address, within a deadline.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <asio/generic/stream_protocol.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/write.hpp>
#include <cstring>

#include "core/deadline.hpp"
#include "protocols/nbd/nbd_connection.hpp"

namespace netblk::nbd_client {
namespace {

using Clock = std::chrono::steady_clock;
using GenericSocket = asio::generic::stream_protocol::socket;

class SocketStream final : public Stream {
 public:
  explicit SocketStream(const Executor& ex) : socket_(ex) {}
  GenericSocket& socket() { return socket_; }

  Task<std::size_t> read_some(std::span<std::byte> buf) override {
    co_return co_await socket_.async_read_some(asio::buffer(buf.data(), buf.size()), asio::use_awaitable);
  }
  Task<void> write(const std::vector<asio::const_buffer>& buffers) override {
    co_await asio::async_write(socket_, buffers, asio::use_awaitable);
  }
  void close() override {
    std::error_code ec;
    socket_.shutdown(asio::socket_base::shutdown_both, ec);
    socket_.close(ec);
  }
  int native_handle() override { return socket_.is_open() ? socket_.native_handle() : -1; }
  int plain_socket() override { return native_handle(); }
  Task<void> wait_ready(bool write) override {
    co_await socket_.async_wait(write ? GenericSocket::wait_write : GenericSocket::wait_read, asio::use_awaitable);
  }

 private:
  GenericSocket socket_;
};

}  // namespace

Task<std::shared_ptr<Stream>> connect_stream(const NbdAddress& address, Clock::time_point deadline,
                                             const std::string& name) {
  Executor ex = co_await asio::this_coro::executor;
  auto stream = std::make_shared<SocketStream>(ex);
  auto resolver = std::make_shared<asio::ip::tcp::resolver>(ex);
  Deadline limit(ex, deadline, [stream, resolver] {
    resolver->cancel();
    stream->close();
  });

  const std::string where = address.describe();
  std::error_code last = asio::error::host_not_found;
  if (address.type == NbdAddress::Type::unix_socket) {
    asio::local::stream_protocol::endpoint ep(address.path);
    stream->socket().open(asio::generic::stream_protocol(AF_UNIX, SOCK_STREAM));
    asio::generic::stream_protocol::endpoint gep(ep);
    std::error_code ec;
    co_await stream->socket().async_connect(gep, asio::redirect_error(asio::use_awaitable, ec));
    last = ec;
  } else {
    std::error_code rec;
    auto results =
        co_await resolver->async_resolve(address.host, address.port, asio::redirect_error(asio::use_awaitable, rec));
    if (rec) {
      if (limit.expired()) throw Error(ETIMEDOUT, name + ": connecting to " + where + " timed out");
      throw Error(EHOSTUNREACH, name + ": address resolution failed for " + where + ": " + rec.message());
    }
    for (const auto& entry : results) {
      auto ep = entry.endpoint();
      if ((address.ipv4_only && !ep.address().is_v4()) || (address.ipv6_only && !ep.address().is_v6())) continue;
      if (limit.expired()) break;
      std::error_code ignored;
      stream->socket().close(ignored);
      asio::generic::stream_protocol::endpoint gep(ep);
      stream->socket().open(gep.protocol(), ignored);
      if (ignored) {
        last = ignored;
        continue;
      }
      std::error_code ec;
      co_await stream->socket().async_connect(gep, asio::redirect_error(asio::use_awaitable, ec));
      last = ec;
      if (!ec) break;
    }
    if (!last) {
      int one = 1;
      setsockopt(stream->socket().native_handle(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
  }
  if (limit.expired()) throw Error(ETIMEDOUT, name + ": connecting to " + where + " timed out");
  if (last) {
    int err = last.category() == std::system_category() ? last.value() : ECONNREFUSED;
    throw Error(err, name + ": Failed to connect to '" + where + "': " + std::strerror(err));
  }
  co_return stream;
}

}  // namespace netblk::nbd_client
