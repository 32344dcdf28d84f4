// nbdkit in the foreground over TCP on 127.0.0.1 or a unix socket, with any plugin and
// filters ("file", path; "memory", "16M"; "--filter=delay", ...). Ready when the port or
// socket accepts; stopped by PID. A restarted server may take the same port or socket path.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "nbd_daemon.hpp"

namespace netblk::test {

class Nbdkit : public NbdDaemon {
 public:
  struct Options {
    std::vector<std::string> args{};  // filters, plugin and its parameters, as on nbdkit's command line
    std::string socket{};             // a unix socket path; empty: TCP on 127.0.0.1
    std::uint16_t port = 0;           // TCP port; 0: a free one
    std::string log{};                // where its output goes; empty: its TempDir
  };
  // url() names no export: nbdkit serves any.
  explicit Nbdkit(const Options& options);
};

}  // namespace netblk::test
