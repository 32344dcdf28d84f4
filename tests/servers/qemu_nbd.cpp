#include "qemu_nbd.hpp"

namespace netblk::test {

QemuNbd::QemuNbd(Options options) : export_name_(options.export_name), socket_(options.socket) {
  std::vector<std::string> argv{"qemu-nbd", "-t", "-f", options.format, "-x", export_name_};
  if (socket_.empty()) {
    port_ = options.port ? options.port : free_port();
    argv.insert(argv.end(), {"-b", "127.0.0.1", "-p", std::to_string(port_)});
  } else {
    argv.insert(argv.end(), {"-k", socket_});
  }
  if (options.read_only) argv.push_back("-r");
  argv.insert(argv.end(), options.extra.begin(), options.extra.end());
  argv.push_back(options.file);
  process_ = start_server(argv, dir_ / "qemu-nbd.log",
                          [&] { return socket_.empty() ? wait_tcp(port_) : wait_unix(socket_); }, "qemu-nbd");
}

std::string QemuNbd::url() const {
  if (socket_.empty()) return "nbd://127.0.0.1:" + std::to_string(port_) + "/" + export_name_;
  return "nbd+unix:///" + export_name_ + "?socket=" + socket_;
}

}  // namespace netblk::test
