// TLS for both NBD sides (after NBD_OPT_STARTTLS): one GnuTLS session over a connected
// socket that GnuTLS reads and writes itself in non-blocking mode; when it would block,
// the coroutine waits on the event loop for the socket. The client and the server only
// differ in the credentials they load (client: nbd_tls.cpp; server: ServerCredentials).
#pragma once
#include <gnutls/gnutls.h>

#include <asio/buffer.hpp>
#include <cstddef>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "nbd/client_tls.hpp"
#include "netblk/runtime.hpp"

namespace netblk::nbd::tls {

class Session {
 public:
  // Suspends until the socket is writable (true) or readable (false).
  using WaitReady = std::function<Task<void>(bool write)>;

  // `fd` is put in non-blocking mode. `name` starts every error message.
  Session(bool server, int fd, WaitReady wait_ready, std::string name);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  gnutls_session_t get() const { return session_; }
  // A GnuTLS priority string; empty means "NORMAL". Throws Error on a bad one.
  void set_priority(const std::string& priority);

  // Throws Error(EACCES, "NAME: TLS handshake failed: WHY").
  Task<void> handshake();
  // Returns at least one byte; throws std::system_error(eof) when the peer has closed.
  Task<std::size_t> read_some(std::span<std::byte> buf);
  // Sends every buffer, small ones gathered into one record.
  Task<void> write(std::span<const asio::const_buffer> buffers);
  // Sends TLS close_notify if the socket takes it at once (never waits): a clean end for
  // peers that report a TLS stream cut short.
  void say_goodbye();
  // Checks the peer's certificate chain against the trusted CAs and, when `hostname` is
  // not empty, its name. `peer` ("server" or "client") names it in the error.
  void verify_peer_certificate(const std::string& hostname, const char* peer) const;

  // Credentials this session owns (freed with it); a ServerCredentials lends its own.
  gnutls_certificate_credentials_t owned_cert = nullptr;
  gnutls_psk_client_credentials_t owned_psk_client = nullptr;

 private:
  Task<void> send_all(const std::byte* data, std::size_t size);
  [[noreturn]] void fail(int code, const std::string& what) const;

  gnutls_session_t session_ = nullptr;
  WaitReady wait_ready_;
  std::string name_;
  std::vector<std::byte> staging_;
};

// The hex key of `user` in the object's keys.psk ("user:hexkey" lines, QEMU's layout).
std::string psk_key(const Creds& creds, const std::string& user, const std::string& name);

// The credentials of a tls-creds object with endpoint=server, loaded once when the server
// starts (a missing or bad file is reported then, not at the first client).
class ServerCredentials {
 public:
  // Throws Error naming the object and the file.
  explicit ServerCredentials(const Creds& creds);
  ~ServerCredentials();
  ServerCredentials(const ServerCredentials&) = delete;
  ServerCredentials& operator=(const ServerCredentials&) = delete;

  // Makes a fresh server session use these credentials (and ask for a client certificate
  // when the object has verify-peer on, QEMU's default).
  void apply(Session& session) const;
  // After the handshake: the client's certificate chain, when verify-peer is on.
  void check_client(const Session& session) const;

 private:
  void load(const Creds& creds);
  void release() noexcept;
  Creds creds_;
  gnutls_certificate_credentials_t cert_ = nullptr;
  gnutls_psk_server_credentials_t psk_ = nullptr;
};

}  // namespace netblk::nbd::tls
