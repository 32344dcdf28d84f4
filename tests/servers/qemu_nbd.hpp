// qemu-nbd exporting one image, persistent (-t), over TCP on 127.0.0.1 or a unix socket.
// Writable exports advertise no multi-conn. Its log in a TempDir of its own; ready when the
// port or socket accepts; stopped by PID.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "nbd_daemon.hpp"

namespace netblk::test {

class QemuNbd : public NbdDaemon {
 public:
  struct Options {
    std::string file{};
    std::string export_name = "disk";
    std::string socket{};            // a unix socket path; empty: TCP on 127.0.0.1
    std::uint16_t port = 0;          // TCP port; 0: a free one
    bool read_only = false;          // -r
    std::string format = "raw";      // -f
    std::vector<std::string> extra{};  // more options (--object tls-creds-..., --tls-creds ID)
  };
  explicit QemuNbd(const Options& options);
};

}  // namespace netblk::test
