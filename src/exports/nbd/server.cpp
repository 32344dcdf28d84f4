// The NBD export server: listeners, the accept loops, and each connection's life.
#include "exports/nbd/server.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <asio/ip/v6_only.hpp>
#include <system_error>
#include <type_traits>

#include "core/deadline.hpp"
#include "core/log.hpp"
#include "exports/nbd/connection.hpp"
#include "spec/uri.hpp"

namespace netblk::nbd {
namespace server_detail {

Task<void> Connection::run() {
  auto self = shared_from_this();
  bool transmit = false;
  try {
    Deadline limit(server_->executor, config_.handshake_limit, [weak = weak_from_this()] {
      if (auto c = weak.lock(); c && c->negotiating_) {
        NETBLK_LOG(info, "nbd: client did not finish the handshake in time; disconnecting");
        c->close_socket();
      }
    });
    negotiating_ = true;
    transmit = co_await negotiate();
    negotiating_ = false;
    limit.cancel();
    if (transmit && !stop_requested_) co_await transmission();
  } catch (const Disconnect& d) {
    NETBLK_LOG(info, "nbd: disconnecting client: {}", d.why);
  } catch (const Error& e) {
    NETBLK_LOG(info, "nbd: disconnecting client: {}", e.what());
  } catch (const std::system_error& e) {
    NETBLK_LOG(debug, "nbd: connection ended: {}", e.what());
  } catch (const std::exception& e) {
    NETBLK_LOG(warn, "nbd: connection failed: {}", e.what());
  }
  negotiating_ = false;
  co_await drain();
  if (tls_ && !dead_) tls_->say_goodbye();
  close_socket();
}

// Server stop: stop reading new requests; in-flight ones still complete.
void Connection::request_stop() {
  stop_requested_ = true;
  std::error_code ec;
  if (negotiating_) {
    close_socket();
    return;
  }
  socket_.shutdown(asio::socket_base::shutdown_receive, ec);
}

void Connection::close_socket() {
  std::error_code ec;
  socket_.shutdown(asio::socket_base::shutdown_both, ec);
  socket_.close(ec);
  dead_ = true;
  slots_.notify_all();
  queue_changed_.notify_all();
}

}  // namespace server_detail

using server_detail::Connection;
using server_detail::Socket;

// ---------------------------------------------------------------------------------------
// Server

std::uint16_t Server::Impl::transmission_flags(bool structured) const {
  std::uint16_t f = kFlagHasFlags | kFlagSendFlush | kFlagSendFua | kFlagSendCache;
  if (config.read_only)
    f |= kFlagReadOnly;
  else
    f |= kFlagSendTrim | kFlagSendWriteZeroes | kFlagSendFastZero;
  if (structured) f |= kFlagSendDf;
  // Every connection shares the one node, so flushed writes are visible to all; but with
  // one client at a time a client opening several connections would wait for ever.
  if (config.max_clients != 1 && (config.read_only || node.caps().can_multi_conn)) f |= kFlagCanMultiConn;
  return f;
}

Task<bool> Server::Impl::wait_for_slot() {
  while (!stopping && config.max_clients > 0 && active >= config.max_clients) co_await changed.wait();
  co_return !stopping;
}

void Server::Impl::start_connection(Socket socket, bool tcp) {
  if (tcp) {
    std::error_code ec;
    socket.set_option(asio::ip::tcp::no_delay(true), ec);
  } else {
    int bytes = server_detail::kUnixSendBuffer;
    ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
  }
  ++active;
  auto conn = std::make_shared<Connection>(shared_from_this(), std::move(socket), !tcp);
  connections.push_back(conn);
  NETBLK_LOG(debug, "nbd: client connected ({} active)", active);
  asio::co_spawn(executor, [conn]() { return conn->run(); },
                 [self = shared_from_this()](std::exception_ptr) { self->connection_done(); });
}

void Server::Impl::connection_done() {
  --active;
  connections.remove_if([](const std::weak_ptr<Connection>& w) { return w.expired(); });
  NETBLK_LOG(debug, "nbd: client disconnected ({} active)", active);
  if (active == 0 && !config.persistent && served_any) stop();
  changed.notify_all();
}

template <class Acceptor>
Task<void> Server::Impl::accept_loop(Acceptor& acceptor) {
  constexpr bool tcp = std::is_same_v<Acceptor, asio::ip::tcp::acceptor>;
  auto self = shared_from_this();
  while (co_await wait_for_slot()) {
    std::error_code ec;
    typename Acceptor::protocol_type::socket s =
        co_await acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (stopping) break;
    if (ec) {
      NETBLK_LOG(warn, "nbd: accept failed: {}", ec.message());
      co_await sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    start_connection(Socket(std::move(s)), tcp);
  }
  --accept_loops;
  changed.notify_all();
}

void Server::Impl::stop() {
  if (stopping) return;
  stopping = true;
  std::error_code ec;
  for (auto& a : tcp_acceptors) a->close(ec);
  if (unix_acceptor) {
    unix_acceptor->close(ec);
    if (!unix_path.empty()) ::unlink(unix_path.c_str());
  }
  for (auto& w : connections)
    if (auto c = w.lock()) c->request_stop();
  budget_freed.notify_all();  // readers waiting for room see the stop
  // Connections that cannot finish (a client that never reads) are closed after the grace.
  grace = std::make_unique<Deadline>(executor, config.stop_grace, [weak = weak_from_this()] {
    if (auto self = weak.lock())
      for (auto& w : self->connections)
        if (auto c = w.lock()) c->close_socket();
  });
  changed.notify_all();
}

Server::Server(Executor executor, Node& node, ExportConfig config)
    : impl_(std::make_shared<Impl>(std::move(executor), node, std::move(config))) {}

Server::~Server() {
  if (impl_ && impl_->unix_acceptor && !impl_->unix_path.empty() && !impl_->stopping) ::unlink(impl_->unix_path.c_str());
}

void Server::listen_tcp(const std::string& host, std::uint16_t port) {
  const std::string where = spec::bracket_host(host) + ":" + std::to_string(port);
  asio::ip::tcp::resolver resolver(impl_->executor);
  std::error_code ec;
  auto results = resolver.resolve(host, std::to_string(port),
                                  asio::ip::tcp::resolver::passive | asio::ip::tcp::resolver::numeric_service, ec);
  if (ec) throw Error(EINVAL, "nbd server: cannot resolve '" + host + "': " + ec.message());
  std::string last_error;
  for (const auto& entry : results) {
    auto acceptor = std::make_unique<asio::ip::tcp::acceptor>(impl_->executor);
    auto endpoint = entry.endpoint();
    acceptor->open(endpoint.protocol(), ec);
    if (!ec) acceptor->set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec && endpoint.address().is_v6()) acceptor->set_option(asio::ip::v6_only(true), ec);
    if (!ec) acceptor->bind(endpoint, ec);
    if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      last_error = ec.message();
      continue;
    }
    impl_->bound_port = acceptor->local_endpoint().port();
    impl_->tcp_acceptors.push_back(std::move(acceptor));
  }
  if (impl_->tcp_acceptors.empty())
    throw Error(EADDRINUSE, "nbd server: cannot listen on " + where + ": " + last_error);
}

