// nginx (nginx-light) on 127.0.0.1: a root directory over HTTP and, when asked, HTTPS with a
// self-signed certificate, plus locations made to test clients (a cookie check, basic auth,
// a slow body, no byte ranges, redirects, a reply that never comes). Its config, pid file,
// logs and temp paths live in a TempDir of its own; ready when its ports accept; stopped by
// PID.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "servers.hpp"

namespace netblk::test {

class Nginx : public Daemon {
 public:
  // One `location` block, in both servers.
  struct Location {
    std::string match{};       // what follows `location`: "/slow/" or "= /redirect"
    std::string directives{};  // inside the braces
    bool alias_root = false;  // serves the root directory under the prefix `match`
    std::vector<std::pair<std::string, std::string>> users{};  // basic auth: user, password
    bool echo = false;        // uses ngx_http_echo_module (loaded when a location needs it)
  };
  struct Options {
    std::string root{};  // served at "/": its files, and every directory above them, world-readable
    bool https = false;  // a second server with TLS on https_port()
    int workers = 1;
    std::vector<Location> locations{};
    std::uint16_t port = 0;  // the http port; 0: a free one (a second server on a port: a restart)
  };

  // 403 unless the Cookie header holds `cookie` ("name=value").
  static Location require_cookie(const std::string& prefix, const std::string& cookie);
  // 401 unless the request carries `user`'s `password`.
  static Location basic_auth(const std::string& prefix, const std::string& user, const std::string& password);
  // Bodies at `rate` ("512k") from their first byte.
  static Location limit_rate(const std::string& prefix, const std::string& rate);
  // No byte ranges: every GET gets the whole file, and no Accept-Ranges.
  static Location no_ranges(const std::string& prefix);
  // `path` answers 302 to `target`.
  static Location redirect(const std::string& path, const std::string& target);
  // `path` answers after `seconds`.
  static Location stall(const std::string& path, int seconds);

  explicit Nginx(Options options);
  std::uint16_t port() const { return http_port_; }
  std::uint16_t https_port() const { return https_port_; }
  std::string url(const std::string& path) const;        // http://127.0.0.1:port/...
  std::string https_url(const std::string& path) const;  // https://127.0.0.1:https_port/...

 private:
  std::uint16_t http_port_ = 0, https_port_ = 0;
};

}  // namespace netblk::test
