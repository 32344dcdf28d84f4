// OpenSSH's sshd on 127.0.0.1 and an ssh-agent, for the SSH driver's tests. Everything
// lives in TempDirs of their own: sshd's config, its ed25519 host key, the authorized
// client key, the pid file and the log; the agent's socket. sshd runs in the foreground
// (-D -e), is ready when its port accepts, and is stopped by PID.
//
// Root may log in with the client key (and another key it does not accept is there to be
// refused). With a password, sshd runs in a mount namespace of its own in which
// /etc/shadow gives root that password (sshd checks passwords against the shadow file
// when PAM is off), so the machine's password database is never touched.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "servers.hpp"

namespace netblk::test {

class Sshd : public Daemon {
 public:
  struct Options {
    std::uint16_t port = 0;        // 0: a free one
    std::string password{};        // non-empty: root may also log in with this password
    std::string sftp_flags{};      // added to "Subsystem sftp internal-sftp" ("-P fsync")
    std::string extra_config{};    // more sshd_config lines
  };
  explicit Sshd(Options options);
  ~Sshd();

  std::uint16_t port() const { return port_; }
  // ssh://root@127.0.0.1:PORT/PATH?host_key_check=sha256:HEX (the key pinned, as QEMU
  // takes it: no known_hosts needed).
  std::string url(const std::string& path) const;
  // ssh://root@127.0.0.1:PORT/PATH, for names that say the host key check another way.
  std::string bare_url(const std::string& path) const;
  // The host key's digest in hex, as host_key_check wants it: "md5", "sha1" or "sha256".
  std::string host_key_hash(const std::string& type) const;
  // A known_hosts line for this server: "[127.0.0.1]:PORT ssh-ed25519 AAAA...".
  std::string known_hosts_line() const;
  // The client key root may log in with, and a key it may not (private key files).
  const std::string& client_key() const { return client_key_; }
  const std::string& stranger_key() const { return stranger_key_; }
  const std::string& log_path() const { return log_; }

  // Kills sshd and every process it started (each connection's sshd and sftp server),
  // by PID, with SIGKILL: established connections drop as if the server crashed.
  void kill_all();
  // Starts sshd again on the same port with the same keys and config.
  void restart();

 private:
  void start();
  Options options_;
  std::uint16_t port_ = 0;
  std::string config_, log_, host_key_, client_key_, stranger_key_;
};

// An ssh-agent in the foreground on a socket in a TempDir of its own, holding `keys`.
class SshAgent : public Daemon {
 public:
  explicit SshAgent(const std::vector<std::string>& keys);
  const std::string& socket() const { return socket_; }

 private:
  std::string socket_;
};

}  // namespace netblk::test