void Server::listen_unix(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path.c_str());
  auto acceptor = std::make_unique<asio::local::stream_protocol::acceptor>(impl_->executor);
  std::error_code ec;
  asio::local::stream_protocol::endpoint endpoint(path);
  acceptor->open(endpoint.protocol(), ec);
  if (!ec) acceptor->bind(endpoint, ec);
  if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw Error(ec.value() ? ec.value() : EINVAL, "nbd server: cannot listen on '" + path + "': " + ec.message());
  impl_->unix_acceptor = std::move(acceptor);
  impl_->unix_path = path;
}

std::uint16_t Server::tcp_port() const { return impl_->bound_port; }

void Server::adopt(asio::generic::stream_protocol::socket socket) { impl_->start_connection(std::move(socket), false); }

Task<void> Server::run() {
  auto impl = impl_;
  for (auto& a : impl->tcp_acceptors) {
    ++impl->accept_loops;
    asio::co_spawn(impl->executor, impl->accept_loop(*a), asio::detached);
  }
  if (impl->unix_acceptor) {
    ++impl->accept_loops;
    asio::co_spawn(impl->executor, impl->accept_loop(*impl->unix_acceptor), asio::detached);
  }
  if (impl->accept_loops == 0 && impl->active == 0) throw Error(EINVAL, "nbd server: nothing to listen on");
  while (!(impl->stopping && impl->active == 0 && impl->accept_loops == 0)) co_await impl->changed.wait();
  if (impl->grace) impl->grace->cancel();
}

void Server::stop() { impl_->stop(); }

}  // namespace netblk::nbd
