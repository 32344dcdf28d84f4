#include "nbd_server.hpp"

#include <signal.h>

#include <cstdlib>
#include <stdexcept>
#include <thread>

namespace netblk::test {
using namespace std::chrono_literals;

NbdServer::NbdServer(Options options) : export_name_(options.export_name), port_(free_port()) {
  const std::string conf = dir_ / "nbd-server.conf", pidfile = dir_ / "nbd-server.pid";
  write_file(conf, "[generic]\n    listenaddr = 127.0.0.1\n    port = " + std::to_string(port_) +
                       "\n    allowlist = true\n[" + export_name_ + "]\n    exportname = " + options.file +
                       "\n    readonly = " + (options.read_only ? "true" : "false") + "\n");
  RunResult r = run({"nbd-server", "-C", conf, "-p", pidfile}, 20s);
  if (r.exit_code != 0) throw std::runtime_error("nbd-server failed: " + r.err);
  const bool listening = wait_tcp(port_);
  for (int i = 0; i < 100 && pid_ <= 0; ++i) {
    pid_ = std::atoi(read_file(pidfile).c_str());
    if (pid_ <= 0) std::this_thread::sleep_for(20ms);
  }
  if (!listening) {
    stop();
    throw std::runtime_error("nbd-server did not start");
  }
  if (pid_ <= 0) throw std::runtime_error("nbd-server: no pid in " + pidfile);
}

NbdServer::~NbdServer() { stop(); }

void NbdServer::stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  for (int i = 0; i < 250 && kill(pid_, 0) == 0; ++i) std::this_thread::sleep_for(20ms);
  if (kill(pid_, 0) == 0) kill(pid_, SIGKILL);
  pid_ = 0;
}

}  // namespace netblk::test
