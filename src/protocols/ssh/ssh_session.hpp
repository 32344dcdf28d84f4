// The SSH half of a connection, in libssh: the TCP socket, key exchange, the host key
// check (known_hosts, a pinned hash, or none), authentication (ssh-agent, identity files,
// a password) and a session channel running the "sftp" subsystem. Opening one blocks, so
// it runs on a worker thread within a time limit; afterwards the session is switched to
// non-blocking mode and driven from the event loop (sftp_connection).
#pragma once
#include <libssh/libssh.h>

#include <chrono>
#include <memory>
#include <string>

#include "protocols/ssh/ssh_config.hpp"

namespace netblk::ssh {

class Session {
 public:
  Session() = default;
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // The socket to wait on. libssh has a descriptor of its own for the same socket (a
  // duplicate), which it closes when the connection fails; this one stays open, and
  // registered, until the session is destroyed.
  int fd() const noexcept { return fd_; }
  ssh_session session() const noexcept { return session_; }
  ssh_channel channel() const noexcept { return channel_; }
  // libssh's last error text for this session ("unknown error" if none).
  std::string last_error() const;

 private:
  friend std::shared_ptr<Session> open_session(const SshConfig&, const std::string&, std::chrono::milliseconds);
  int fd_ = -1;
  ssh_session session_ = nullptr;
  ssh_channel channel_ = nullptr;
};

// Initialises libssh and OpenSSL, once: called by open_session(), and first by the thread
// that opens a drive.
void prepare_library();

// Connects and sets everything up, blocking, within `limit`; the session is left in
// blocking mode. Throws Error with one line naming `name` and what failed (the host key's
// fingerprint when it is unknown or does not match; what was tried when no credential
// was accepted; never the password).
std::shared_ptr<Session> open_session(const SshConfig& c, const std::string& name, std::chrono::milliseconds limit);

// "ssh-ed25519 key SHA256:<base64>" for the session's host key, as ssh-keygen -l shows it.
std::string describe_host_key(ssh_session s);

}  // namespace netblk::ssh
