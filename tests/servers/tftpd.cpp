#include "tftpd.hpp"

namespace netblk::test {

Tftpd::Tftpd(Options options) : port_(options.port ? options.port : free_port()) {
  process_ = start_server({"/usr/sbin/in.tftpd", "-L", "-a", "127.0.0.1:" + std::to_string(port_), "-s", "-u", "nobody",
                           "-B", std::to_string(options.max_blksize), options.root},
                          dir_ / "tftpd.out", [&] { return wait_udp(port_); }, "in.tftpd");
}

}  // namespace netblk::test
