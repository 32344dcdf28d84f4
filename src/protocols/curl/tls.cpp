#include "protocols/curl/tls.hpp"

#include <openssl/ssl.h>

#include <algorithm>
#include <cstring>

namespace netblk::curlproto {
namespace {

// The AES-128-GCM partner of an AES-256-GCM suite name, or "" for other suites.
std::string aes128_partner(const std::string& name) {
  for (auto [from, to] : {std::pair{"AES256-GCM-SHA384", "AES128-GCM-SHA256"},
                          std::pair{"AES_256_GCM_SHA384", "AES_128_GCM_SHA256"}}) {
    const std::size_t at = name.find(from);
    if (at != std::string::npos && at + std::strlen(from) == name.size())
      return name.substr(0, at) + to;
  }
  return {};
}

std::string join(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ":") + n;
  return s;
}

CURLcode reorder_ciphers(CURL*, void* ssl_ctx, void*) {
  auto* ctx = static_cast<SSL_CTX*>(ssl_ctx);
  const STACK_OF(SSL_CIPHER)* ciphers = SSL_CTX_get_ciphers(ctx);
  if (!ciphers) return CURLE_OK;
  std::vector<std::string> tls12, tls13;
  for (int i = 0; i < sk_SSL_CIPHER_num(ciphers); ++i) {
    const SSL_CIPHER* c = sk_SSL_CIPHER_value(ciphers, i);
    (std::strcmp(SSL_CIPHER_get_version(c), "TLSv1.3") == 0 ? tls13 : tls12).push_back(SSL_CIPHER_get_name(c));
  }
  // Keep the configured lists when a reordered one is refused.
  if (!tls12.empty()) {
    const std::vector<std::string> before = tls12;
    tls12 = aes128_gcm_first(tls12);
    if (tls12 != before && !SSL_CTX_set_cipher_list(ctx, join(tls12).c_str()))
      SSL_CTX_set_cipher_list(ctx, join(before).c_str());
  }
  if (!tls13.empty()) {
    const std::vector<std::string> before = tls13;
    tls13 = aes128_gcm_first(tls13);
    if (tls13 != before && !SSL_CTX_set_ciphersuites(ctx, join(tls13).c_str()))
      SSL_CTX_set_ciphersuites(ctx, join(before).c_str());
  }
  return CURLE_OK;
}

bool curl_uses_openssl() {
  static const bool openssl = [] {
    const curl_version_info_data* v = curl_version_info(CURLVERSION_NOW);
    return v && v->ssl_version && std::strncmp(v->ssl_version, "OpenSSL/", 8) == 0;
  }();
  return openssl;
}

}  // namespace

std::vector<std::string> aes128_gcm_first(std::vector<std::string> names) {
  for (std::size_t i = 0; i < names.size(); ++i) {
    const std::string partner = aes128_partner(names[i]);
    if (partner.empty()) continue;
    const auto later = std::find(names.begin() + static_cast<std::ptrdiff_t>(i) + 1, names.end(), partner);
    if (later == names.end()) continue;
    names.erase(later);
    names.insert(names.begin() + static_cast<std::ptrdiff_t>(i), partner);
    ++i;  // past the AES-256 suite, now at i + 1
  }
  return names;
}

void prefer_aes128_gcm(CURL* easy) {
  if (!curl_uses_openssl()) return;
  curl_easy_setopt(easy, CURLOPT_SSL_CTX_FUNCTION, &reorder_ciphers);
}

}  // namespace netblk::curlproto
