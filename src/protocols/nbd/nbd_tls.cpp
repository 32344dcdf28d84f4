#include "protocols/nbd/nbd_tls.hpp"

#include <arpa/inet.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include <filesystem>

#include "nbd/client_tls.hpp"
#include "nbd/tls_session.hpp"

namespace netblk::nbd_client {
namespace {

bool is_ip_address(const std::string& host) {
  unsigned char buf[16];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

class TlsStream final : public Stream {
 public:
  TlsStream(std::shared_ptr<Stream> raw, std::string name) : raw_(std::move(raw)), name_(std::move(name)) {}

  void setup(const NbdConfig& config) {
    auto raw = raw_;
    session_ = std::make_unique<nbd::tls::Session>(
        false, raw_->native_handle(), [raw](bool write) { return raw->wait_ready(write); }, name_);
    gnutls_session_t s = session_->get();
    std::optional<nbd::tls::Creds> creds;
    if (!config.tls_creds.empty()) creds = nbd::tls::creds(config.tls_creds);
    std::string hostname = config.tls_hostname;
    if (hostname.empty() && config.address.type == NbdAddress::Type::inet) hostname = config.address.host;
    if (creds && creds->type == nbd::tls::Creds::Type::psk) {
      session_->set_priority(creds->priority.empty() ? "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK" : creds->priority);
      const std::string key = nbd::tls::psk_key(*creds, creds->username, name_);
      check(gnutls_psk_allocate_client_credentials(&session_->owned_psk_client), "PSK credentials");
      gnutls_datum_t datum{reinterpret_cast<unsigned char*>(const_cast<char*>(key.data())),
                           static_cast<unsigned>(key.size())};
      check(gnutls_psk_set_client_credentials(session_->owned_psk_client, creds->username.c_str(), &datum,
                                              GNUTLS_PSK_KEY_HEX),
            "PSK key");
      check(gnutls_credentials_set(s, GNUTLS_CRD_PSK, session_->owned_psk_client), "PSK credentials");
      return;
    }
    session_->set_priority(creds ? creds->priority : "");
    check(gnutls_certificate_allocate_credentials(&session_->owned_cert), "x509 credentials");
    gnutls_certificate_credentials_t cert = session_->owned_cert;
    bool verify = true;
    if (creds) {
      namespace fs = std::filesystem;
      const std::string ca = creds->dir + "/ca-cert.pem";
      verify = creds->verify_peer;
      if (fs::exists(ca)) {
        if (gnutls_certificate_set_x509_trust_file(cert, ca.c_str(), GNUTLS_X509_FMT_PEM) < 0)
          throw Error(EINVAL, name_ + ": cannot load the CA certificate '" + ca + "'");
      } else if (verify) {
        throw Error(ENOENT, name_ + ": TLS credentials '" + creds->id + "': no CA certificate '" + ca + "'");
      }
      const std::string crt = creds->dir + "/client-cert.pem", key = creds->dir + "/client-key.pem";
      if (fs::exists(crt) && fs::exists(key) &&
          gnutls_certificate_set_x509_key_file(cert, crt.c_str(), key.c_str(), GNUTLS_X509_FMT_PEM) < 0)
        throw Error(EINVAL, name_ + ": cannot load the client certificate '" + crt + "'");
    } else {
      gnutls_certificate_set_x509_system_trust(cert);
    }
    check(gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, cert), "x509 credentials");
    // Checked after the handshake, as QEMU does (the chain, then the name or address).
    verify_ = verify;
    hostname_ = hostname;
    if (!hostname.empty() && !is_ip_address(hostname)) gnutls_server_name_set(s, GNUTLS_NAME_DNS, hostname.data(), hostname.size());
  }

  Task<void> handshake() {
    co_await session_->handshake();
    if (session_->owned_cert && verify_) session_->verify_peer_certificate(hostname_, "server");
  }

  Task<std::size_t> read_some(std::span<std::byte> buf) override { return session_->read_some(buf); }
  Task<void> write(const std::vector<asio::const_buffer>& buffers) override { return session_->write(buffers); }
  void close() override {
    if (session_ && raw_->native_handle() >= 0) session_->say_goodbye();
    raw_->close();
  }
  int native_handle() override { return raw_->native_handle(); }
  Task<void> wait_ready(bool write) override { co_await raw_->wait_ready(write); }

 private:
  void check(int r, const char* what) {
    if (r < 0) throw Error(EIO, name_ + ": TLS setup (" + what + ") failed: " + gnutls_strerror(r));
  }

  std::shared_ptr<Stream> raw_;
  std::string name_;
  std::unique_ptr<nbd::tls::Session> session_;
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
