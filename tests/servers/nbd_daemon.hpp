// What the NBD server launchers (qemu-nbd, nbdkit, netblk serve) share: one export over TCP
// on 127.0.0.1 or over a unix socket, its URL, and readiness by probing that port or socket.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "servers.hpp"

namespace netblk::test {

class NbdDaemon : public Daemon {
 public:
  std::uint16_t port() const { return port_; }  // 0 over a unix socket
  const std::string& socket() const { return socket_; }
  // nbd://127.0.0.1:port/export or nbd+unix:///export?socket=path (no "/export" when the
  // export name is empty).
  std::string url() const;
  // What the server wrote to stdout and stderr so far.
  std::string log() const { return read_file(log_); }

 protected:
  // The option names the server takes for a bind address, a port and a unix socket.
  struct ListenFlags {
    const char* bind;
    const char* port;
    const char* socket;
  };
  // Over `socket` (a path; "" for TCP on 127.0.0.1 at `port`, 0 for a free one), or over a
  // socket in its TempDir when `own_socket`. `log`: where its output goes ("" for its TempDir).
  NbdDaemon(std::string export_name, std::string socket, std::uint16_t port, std::string log,
            bool own_socket = false);
  // Starts `program` (argv[0] and the options before the listening ones), the listening
  // options, then `rest`; returns when the port or socket accepts, or throws.
  void start(std::vector<std::string> program, ListenFlags flags, const std::vector<std::string>& rest,
             const std::string& what);

 private:
  std::string export_name_, socket_, log_;
  std::uint16_t port_ = 0;
};

}  // namespace netblk::test
