#include "protocols/ssh/ssh_session.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cctype>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <vector>

#include "core/log.hpp"
#include "netblk/error.hpp"

namespace netblk::ssh {
namespace {

using Clock = std::chrono::steady_clock;

// Once the session runs, a send() on the (blocking) socket waits at most this long: libssh
// sends only after poll() said the socket takes bytes, and then hands it all it has
// queued; a server that stops reading must not hold the connection's thread longer.
constexpr timeval kSendTimeout{0, 50 * 1000};
// For the goodbye when a session is closed: never wait for a dead server.
constexpr timeval kGoodbyeTimeout{0, 10 * 1000};

// libssh's default ciphers with AES-GCM first (its default puts chacha20-poly1305 first):
// with AES instructions both ends spend less per byte, and on loopback the server's CPU
// is what bounds a copy. See decisions.md.
constexpr const char* kCiphers =
    "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-ctr,aes192-ctr,aes128-ctr";

std::string hex(const unsigned char* p, std::size_t n) {
  static const char digits[] = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    s += digits[p[i] >> 4];
    s += digits[p[i] & 15];
  }
  return s;
}

// The server's host key (owned by the caller), or nullptr.
struct HostKey {
  ssh_key key = nullptr;
  explicit HostKey(ssh_session s) { ssh_get_server_publickey(s, &key); }
  ~HostKey() { ssh_key_free(key); }
  HostKey(const HostKey&) = delete;
  HostKey& operator=(const HostKey&) = delete;
};

// The key's digest of `type` ("md5", "sha1", "sha256") in hex; "" when it cannot be made.
std::string key_hash_hex(ssh_key key, const std::string& type) {
  const auto kind = type == "md5"    ? SSH_PUBLICKEY_HASH_MD5
                    : type == "sha1" ? SSH_PUBLICKEY_HASH_SHA1
                                     : SSH_PUBLICKEY_HASH_SHA256;
  unsigned char* h = nullptr;
  std::size_t len = 0;
  if (!key || ssh_get_publickey_hash(key, kind, &h, &len) != 0) return {};
  std::string out = hex(h, len);
  ssh_clean_pubkey_hash(&h);
  return out;
}

// The host key's sha256 as host_key_check wants it, for messages.
std::string pin_hint(ssh_session s) {
  const HostKey k(s);
  const std::string h = key_hash_hex(k.key, "sha256");
  return h.empty() ? std::string() : "host_key_check=sha256:" + h;
}

// A TCP connection to host:port within `deadline`, TCP_NODELAY, left blocking.
int connect_tcp(const spec::SocketAddress& a, const std::string& name, Clock::time_point deadline) {
  addrinfo hints{};
  hints.ai_family = a.ipv4_only ? AF_INET : a.ipv6_only ? AF_INET6 : AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* list = nullptr;
  const int gai = ::getaddrinfo(a.host.c_str(), a.port.c_str(), &hints, &list);
  if (gai != 0)
    throw Error(EHOSTUNREACH, name + ": address resolution failed for " + a.describe() + ": " + gai_strerror(gai));
  int err = ECONNREFUSED;
  int fd = -1;
  for (addrinfo* ai = list; ai && fd < 0; ai = ai->ai_next) {
    int s = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (s < 0) {
      err = errno;
      continue;
    }
    int rc = ::connect(s, ai->ai_addr, ai->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      pollfd p{s, POLLOUT, 0};
      rc = ::poll(&p, 1, static_cast<int>(std::max<long long>(left, 0)));
      if (rc == 0) {
        errno = ETIMEDOUT;
        rc = -1;
      } else if (rc > 0) {
        int so = 0;
        socklen_t len = sizeof so;
        ::getsockopt(s, SOL_SOCKET, SO_ERROR, &so, &len);
        errno = so;
        rc = so ? -1 : 0;
      }
    }
    if (rc != 0) {
      err = errno;
      ::close(s);
      continue;
    }
    fd = s;
  }
  ::freeaddrinfo(list);
  if (fd < 0) throw Error(err, name + ": Failed to connect to '" + a.describe() + "': " + std::strerror(err));
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

// How known_hosts names the server: "host", or "[host]:port" off port 22 (as OpenSSH).
std::string known_hosts_name(const SshConfig& c) {
  std::string host;
  for (char ch : c.server.host) host += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return c.server.port == kDefaultPort ? host : "[" + host + "]:" + c.server.port;
}

enum class Known { match, mismatch, not_found };

// Checks the key against one known_hosts file. A line for this host with another key of
// the same type is a mismatch; keys of other types do not count. Lines libssh cannot read
// (markers, key types it does not know) are skipped, not fatal; hashed names match.
Known check_known_hosts_file(ssh_key key, const std::string& file, const SshConfig& c) {
  std::ifstream in(file);
  if (!in) return Known::not_found;
  const std::string host = known_hosts_name(c);
  Known result = Known::not_found;
  std::string line;
  while (std::getline(in, line)) {
    const auto first = line.find_first_not_of(" \t");
    if (first == std::string::npos || line[first] == '#' || line[first] == '@') continue;
    ssh_knownhosts_entry* entry = nullptr;
    if (ssh_known_hosts_parse_line(host.c_str(), line.c_str(), &entry) != SSH_OK || !entry) continue;
    const bool same = ssh_key_cmp(key, entry->publickey, SSH_KEY_CMP_PUBLIC) == 0;
    const bool same_type = ssh_key_type(key) == ssh_key_type(entry->publickey);
    ssh_knownhosts_entry_free(entry);
    if (same) return Known::match;
    if (same_type) result = Known::mismatch;
  }
  return result;
}

// The known_hosts files that are checked: the user's (home from the password database, as
// QEMU's libssh does), then the system's.
std::vector<std::string> known_hosts_files() {
  std::vector<std::string> files;
  if (const std::string home = local_home(); !home.empty()) files.push_back(home + "/.ssh/known_hosts");
  files.push_back("/etc/ssh/ssh_known_hosts");
  return files;
}

void check_host_key(ssh_session s, const SshConfig& c, const std::string& name) {
  const HostKeyCheck& h = c.host_key;
  if (h.mode == HostKeyCheck::Mode::none) return;
  const HostKey k(s);
  if (!k.key) throw Error(EIO, name + ": failed to read the remote host key");
  if (h.mode == HostKeyCheck::Mode::hash) {
    std::string want;
    for (char ch : h.hash)
      if (ch != ':') want += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    const std::string got = key_hash_hex(k.key, h.type);
    if (got.empty()) throw Error(EIO, name + ": failed to read the remote host key");
    if (got == want) return;
    throw Error(EPERM, name + ": remote host key does not match host_key_check '" + h.type + ":" + h.hash +
                           "' (the server has a " + describe_host_key(s) + "; " + pin_hint(s) + ")");
  }
  for (const auto& file : known_hosts_files()) {
    const Known r = check_known_hosts_file(k.key, file, c);
    if (r == Known::match) return;
    if (r == Known::mismatch)
      throw Error(EPERM, name + ": host key (" + describe_host_key(s) + ") does not match the one in " + file +
                             "; this may be a possible attack");
  }
  throw Error(EPERM, name + ": no host key was found in known_hosts for " + c.server.describe() + " (the server has a " +
                         describe_host_key(s) + "; " + pin_hint(s) + ")");
}

// What ssh_userauth_list() says, as the server spells it.
std::string method_names(int methods) {
  static const std::pair<int, const char*> names[] = {
      {SSH_AUTH_METHOD_PUBLICKEY, "publickey"},
      {SSH_AUTH_METHOD_PASSWORD, "password"},
      {SSH_AUTH_METHOD_INTERACTIVE, "keyboard-interactive"},
      {SSH_AUTH_METHOD_HOSTBASED, "hostbased"},
      {SSH_AUTH_METHOD_GSSAPI_MIC, "gssapi-with-mic"},
  };
  std::string out;
  for (const auto& [bit, text] : names)
    if (methods & bit) out += (out.empty() ? "" : ",") + std::string(text);
  return out.empty() ? std::string("nothing") : out;
}

// Whether something listens on the agent's socket: libssh's own attempt does not say.
bool agent_reachable(const char* path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (std::strlen(path) >= sizeof addr.sun_path) return false;
  std::strcpy(addr.sun_path, path);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const bool ok = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

bool try_agent(Session& session, std::vector<std::string>& tried) {
  const char* sock = std::getenv("SSH_AUTH_SOCK");
  if (!sock || !*sock) {
    tried.push_back("ssh-agent (SSH_AUTH_SOCK is not set)");
    return false;
  }
  if (!agent_reachable(sock)) {
    tried.push_back(std::string("ssh-agent (cannot connect to ") + sock + ")");
    return false;
  }
  const int r = ssh_userauth_agent(session.session(), nullptr);
  if (r == SSH_AUTH_SUCCESS) return true;
  if (r == SSH_AUTH_ERROR) tried.push_back("ssh-agent (" + session.last_error() + ")");
  else tried.push_back("ssh-agent (its keys were refused)");
  return false;
}

bool try_identity_file(Session& session, const std::string& file, std::vector<std::string>& tried) {
  ssh_key key = nullptr;
  if (ssh_pki_import_privkey_file(file.c_str(), nullptr, nullptr, nullptr, &key) != SSH_OK || !key) {
    const std::string why = ::access(file.c_str(), R_OK) != 0
                                ? std::string(std::strerror(errno))
                                : std::string("not a private key that opens without a passphrase");
    tried.push_back("identity file " + file + " (cannot read it: " + why + ")");
    return false;
  }
  const int r = ssh_userauth_publickey(session.session(), nullptr, key);
  ssh_key_free(key);
  if (r == SSH_AUTH_SUCCESS) return true;
  tried.push_back("identity file " + file + (r == SSH_AUTH_ERROR ? " (" + session.last_error() + ")" : " (refused)"));
  return false;
}

void authenticate(Session& session, const SshConfig& c, const std::string& name) {
  ssh_session s = session.session();
  const int none = ssh_userauth_none(s, nullptr);
  if (none == SSH_AUTH_SUCCESS) return;  // "none" was enough
  if (none == SSH_AUTH_ERROR)
    throw Error(EIO, name + ": cannot ask the server how to authenticate: " + session.last_error());
  const int methods = ssh_userauth_list(s, nullptr);
  std::vector<std::string> tried;
  if (methods & SSH_AUTH_METHOD_PUBLICKEY) {
    if (try_agent(session, tried)) return;
    for (const auto& f : c.identity_files)
      if (try_identity_file(session, f, tried)) return;
  } else if (!c.identity_files.empty() || std::getenv("SSH_AUTH_SOCK")) {
    tried.push_back("public keys (the server does not accept them)");
  }
  if (c.password) {
    if (!(methods & SSH_AUTH_METHOD_PASSWORD)) {
      tried.push_back("password (the server does not accept passwords)");
    } else {
      const int r = ssh_userauth_password(s, nullptr, c.password->value.c_str());
      if (r == SSH_AUTH_SUCCESS) return;
      tried.push_back("password from secret '" + c.password->id + "' (refused)");
    }
  }
  std::string what;
  for (const auto& t : tried) what += (what.empty() ? "" : ", ") + t;
  if (what.empty()) what = "nothing";
  throw Error(EACCES, name + ": authentication as '" + c.user + "' failed: tried " + what + "; the server accepts " +
                          method_names(methods));
}

// Options set before connecting: who and where; AES-GCM first; no ~/.ssh/config (QEMU's
// names say it all); the known_hosts files the host key check reads, so that libssh asks
// the server for a key of a type they hold (none when the check does not use them).
void set_options(ssh_session s, const SshConfig& c, const std::string& name) {
  const int port = std::atoi(c.server.port.c_str());
  const bool process_config = false;
  const std::string home = local_home();
  const std::string ssh_dir = home.empty() ? std::string("/nonexistent") : home + "/.ssh";
  std::string user_hosts = "/dev/null", system_hosts = "/dev/null";
  if (c.host_key.mode == HostKeyCheck::Mode::known_hosts) {
    const std::vector<std::string> files = known_hosts_files();
    system_hosts = files.back();
    if (files.size() > 1) user_hosts = files.front();
  }
  const bool ok = ssh_options_set(s, SSH_OPTIONS_PROCESS_CONFIG, &process_config) == 0 &&
                  ssh_options_set(s, SSH_OPTIONS_HOST, c.server.host.c_str()) == 0 &&
                  ssh_options_set(s, SSH_OPTIONS_PORT, &port) == 0 &&
                  ssh_options_set(s, SSH_OPTIONS_USER, c.user.c_str()) == 0 &&
                  ssh_options_set(s, SSH_OPTIONS_CIPHERS_C_S, kCiphers) == 0 &&
                  ssh_options_set(s, SSH_OPTIONS_CIPHERS_S_C, kCiphers) == 0 &&
                  ssh_options_set(s, SSH_OPTIONS_SSH_DIR, ssh_dir.c_str()) == 0 &&
                  ssh_options_set(s, SSH_OPTIONS_KNOWNHOSTS, user_hosts.c_str()) == 0 &&
                  ssh_options_set(s, SSH_OPTIONS_GLOBAL_KNOWNHOSTS, system_hosts.c_str()) == 0;
  if (!ok) throw Error(EINVAL, name + ": cannot set up the SSH session: " + ssh_get_error(s));
}

// libssh's blocking calls wait at most this long.
void set_timeout(ssh_session s, Clock::time_point deadline) {
  const long ms = std::max<long>(
      1, static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count()));
  const long seconds = ms / 1000, usec = (ms % 1000) * 1000;
  ssh_options_set(s, SSH_OPTIONS_TIMEOUT, &seconds);
  ssh_options_set(s, SSH_OPTIONS_TIMEOUT_USEC, &usec);
}

}  // namespace

void prepare_library() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (ssh_init() != SSH_OK) throw Error(EIO, "libssh failed to initialise");
    // OpenSSL (libssh's crypto) loads its configuration on the first thread that needs it
    // and keeps that thread's error state for good: let that be a thread that opens drives,
    // not a worker thread that ends and leaves it unreachable (a leak to LeakSanitizer).
    OPENSSL_init_crypto(OPENSSL_INIT_LOAD_CONFIG, nullptr);
  });
}

