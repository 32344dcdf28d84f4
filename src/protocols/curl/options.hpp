// The curl drivers' options, as QEMU's block/curl.c names them: url, readahead, sslverify,
// timeout, cookie, cookie-secret, username, password-secret, proxy-username,
// proxy-password-secret and force-range. parse_config() validates them with QEMU's
// wording; config_options() prints them back for the canonical json: name, without any
// secret (only the ids of secrets).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "netblk/node.hpp"
#include "spec/options.hpp"

namespace netblk::curlproto {

constexpr std::uint64_t kDefaultReadahead = 256 * 1024;
constexpr std::uint64_t kDefaultTimeout = 5;
constexpr std::uint64_t kMaxTimeout = 10000;  // QEMU's CURL_TIMEOUT_MAX
constexpr long kConnections = 8;

enum class Family { http, ftp, tftp };

// Parallel connections to the server (see options.cpp for the measurements).
long connection_limit(Family family);
Family family_of(std::string_view driver);
// Which URL schemes a transfer (and any redirect) may use: "http,https", "ftp,ftps", "tftp".
const char* allowed_protocols(Family f);

struct Config {
  std::string driver;
  Family family = Family::http;
  std::string url;        // as given; may carry a password
  std::string shown_url;  // without the password, for names and messages
  std::uint64_t readahead = kDefaultReadahead;
  bool sslverify = true;
  std::uint64_t timeout = kDefaultTimeout;
  bool has_cookie = false;  // a literal cookie option (never printed)
  std::string cookie;       // the cookie to send (literal or from the secret)
  std::optional<std::string> cookie_secret, username, password_secret, proxy_username, proxy_password_secret;
  std::string password, proxy_password;
  bool force_range = false;
};

// Reads and checks driver `driver`'s options; rejects unknown ones (finish()) before
// anything connects. Secrets are looked up here.
Config parse_config(spec::Options& o, const std::string& driver);
// The options that differ from their defaults, with "driver" and "url" (without password).
Json config_options(const Config& c);

}  // namespace netblk::curlproto
