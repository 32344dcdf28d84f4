#include "protocols/curl/url.hpp"

#include <curl/curl.h>

#include <memory>

namespace netblk::curlproto {
namespace {

struct UrlDeleter {
  void operator()(CURLU* u) const noexcept { curl_url_cleanup(u); }
};
using Url = std::unique_ptr<CURLU, UrlDeleter>;

Url parse(const std::string& text) {
  Url u(curl_url());
  if (!u) return nullptr;
  // Non-http schemes (tftp, ftps) are parsed too; no default scheme is guessed.
  if (curl_url_set(u.get(), CURLUPART_URL, text.c_str(), CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK) return nullptr;
  return u;
}

std::string part(CURLU* u, CURLUPart which, unsigned flags = 0) {
  char* p = nullptr;
  if (curl_url_get(u, which, &p, flags) != CURLUE_OK || !p) return {};
  std::string s = p;
  curl_free(p);
  return s;
}

}  // namespace

std::string url_scheme(const std::string& url) {
  auto colon = url.find(':');
  if (colon == std::string::npos || colon == 0) return {};
  std::string s = url.substr(0, colon);
  for (auto& c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '+' && c != '-' && c != '.') return {};
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return s;
}

bool same_origin(const std::string& a, const std::string& b) {
  Url ua = parse(a), ub = parse(b);
  if (!ua || !ub) return false;
  return part(ua.get(), CURLUPART_SCHEME) == part(ub.get(), CURLUPART_SCHEME) &&
         part(ua.get(), CURLUPART_HOST) == part(ub.get(), CURLUPART_HOST) &&
         part(ua.get(), CURLUPART_PORT, CURLU_DEFAULT_PORT) == part(ub.get(), CURLUPART_PORT, CURLU_DEFAULT_PORT);
}

}  // namespace netblk::curlproto