Session::~Session() {
  if (session_) {
    // libssh closes its descriptor itself when the connection failed (then it no longer
    // reports it); otherwise it is still open: say goodbye, without waiting, and close it.
    const int lib_fd = ssh_get_fd(session_);
    if (lib_fd >= 0 && lib_fd != fd_) {
      ssh_set_blocking(session_, 0);
      if (fd_ >= 0) ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &kGoodbyeTimeout, sizeof kGoodbyeTimeout);
      ssh_disconnect(session_);  // frees the channel; leaves a descriptor given by option open
      ::close(lib_fd);
    }
    ssh_free(session_);
  }
  if (fd_ >= 0) ::close(fd_);
}

std::string Session::last_error() const {
  if (!session_) return {};
  const char* msg = ssh_get_error(session_);
  return msg && *msg ? std::string(msg) : std::string("unknown error");
}

std::string describe_host_key(ssh_session s) {
  const HostKey k(s);
  unsigned char* h = nullptr;
  std::size_t len = 0;
  if (!k.key || ssh_get_publickey_hash(k.key, SSH_PUBLICKEY_HASH_SHA256, &h, &len) != 0)
    return "host key that cannot be read";
  // "SHA256:<base64 without padding>", as ssh-keygen -l.
  char* fingerprint = ssh_get_fingerprint_hash(SSH_PUBLICKEY_HASH_SHA256, h, len);
  ssh_clean_pubkey_hash(&h);
  const char* type = ssh_key_type_to_char(ssh_key_type(k.key));
  std::string out = std::string(type ? type : "unknown") + " key " + (fingerprint ? fingerprint : "SHA256:?");
  ssh_string_free_char(fingerprint);
  return out;
}

