#include "nbd/tls_session.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <gnutls/x509.h>

#include <asio/error.hpp>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <system_error>

#include "netblk/error.hpp"

namespace netblk::nbd::tls {
namespace {

// Small buffers are gathered up to this size before a record is sent (one record per
// NBD reply instead of one for the header and one for the data).
constexpr std::size_t kGatherLimit = 64u << 10;

// GnuTLS's own push uses send() without MSG_NOSIGNAL: a peer that has gone would raise
// SIGPIPE in a library user that did not ignore it.
ssize_t push_no_sigpipe(gnutls_transport_ptr_t transport, const giovec_t* iov, int count) {
  msghdr msg{};
  msg.msg_iov = reinterpret_cast<iovec*>(const_cast<giovec_t*>(iov));
  msg.msg_iovlen = static_cast<std::size_t>(count);
  return ::sendmsg(static_cast<int>(reinterpret_cast<std::intptr_t>(transport)), &msg, MSG_NOSIGNAL);
}

std::string verification_text(unsigned status, const std::string& fallback) {
  gnutls_datum_t out{};
  if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &out, 0) != 0) return fallback;
  std::string text(reinterpret_cast<char*>(out.data), out.size);
  gnutls_free(out.data);
  return text;
}

}  // namespace

Session::Session(bool server, int fd, WaitReady wait_ready, std::string name)
    : wait_ready_(std::move(wait_ready)), name_(std::move(name)) {
  if (fd < 0) throw Error(EIO, name_ + ": TLS needs a socket");
  int r = gnutls_init(&session_, (server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NONBLOCK);
  if (r < 0) fail(r, "TLS setup (gnutls_init) failed");
  // GnuTLS reads and writes the socket itself: it must not block the event loop.
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  gnutls_transport_set_int(session_, fd);
  gnutls_transport_set_vec_push_function(session_, push_no_sigpipe);
}

Session::~Session() {
  if (session_) gnutls_deinit(session_);
  if (owned_cert) gnutls_certificate_free_credentials(owned_cert);
  if (owned_psk_client) gnutls_psk_free_client_credentials(owned_psk_client);
}

void Session::fail(int code, const std::string& what) const {
  throw Error(EIO, name_ + ": " + what + ": " + gnutls_strerror(code));
}

void Session::set_priority(const std::string& priority) {
  const std::string p = priority.empty() ? "NORMAL" : priority;
  const char* err_pos = nullptr;
  if (gnutls_priority_set_direct(session_, p.c_str(), &err_pos) < 0)
    throw Error(EINVAL, name_ + ": invalid TLS priority '" + p + "'");
}

Task<void> Session::handshake() {
  while (true) {
    int r = gnutls_handshake(session_);
    if (r == GNUTLS_E_SUCCESS) co_return;
    if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
      co_await wait_ready_(gnutls_record_get_direction(session_) == 1);
      continue;
    }
    if (gnutls_error_is_fatal(r)) {
      std::string why = gnutls_strerror(r);
      if (r == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR)
        why += ": " + verification_text(gnutls_session_get_verify_cert_status(session_), "not trusted");
      throw Error(EACCES, name_ + ": TLS handshake failed: " + why);
    }
  }
}

Task<std::size_t> Session::read_some(std::span<std::byte> buf) {
  while (true) {
    ssize_t r = gnutls_record_recv(session_, buf.data(), buf.size());
    if (r > 0) co_return static_cast<std::size_t>(r);
    if (r == 0 || r == GNUTLS_E_PREMATURE_TERMINATION) throw std::system_error(asio::error::eof);
    if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
      co_await wait_ready_(false);
      continue;
    }
    fail(static_cast<int>(r), "TLS receive failed");
  }
}

Task<void> Session::send_all(const std::byte* data, std::size_t size) {
  while (size) {
    ssize_t r = gnutls_record_send(session_, data, size);
    if (r > 0) {
      data += r;
      size -= static_cast<std::size_t>(r);
    } else if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
      // GnuTLS keeps the record it could not finish; the retry sends the same bytes.
      co_await wait_ready_(true);
    } else {
      fail(static_cast<int>(r), "TLS send failed");
    }
  }
}

Task<void> Session::write(std::span<const asio::const_buffer> buffers) {
  staging_.clear();
  for (const auto& b : buffers) {
    const auto* p = static_cast<const std::byte*>(b.data());
    if (b.size() >= kGatherLimit) {
      if (!staging_.empty()) {
        co_await send_all(staging_.data(), staging_.size());
        staging_.clear();
      }
      co_await send_all(p, b.size());
      continue;
    }
    staging_.insert(staging_.end(), p, p + b.size());
    if (staging_.size() >= kGatherLimit) {
      co_await send_all(staging_.data(), staging_.size());
      staging_.clear();
    }
  }
  if (!staging_.empty()) co_await send_all(staging_.data(), staging_.size());
  staging_.clear();
}

void Session::say_goodbye() { gnutls_bye(session_, GNUTLS_SHUT_WR); }

