#include "protocols/nbd/nbd_tls.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include <filesystem>
#include <fstream>

#include "nbd/client_tls.hpp"

namespace netblk::nbd_client {
namespace {

bool is_ip_address(const std::string& host) {
  unsigned char buf[16];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

class TlsStream final : public Stream {
 public:
  TlsStream(std::shared_ptr<Stream> raw, std::string name) : raw_(std::move(raw)), name_(std::move(name)) {}
  ~TlsStream() override {
    if (session_) gnutls_deinit(session_);
    if (cert_) gnutls_certificate_free_credentials(cert_);
    if (psk_) gnutls_psk_free_client_credentials(psk_);
  }

  void setup(const NbdConfig& config) {
    check(gnutls_init(&session_, GNUTLS_CLIENT | GNUTLS_NONBLOCK), "gnutls_init");
    std::optional<nbd::tls::Creds> creds;
    if (!config.tls_creds.empty()) creds = nbd::tls::creds(config.tls_creds);
    std::string priority = creds && !creds->priority.empty() ? creds->priority : "NORMAL";
    std::string hostname = config.tls_hostname;
    if (hostname.empty() && config.address.type == NbdAddress::Type::inet) hostname = config.address.host;
    if (creds && creds->type == nbd::tls::Creds::Type::psk) {
      if (creds->priority.empty()) priority = "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK";
      const std::string key = psk_key(*creds);
      check(gnutls_psk_allocate_client_credentials(&psk_), "PSK credentials");
      gnutls_datum_t datum{reinterpret_cast<unsigned char*>(const_cast<char*>(key.data())),
                           static_cast<unsigned>(key.size())};
      check(gnutls_psk_set_client_credentials(psk_, creds->username.c_str(), &datum, GNUTLS_PSK_KEY_HEX),
            "PSK key");
      check(gnutls_credentials_set(session_, GNUTLS_CRD_PSK, psk_), "PSK credentials");
    } else {
      check(gnutls_certificate_allocate_credentials(&cert_), "x509 credentials");
      bool verify = true;
      if (creds) {
        namespace fs = std::filesystem;
        const std::string ca = creds->dir + "/ca-cert.pem";
        verify = creds->verify_peer;
        if (fs::exists(ca)) {
          if (gnutls_certificate_set_x509_trust_file(cert_, ca.c_str(), GNUTLS_X509_FMT_PEM) < 0)
            throw Error(EINVAL, name_ + ": cannot load the CA certificate '" + ca + "'");
        } else if (verify) {
          throw Error(ENOENT, name_ + ": TLS credentials '" + creds->id + "': no CA certificate '" + ca + "'");
        }
        const std::string cert = creds->dir + "/client-cert.pem", key = creds->dir + "/client-key.pem";
        if (fs::exists(cert) && fs::exists(key) &&
            gnutls_certificate_set_x509_key_file(cert_, cert.c_str(), key.c_str(), GNUTLS_X509_FMT_PEM) < 0)
          throw Error(EINVAL, name_ + ": cannot load the client certificate '" + cert + "'");
      } else {
        gnutls_certificate_set_x509_system_trust(cert_);
      }
      check(gnutls_credentials_set(session_, GNUTLS_CRD_CERTIFICATE, cert_), "x509 credentials");
      // Checked after the handshake, as QEMU does (the chain, then the name or address).
      verify_ = verify;
      hostname_ = hostname;
      if (!hostname.empty() && !is_ip_address(hostname))
        gnutls_server_name_set(session_, GNUTLS_NAME_DNS, hostname.data(), hostname.size());
    }
    const char* err_pos = nullptr;
    if (gnutls_priority_set_direct(session_, priority.c_str(), &err_pos) < 0)
      throw Error(EINVAL, name_ + ": invalid TLS priority '" + priority + "'");
    // GnuTLS reads and writes the socket itself: it must not block the event loop.
    const int fd = raw_->native_handle();
    if (fd < 0) throw Error(EIO, name_ + ": TLS needs a socket");
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    gnutls_transport_set_int(session_, fd);
  }

  Task<void> handshake() {
    while (true) {
      int r = gnutls_handshake(session_);
      if (r == GNUTLS_E_SUCCESS) {
        if (cert_ && verify_) check_peer();
        co_return;
      }
      if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
        co_await raw_->wait_ready(gnutls_record_get_direction(session_) == 1);
        continue;
      }
      if (gnutls_error_is_fatal(r)) {
        std::string why = gnutls_strerror(r);
        if (r == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
          gnutls_datum_t out{};
          auto status = gnutls_session_get_verify_cert_status(session_);
          if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &out, 0) == 0) {
            why += ": " + std::string(reinterpret_cast<char*>(out.data), out.size);
            gnutls_free(out.data);
          }
        }
        throw Error(EACCES, name_ + ": TLS handshake failed: " + why);
      }
    }
  }

