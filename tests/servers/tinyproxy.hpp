// A real forward proxy (tinyproxy) on 127.0.0.1, optionally wanting Basic credentials. It
// listens on 127.0.0.1 only, binds its own outgoing connections to 127.0.0.1 and admits
// only 127.0.0.1. Config, log and pid file in a TempDir of its own; ready when its port
// accepts; stopped by PID.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "servers.hpp"

namespace netblk::test {

class Tinyproxy : public Daemon {
 public:
  struct Options {
    std::string user{}, password{};  // Basic credentials it wants (none when user is empty)
  };
  Tinyproxy();  // no credentials
  explicit Tinyproxy(Options options);
  std::uint16_t port() const { return port_; }
  // libcurl's proxy variables, as QEMU takes them; no_proxy emptied so that 127.0.0.1 is
  // not exempted by the environment the tests run in.
  std::vector<std::string> env() const;
  // What it logged (requests it carried: "GET url", "CONNECT host:port").
  std::string log() const { return read_file(dir_ / "tinyproxy.log"); }

 private:
  std::uint16_t port_ = 0;
};

}  // namespace netblk::test
