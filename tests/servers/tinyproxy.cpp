#include "tinyproxy.hpp"

#include <sys/stat.h>

namespace netblk::test {

Tinyproxy::Tinyproxy() : Tinyproxy(Options{}) {}

Tinyproxy::Tinyproxy(Options options) : port_(free_port()) {
  const std::string d = dir_.path();
  chmod(d.c_str(), 0777);  // tinyproxy may drop to an unprivileged user for its log
  std::string conf = "Port " + std::to_string(port_) +
                     "\nListen 127.0.0.1\nBind 127.0.0.1\nAllow 127.0.0.1\n"
                     "Timeout 30\nMaxClients 50\nDisableViaHeader Yes\n";
  if (!options.user.empty()) conf += "BasicAuth " + options.user + " " + options.password + "\n";
  conf += "LogLevel Info\nLogFile \"" + d + "/tinyproxy.log\"\nPidFile \"" + d + "/tinyproxy.pid\"\n";
  write_file(dir_ / "tinyproxy.conf", conf);
  process_ = start_server({"/usr/bin/tinyproxy", "-d", "-c", dir_ / "tinyproxy.conf"}, dir_ / "tinyproxy.out",
                          [&] { return wait_tcp(port_); }, "tinyproxy");
}

std::vector<std::string> Tinyproxy::env() const {
  std::string url = "http://127.0.0.1:" + std::to_string(port_);
  return {"http_proxy=" + url, "https_proxy=" + url, "no_proxy=", "NO_PROXY="};
}

}  // namespace netblk::test