std::shared_ptr<Session> open_session(const SshConfig& c, const std::string& name, std::chrono::milliseconds limit) {
  prepare_library();
  const auto deadline = Clock::now() + limit;
  auto out = std::make_shared<Session>();
  out->fd_ = connect_tcp(c.server, name, deadline);
  out->session_ = ssh_new();
  if (!out->session_) throw Error(ENOMEM, name + ": cannot create an SSH session");
  ssh_session s = out->session_;
  set_options(s, c, name);
  set_timeout(s, deadline);
  // libssh gets a descriptor of its own for the socket: it closes it when the connection
  // fails, while the event loop may still have ours registered.
  const int lib_fd = ::fcntl(out->fd_, F_DUPFD_CLOEXEC, 0);
  if (lib_fd < 0) throw Error(errno, name + ": cannot duplicate the socket: " + std::strerror(errno));
  if (ssh_options_set(s, SSH_OPTIONS_FD, &lib_fd) != 0) {
    ::close(lib_fd);
    throw Error(EINVAL, name + ": cannot set up the SSH session: " + out->last_error());
  }
  if (ssh_connect(s) != SSH_OK)
    throw Error(ECONNRESET, name + ": failed to establish SSH session: " + out->last_error());
  check_host_key(s, c, name);
  set_timeout(s, deadline);
  authenticate(*out, c, name);
  set_timeout(s, deadline);
  out->channel_ = ssh_channel_new(s);
  if (!out->channel_ || ssh_channel_open_session(out->channel_) != SSH_OK)
    throw Error(EIO, name + ": cannot open an SSH channel: " + out->last_error());
  if (ssh_channel_request_subsystem(out->channel_, "sftp") != SSH_OK)
    throw Error(EIO, name + ": the server refused the sftp subsystem: " + out->last_error());
  ::setsockopt(out->fd_, SOL_SOCKET, SO_SNDTIMEO, &kSendTimeout, sizeof kSendTimeout);
  NETBLK_LOG(debug, "{}: SSH session up ({}, {})", name, describe_host_key(s), ssh_get_cipher_in(s));
  return out;
}

}  // namespace netblk::ssh
