#include "nbdkit.hpp"

namespace netblk::test {

Nbdkit::Nbdkit(Options options) : socket_(options.socket) {
  std::vector<std::string> argv{"nbdkit", "-f"};
  if (socket_.empty()) {
    port_ = options.port ? options.port : free_port();
    argv.insert(argv.end(), {"-i", "127.0.0.1", "-p", std::to_string(port_)});
  } else {
    argv.insert(argv.end(), {"-U", socket_});
  }
  argv.insert(argv.end(), options.args.begin(), options.args.end());
  process_ = start_server(argv, options.log.empty() ? dir_ / "nbdkit.log" : options.log,
                          [&] { return socket_.empty() ? wait_tcp(port_) : wait_unix(socket_); }, "nbdkit");
}

std::string Nbdkit::url() const {
  if (socket_.empty()) return "nbd://127.0.0.1:" + std::to_string(port_);
  return "nbd+unix:///?socket=" + socket_;
}

}  // namespace netblk::test
