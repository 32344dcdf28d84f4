#include "nbd_daemon.hpp"

namespace netblk::test {

NbdDaemon::NbdDaemon(std::string export_name, std::string socket, std::uint16_t port, std::string log,
                     bool own_socket)
    : export_name_(std::move(export_name)),
      socket_(own_socket ? dir_ / "nbd.sock" : std::move(socket)),
      log_(log.empty() ? dir_ / "server.log" : std::move(log)),
      port_(socket_.empty() ? (port ? port : free_port()) : 0) {}

void NbdDaemon::start(std::vector<std::string> program, ListenFlags flags, const std::vector<std::string>& rest,
                      const std::string& what) {
  if (socket_.empty())
    program.insert(program.end(), {flags.bind, "127.0.0.1", flags.port, std::to_string(port_)});
  else
    program.insert(program.end(), {flags.socket, socket_});
  program.insert(program.end(), rest.begin(), rest.end());
  process_ = start_server(program, log_, [&] { return socket_.empty() ? wait_tcp(port_) : wait_unix(socket_); }, what);
}

std::string NbdDaemon::url() const {
  const std::string path = export_name_.empty() ? "" : "/" + export_name_;
  if (socket_.empty()) return "nbd://127.0.0.1:" + std::to_string(port_) + path;
  return "nbd+unix://" + path + "?socket=" + socket_;
}

}  // namespace netblk::test
