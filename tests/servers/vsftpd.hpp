// vsftpd on 127.0.0.1 in the foreground: anonymous, read-only FTP of a root directory, or
// (implicit_tls) FTPS as libcurl's ftps:// means it, TLS from the first byte, with a
// self-signed certificate. Passive mode on 127.0.0.1 with a port range of its own. Config,
// logs and certificate in a TempDir of its own; ready when its port accepts; stopped by PID.
#pragma once
#include <cstdint>
#include <string>

#include "servers.hpp"

namespace netblk::test {

class Vsftpd : public Daemon {
 public:
  struct Options {
    std::string root{};  // anon_root: owned by root, mode 755; files world-readable
    bool implicit_tls = false;
    std::uint16_t port = 0;  // 0: a free one (a second server on a port: a restart)
    int max_rate = 0;        // anon_max_rate, bytes/s; 0: unlimited
  };
  explicit Vsftpd(Options options);
  std::uint16_t port() const { return port_; }
  // ftp://127.0.0.1:port/name, or ftps://... with implicit_tls.
  std::string url(const std::string& name) const;

 private:
  bool tls_;
  std::uint16_t port_ = 0;
};

}  // namespace netblk::test
