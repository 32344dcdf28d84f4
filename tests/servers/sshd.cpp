#include "sshd.hpp"

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <chrono>
#include <thread>

namespace netblk::test {
namespace {

void keygen(const std::string& path) {
  auto r = run({"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "netblk-test", "-f", path});
  if (r.exit_code != 0) throw std::runtime_error("ssh-keygen failed: " + r.err);
}

// The first two fields of a .pub file: "ssh-ed25519 AAAA...".
std::string public_key(const std::string& private_key) {
  std::istringstream in(read_file(private_key + ".pub"));
  std::string type, blob;
  in >> type >> blob;
  return type + " " + blob;
}


}  // namespace

Sshd::Sshd(Options options) : options_(std::move(options)) {
  port_ = options_.port ? options_.port : free_port();
  std::filesystem::create_directories("/run/sshd");  // sshd's privilege separation directory
  host_key_ = dir_ / "host_ed25519";
  client_key_ = dir_ / "client_ed25519";
  stranger_key_ = dir_ / "stranger_ed25519";
  keygen(host_key_);
  keygen(client_key_);
  keygen(stranger_key_);
  write_file(dir_ / "authorized_keys", public_key(client_key_) + "\n");
  config_ = dir_ / "sshd_config";
  log_ = dir_ / "sshd.log";
  const bool password = !options_.password.empty();
  std::string conf = "Port " + std::to_string(port_) +
                     "\nListenAddress 127.0.0.1\n"
                     "HostKey " + host_key_ + "\nPidFile " + (dir_ / "sshd.pid") +
                     "\nAuthorizedKeysFile " + (dir_ / "authorized_keys") +
                     "\nUsePAM no\nStrictModes no\nPrintMotd no\nPermitRootLogin " +
                     (password ? "yes" : "prohibit-password") +
                     "\nPasswordAuthentication " + (password ? "yes" : "no") +
                     "\nKbdInteractiveAuthentication no\nMaxStartups 100\nMaxSessions 100\n"
                     "Subsystem sftp internal-sftp " + options_.sftp_flags + "\n" + options_.extra_config + "\n";
  write_file(config_, conf);
  if (password) {
    // A shadow file like the machine's, but for root's password.
    auto hash = run({"openssl", "passwd", "-6", options_.password});
    if (hash.exit_code != 0) throw std::runtime_error("openssl passwd failed: " + hash.err);
    std::string h = hash.out;
    while (!h.empty() && (h.back() == '\n' || h.back() == '\r')) h.pop_back();
    std::istringstream in(read_file("/etc/shadow"));
    std::string line, shadow;
    while (std::getline(in, line))
      if (!line.starts_with("root:")) shadow += line + "\n";
    shadow = "root:" + h + ":19000:0:99999:7:::\n" + shadow;
    write_file(dir_ / "shadow", shadow);
    chmod((dir_ / "shadow").c_str(), 0600);
  }
  start();
}

Sshd::~Sshd() { kill_all(); }

void Sshd::start() {
  std::vector<std::string> argv{"/usr/sbin/sshd", "-D", "-e", "-f", config_};
  if (!options_.password.empty()) {
    // unshare and sh exec: the process started is sshd itself.
    argv = {"unshare", "--mount", "sh", "-c",
            "mount --bind " + (dir_ / "shadow") + " /etc/shadow && exec /usr/sbin/sshd -D -e -f " + config_};
  }
  const std::uint16_t port = port_;
  process_ = start_server(argv, log_, [port] { return wait_tcp(port); }, "sshd");
}

void Sshd::kill_all() {
  if (!running()) return;
  kill_tree();
}

void Sshd::restart() {
  kill_all();
  start();
}

std::string Sshd::bare_url(const std::string& path) const {
  return "ssh://root@127.0.0.1:" + std::to_string(port_) + path;
}

std::string Sshd::url(const std::string& path) const {
  return bare_url(path) + "?host_key_check=sha256:" + host_key_hash("sha256");
}

std::string Sshd::host_key_hash(const std::string& type) const {
  // The digest of the key blob (the base64-decoded second field), as QEMU compares it.
  auto r = run({"sh", "-c", "cut -d' ' -f2 '" + host_key_ + ".pub' | base64 -d | " + type + "sum"});
  if (r.exit_code != 0) throw std::runtime_error(type + "sum of the host key failed: " + r.err);
  return r.out.substr(0, r.out.find(' '));
}

std::string Sshd::known_hosts_line() const {
  return "[127.0.0.1]:" + std::to_string(port_) + " " + public_key(host_key_);
}

SshAgent::SshAgent(const std::vector<std::string>& keys) {
  socket_ = dir_ / "agent.sock";
  const std::string sock = socket_;
  process_ = start_server({"ssh-agent", "-D", "-a", socket_}, dir_ / "agent.log", [sock] { return wait_unix(sock); },
                          "ssh-agent");
  for (const auto& k : keys) {
    auto r = run({"ssh-add", "-q", k}, std::chrono::seconds(30), {"SSH_AUTH_SOCK=" + socket_});
    if (r.exit_code != 0) throw std::runtime_error("ssh-add " + k + " failed: " + r.err);
  }
}

}  // namespace netblk::test
