// The SSH half of a connection, in libssh2: the TCP socket, key exchange, the host key
// check (known_hosts, a pinned hash, or none), authentication (ssh-agent, identity files,
// a password) and a session channel running the "sftp" subsystem. Opening one blocks, so
// it runs on a worker thread within a time limit; afterwards the session is switched to
// non-blocking mode and driven from the event loop (sftp_connection).
#pragma once
#include <libssh2.h>

#include <chrono>
#include <memory>
#include <string>

#include "protocols/ssh/ssh_config.hpp"

namespace netblk::ssh {

// The receive window the channel offers the server (bytes it may send ahead of our
// reads). 2 MiB, as OpenSSH's client: with 16 MiB sshd spent 1.0-1.7 s of CPU per 256 MiB
// read (growing its output buffer) against 0.3 s. See decisions.md.
inline constexpr unsigned kChannelWindow = 2u << 20;

class Session {
 public:
  Session() = default;
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  int fd() const noexcept { return fd_; }
  LIBSSH2_SESSION* session() const noexcept { return session_; }
  LIBSSH2_CHANNEL* channel() const noexcept { return channel_; }
  // libssh2's last error text for this session ("" if none).
  std::string last_error() const;

 private:
  friend std::shared_ptr<Session> open_session(const SshConfig&, const std::string&, std::chrono::milliseconds);
  int fd_ = -1;
  LIBSSH2_SESSION* session_ = nullptr;
  LIBSSH2_CHANNEL* channel_ = nullptr;
};

// Connects and sets everything up, blocking, within `limit`; the session is left in
// blocking mode. Throws Error with one line naming `name` and what failed (the host key's
// fingerprint when it is unknown or does not match; what was tried when no credential
// was accepted; never the password).
std::shared_ptr<Session> open_session(const SshConfig& c, const std::string& name, std::chrono::milliseconds limit);

// "ssh-ed25519 key SHA256:<base64>" for the session's host key, as ssh-keygen -l shows it.
std::string describe_host_key(LIBSSH2_SESSION* s);

}  // namespace netblk::ssh
