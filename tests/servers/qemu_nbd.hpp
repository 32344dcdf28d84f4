// qemu-nbd exporting one image over TCP on 127.0.0.1 or over a unix socket, persistent
// (-t). Writable exports advertise no multi-conn. Its log in a TempDir of its own; ready
// when the port or socket accepts; stopped by PID.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "servers.hpp"

namespace netblk::test {

class QemuNbd {
 public:
  struct Options {
    std::string file{};
    std::string export_name = "disk";
    std::string socket{};          // a unix socket path; empty: TCP on 127.0.0.1
    std::uint16_t port = 0;      // TCP port; 0: a free one
    bool read_only = false;      // -r
    std::string format = "raw";  // -f
    std::vector<std::string> extra{};  // more options (--object tls-creds-..., --tls-creds ID)
  };
  explicit QemuNbd(Options options);
  QemuNbd(const QemuNbd&) = delete;
  QemuNbd& operator=(const QemuNbd&) = delete;

  std::uint16_t port() const { return port_; }
  const std::string& socket() const { return socket_; }
  // nbd://127.0.0.1:port/export or nbd+unix:///export?socket=path
  std::string url() const;
  bool running() { return process_.running(); }
  int stop(int signal = 15) { return process_.stop(signal); }

 private:
  TempDir dir_;
  std::string export_name_, socket_;
  std::uint16_t port_ = 0;
  Process process_;
};

}  // namespace netblk::test
