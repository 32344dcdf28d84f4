// `netblk serve` (the build under test) exporting one image over TCP on 127.0.0.1 or over a
// unix socket in its own TempDir. Ready when the port or socket accepts; stopped by PID
// (SIGTERM flushes and exits 0).
#pragma once
#include <string>
#include <vector>

#include "nbd_daemon.hpp"

namespace netblk::test {

class NetblkServe : public NbdDaemon {
 public:
  struct Options {
    std::vector<std::string> args{};  // serve's options and the image: {"-t", "-f", "raw", path} or {"--drive", ...}
    std::string export_name = "disk";
    bool unix_socket = false;  // a socket in its TempDir; otherwise TCP on 127.0.0.1
  };
  explicit NetblkServe(const Options& options);
};

}  // namespace netblk::test