  Task<std::size_t> read_some(std::span<std::byte> buf) override {
    while (true) {
      ssize_t r = gnutls_record_recv(session_, buf.data(), buf.size());
      if (r > 0) co_return static_cast<std::size_t>(r);
      if (r == 0 || r == GNUTLS_E_PREMATURE_TERMINATION) throw std::system_error(asio::error::eof);
      if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
        co_await raw_->wait_ready(false);
        continue;
      }
      throw Error(EIO, name_ + ": TLS receive failed: " + gnutls_strerror(static_cast<int>(r)));
    }
  }

  Task<void> write(const std::vector<asio::const_buffer>& buffers) override {
    for (const auto& b : buffers) {
      const char* p = static_cast<const char*>(b.data());
      std::size_t left = b.size();
      while (left) {
        ssize_t r = gnutls_record_send(session_, p, left);
        if (r > 0) {
          p += r;
          left -= static_cast<std::size_t>(r);
        } else if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
          co_await raw_->wait_ready(true);
        } else {
          throw Error(EIO, name_ + ": TLS send failed: " + gnutls_strerror(static_cast<int>(r)));
        }
      }
    }
  }

  void close() override { raw_->close(); }
  int native_handle() override { return raw_->native_handle(); }
  Task<void> wait_ready(bool write) override { co_await raw_->wait_ready(write); }

 private:
  void check(int r, const char* what) {
    if (r < 0) throw Error(EIO, name_ + ": TLS setup (" + what + ") failed: " + gnutls_strerror(r));
  }

  void check_peer() {
    unsigned status = 0;
    int r = gnutls_certificate_verify_peers2(session_, &status);
    if (r < 0) throw Error(EACCES, name_ + ": TLS handshake failed: cannot verify the server certificate: " +
                                       gnutls_strerror(r));
    if (status) {
      gnutls_datum_t out{};
      std::string why = "the server certificate is not trusted";
      if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &out, 0) == 0) {
        why = std::string(reinterpret_cast<char*>(out.data), out.size);
        gnutls_free(out.data);
      }
      throw Error(EACCES, name_ + ": TLS handshake failed: " + why);
    }
    if (hostname_.empty()) return;
    unsigned count = 0;
    const gnutls_datum_t* certs = gnutls_certificate_get_peers(session_, &count);
    if (!certs || !count) throw Error(EACCES, name_ + ": TLS handshake failed: the server sent no certificate");
    gnutls_x509_crt_t crt;
    gnutls_x509_crt_init(&crt);
    bool match = gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER) == 0 &&
                 gnutls_x509_crt_check_hostname(crt, hostname_.c_str()) != 0;
    gnutls_x509_crt_deinit(crt);
    if (!match)
      throw Error(EACCES, name_ + ": TLS handshake failed: the server certificate does not match '" + hostname_ + "'");
  }

  std::string psk_key(const nbd::tls::Creds& c) {
    const std::string path = c.dir + "/keys.psk";
    std::ifstream in(path);
    if (!in) throw Error(ENOENT, name_ + ": TLS credentials '" + c.id + "': cannot read '" + path + "'");
    std::string line;
    while (std::getline(in, line)) {
      auto colon = line.find(':');
      if (colon != std::string::npos && line.substr(0, colon) == c.username) return line.substr(colon + 1);
    }
    throw Error(ENOENT, name_ + ": TLS credentials '" + c.id + "': no key for user '" + c.username + "' in '" + path +
                            "'");
  }

  std::shared_ptr<Stream> raw_;
  std::string name_;
  gnutls_session_t session_ = nullptr;
  gnutls_certificate_credentials_t cert_ = nullptr;
  gnutls_psk_client_credentials_t psk_ = nullptr;
  bool verify_ = false;
  std::string hostname_;
};

}  // namespace

void check_tls_config(const NbdConfig& config) {
  if (config.tls_creds.empty()) return;
  nbd::tls::Creds c = nbd::tls::creds(config.tls_creds);
  if (c.endpoint != "client")
    throw Error(EINVAL, "Expecting TLS credentials with a client endpoint");
}

Task<std::shared_ptr<Stream>> start_tls(std::shared_ptr<Stream> raw, const NbdConfig& config, const std::string& name) {
  auto tls = std::make_shared<TlsStream>(std::move(raw), name);
  tls->setup(config);
  co_await tls->handshake();
  co_return tls;
}

}  // namespace netblk::nbd_client