void Session::verify_peer_certificate(const std::string& hostname, const char* peer) const {
  unsigned status = 0;
  int r = gnutls_certificate_verify_peers2(session_, &status);
  if (r < 0)
    throw Error(EACCES, name_ + ": TLS handshake failed: cannot verify the " + peer + " certificate: " +
                            gnutls_strerror(r));
  if (status)
    throw Error(EACCES, name_ + ": TLS handshake failed: " +
                            verification_text(status, std::string("the ") + peer + " certificate is not trusted"));
  unsigned count = 0;
  const gnutls_datum_t* certs = gnutls_certificate_get_peers(session_, &count);
  if (!certs || !count) throw Error(EACCES, name_ + ": TLS handshake failed: the " + peer + " sent no certificate");
  if (hostname.empty()) return;
  gnutls_x509_crt_t crt;
  gnutls_x509_crt_init(&crt);
  bool match = gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER) == 0 &&
               gnutls_x509_crt_check_hostname(crt, hostname.c_str()) != 0;
  gnutls_x509_crt_deinit(crt);
  if (!match)
    throw Error(EACCES, name_ + ": TLS handshake failed: the " + peer + " certificate does not match '" + hostname +
                            "'");
}

std::string psk_key(const Creds& creds, const std::string& user, const std::string& name) {
  const std::string path = creds.dir + "/keys.psk";
  std::ifstream in(path);
  if (!in) throw Error(ENOENT, name + ": TLS credentials '" + creds.id + "': cannot read '" + path + "'");
  std::string line;
  while (std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon != std::string::npos && line.substr(0, colon) == user) return line.substr(colon + 1);
  }
  throw Error(ENOENT, name + ": TLS credentials '" + creds.id + "': no key for user '" + user + "' in '" + path + "'");
}

// ---------------------------------------------------------------------------------------

ServerCredentials::ServerCredentials(const Creds& creds) : creds_(creds) {
  // A constructor that throws runs no destructor: what load() allocated goes here.
  try {
    load(creds);
  } catch (...) {
    release();
    throw;
  }
}

void ServerCredentials::load(const Creds& creds) {
  namespace fs = std::filesystem;
  const std::string what = "TLS credentials '" + creds.id + "'";
  if (creds.endpoint != "server") throw Error(EINVAL, "Expecting TLS credentials with a server endpoint");
  if (creds.type == Creds::Type::psk) {
    const std::string keys = creds.dir + "/keys.psk";
    if (!fs::exists(keys)) throw Error(ENOENT, what + ": cannot read '" + keys + "'");
    if (gnutls_psk_allocate_server_credentials(&psk_) < 0) throw Error(ENOMEM, what + ": cannot allocate");
    // GnuTLS reads QEMU's keys.psk format ("user:hexkey" lines) itself.
    if (gnutls_psk_set_server_credentials_file(psk_, keys.c_str()) < 0)
      throw Error(EINVAL, what + ": cannot load '" + keys + "'");
    return;
  }
  const std::string cert = creds.dir + "/server-cert.pem", key = creds.dir + "/server-key.pem",
                    ca = creds.dir + "/ca-cert.pem";
  if (gnutls_certificate_allocate_credentials(&cert_) < 0) throw Error(ENOMEM, what + ": cannot allocate");
  for (const std::string& f : {cert, key})
    if (!fs::exists(f)) throw Error(ENOENT, what + ": no file '" + f + "'");
  if (int r = gnutls_certificate_set_x509_key_file(cert_, cert.c_str(), key.c_str(), GNUTLS_X509_FMT_PEM); r < 0)
    throw Error(EINVAL, what + ": cannot load '" + cert + "' with '" + key + "': " + gnutls_strerror(r));
  if (fs::exists(ca)) {
    if (int r = gnutls_certificate_set_x509_trust_file(cert_, ca.c_str(), GNUTLS_X509_FMT_PEM); r < 0)
      throw Error(EINVAL, what + ": cannot load the CA certificate '" + ca + "': " + gnutls_strerror(r));
  } else if (creds.verify_peer) {
    // verify-peer (on by default) checks client certificates against this CA.
    throw Error(ENOENT, what + ": no CA certificate '" + ca + "' to verify clients (or set verify-peer=off)");
  }
}

ServerCredentials::~ServerCredentials() { release(); }

void ServerCredentials::release() noexcept {
  if (cert_) gnutls_certificate_free_credentials(cert_);
  if (psk_) gnutls_psk_free_server_credentials(psk_);
  cert_ = nullptr;
  psk_ = nullptr;
}

void ServerCredentials::apply(Session& session) const {
  if (psk_) {
    session.set_priority(creds_.priority.empty() ? "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK" : creds_.priority);
    if (int r = gnutls_credentials_set(session.get(), GNUTLS_CRD_PSK, psk_); r < 0)
      throw Error(EIO, "TLS credentials '" + creds_.id + "': " + gnutls_strerror(r));
    return;
  }
  session.set_priority(creds_.priority);
  if (int r = gnutls_credentials_set(session.get(), GNUTLS_CRD_CERTIFICATE, cert_); r < 0)
    throw Error(EIO, "TLS credentials '" + creds_.id + "': " + gnutls_strerror(r));
  if (creds_.verify_peer) gnutls_certificate_server_set_request(session.get(), GNUTLS_CERT_REQUIRE);
}

void ServerCredentials::check_client(const Session& session) const {
  if (cert_ && creds_.verify_peer) session.verify_peer_certificate("", "client");
}

}  // namespace netblk::nbd::tls
