// in.tftpd (tftpd-hpa) on 127.0.0.1: standalone in the foreground, chrooted into a root
// directory, as nobody, with a maximum blksize. Ready when its UDP port is bound; stopped
// by PID.
#pragma once
#include <cstdint>
#include <string>

#include "servers.hpp"

namespace netblk::test {

class Tftpd : public Daemon {
 public:
  struct Options {
    std::string root{};  // files world-readable, directories 755
    int max_blksize = 65464;
    std::uint16_t port = 0;  // 0: a free one (a second server on a port: a restart)
  };
  explicit Tftpd(Options options);
  std::uint16_t port() const { return port_; }
  std::string url(const std::string& name) const {
    return "tftp://127.0.0.1:" + std::to_string(port_) + "/" + name;
  }

 private:
  std::uint16_t port_ = 0;
};

}  // namespace netblk::test
