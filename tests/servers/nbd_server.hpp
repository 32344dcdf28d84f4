// nbd-server (3.24: simple replies only) exporting one image over TCP on 127.0.0.1. It
// needs a config file and daemonizes itself: its config and pid file live in a TempDir of
// its own, and it is stopped by the PID in that pid file.
#pragma once
#include <cstdint>
#include <string>

#include "servers.hpp"

namespace netblk::test {

class NbdServer {
 public:
  struct Options {
    std::string file{};
    std::string export_name = "disk";
    bool read_only = false;
  };
  explicit NbdServer(Options options);
  ~NbdServer();  // stop()
  NbdServer(const NbdServer&) = delete;
  NbdServer& operator=(const NbdServer&) = delete;

  std::uint16_t port() const { return port_; }
  std::string url() const { return "nbd://127.0.0.1:" + std::to_string(port_) + "/" + export_name_; }
  // SIGTERM, then SIGKILL if it is still there after 5 s.
  void stop();

 private:
  TempDir dir_;
  std::string export_name_;
  std::uint16_t port_ = 0;
  int pid_ = 0;
};

}  // namespace netblk::test
