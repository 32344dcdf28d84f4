// nbdkit in the foreground over TCP on 127.0.0.1 or a unix socket, with any plugin and
// filters ("file", path; "memory", "16M"; "--filter=delay", ...). Ready when the port or
// socket accepts; stopped by PID. A restarted server takes the same port or socket path.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "servers.hpp"

namespace netblk::test {

class Nbdkit {
 public:
  struct Options {
    std::vector<std::string> args{};  // filters, plugin and its parameters, as on nbdkit's command line
    std::string socket{};             // a unix socket path; empty: TCP on 127.0.0.1
    std::uint16_t port = 0;         // TCP port; 0: a free one
    std::string log{};                // where its output goes; empty: its TempDir
  };
  explicit Nbdkit(Options options);
  Nbdkit(const Nbdkit&) = delete;
  Nbdkit& operator=(const Nbdkit&) = delete;

  std::uint16_t port() const { return port_; }
  const std::string& socket() const { return socket_; }
  // nbd://127.0.0.1:port or nbd+unix:///?socket=path (nbdkit serves any export name)
  std::string url() const;
  bool running() { return process_.running(); }
  int stop(int signal = 15) { return process_.stop(signal); }

 private:
  TempDir dir_;
  std::string socket_;
  std::uint16_t port_ = 0;
  Process process_;
};

}  // namespace netblk::test
