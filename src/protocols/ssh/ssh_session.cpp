#include "protocols/ssh/ssh_session.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <poll.h>
#include <sys/socket.h>
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

constexpr const char* kMacs = "hmac-sha1,hmac-sha2-256,hmac-sha2-512";

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (libssh2_init(0) != 0) throw Error(EIO, "libssh2 failed to initialise");
  });
}

std::string hex(const unsigned char* p, std::size_t n) {
  static const char digits[] = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    s += digits[p[i] >> 4];
    s += digits[p[i] & 15];
  }
  return s;
}

std::string key_type_name(int type) {
  switch (type) {
    case LIBSSH2_HOSTKEY_TYPE_RSA:
      return "ssh-rsa";
    case LIBSSH2_HOSTKEY_TYPE_DSS:
      return "ssh-dss";
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_256:
      return "ecdsa-sha2-nistp256";
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_384:
      return "ecdsa-sha2-nistp384";
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_521:
      return "ecdsa-sha2-nistp521";
    case LIBSSH2_HOSTKEY_TYPE_ED25519:
      return "ssh-ed25519";
    default:
      return "unknown";
  }
}

int known_host_key_type(int type) {
  switch (type) {
    case LIBSSH2_HOSTKEY_TYPE_RSA:
      return LIBSSH2_KNOWNHOST_KEY_SSHRSA;
    case LIBSSH2_HOSTKEY_TYPE_DSS:
      return LIBSSH2_KNOWNHOST_KEY_SSHDSS;
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_256:
      return LIBSSH2_KNOWNHOST_KEY_ECDSA_256;
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_384:
      return LIBSSH2_KNOWNHOST_KEY_ECDSA_384;
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_521:
      return LIBSSH2_KNOWNHOST_KEY_ECDSA_521;
    case LIBSSH2_HOSTKEY_TYPE_ED25519:
      return LIBSSH2_KNOWNHOST_KEY_ED25519;
    default:
      return LIBSSH2_KNOWNHOST_KEY_UNKNOWN;
  }
}

int hash_kind(const std::string& type) {
  if (type == "md5") return LIBSSH2_HOSTKEY_HASH_MD5;
  if (type == "sha1") return LIBSSH2_HOSTKEY_HASH_SHA1;
  return LIBSSH2_HOSTKEY_HASH_SHA256;
}

std::size_t hash_size(int kind) {
  return kind == LIBSSH2_HOSTKEY_HASH_MD5 ? 16 : kind == LIBSSH2_HOSTKEY_HASH_SHA1 ? 20 : 32;
}

// The host key's sha256 as host_key_check wants it, for messages.
std::string pin_hint(LIBSSH2_SESSION* s) {
  const char* h = libssh2_hostkey_hash(s, LIBSSH2_HOSTKEY_HASH_SHA256);
  if (!h) return {};
  return "host_key_check=sha256:" + hex(reinterpret_cast<const unsigned char*>(h), 32);
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

// Checks the key against one known_hosts file: MATCH, MISMATCH or NOTFOUND. Lines libssh2
// cannot read (markers, key types it does not know) are skipped, not fatal.
int check_known_hosts_file(LIBSSH2_SESSION* s, const std::string& file, const SshConfig& c) {
  std::ifstream in(file);
  if (!in) return LIBSSH2_KNOWNHOST_CHECK_NOTFOUND;
  std::size_t len = 0;
  int type = 0;
  const char* key = libssh2_session_hostkey(s, &len, &type);
  if (!key) return LIBSSH2_KNOWNHOST_CHECK_FAILURE;
  LIBSSH2_KNOWNHOSTS* hosts = libssh2_knownhost_init(s);
  if (!hosts) return LIBSSH2_KNOWNHOST_CHECK_FAILURE;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#' || line[0] == '@') continue;
    line += '\n';
    libssh2_knownhost_readline(hosts, line.data(), line.size(), LIBSSH2_KNOWNHOST_FILE_OPENSSH);
  }
  libssh2_knownhost* found = nullptr;
  const int port = std::atoi(c.server.port.c_str());
  const int r = libssh2_knownhost_checkp(hosts, c.server.host.c_str(), port, key, len,
                                         LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW |
                                             known_host_key_type(type),
                                         &found);
  libssh2_knownhost_free(hosts);
  return r;
}

void check_host_key(LIBSSH2_SESSION* s, const SshConfig& c, const std::string& name) {
  const HostKeyCheck& h = c.host_key;
  switch (h.mode) {
    case HostKeyCheck::Mode::none:
      return;
    case HostKeyCheck::Mode::hash: {
      const int kind = hash_kind(h.type);
      const char* got = libssh2_hostkey_hash(s, kind);
      if (!got) throw Error(EIO, name + ": failed to read the remote host key");
      std::string want;
      for (char ch : h.hash)
        if (ch != ':') want += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      if (hex(reinterpret_cast<const unsigned char*>(got), hash_size(kind)) == want) return;
      throw Error(EPERM, name + ": remote host key does not match host_key_check '" + h.type + ":" + h.hash +
                             "' (the server has a " + describe_host_key(s) + "; " + pin_hint(s) + ")");
    }
    case HostKeyCheck::Mode::known_hosts:
      break;
  }
  // The user's file (home from the password database, as QEMU's libssh does), then the
  // system's.
  std::vector<std::string> files;
  if (const std::string home = local_home(); !home.empty()) files.push_back(home + "/.ssh/known_hosts");
  files.push_back("/etc/ssh/ssh_known_hosts");
  for (const auto& file : files) {
    const int r = check_known_hosts_file(s, file, c);
    if (r == LIBSSH2_KNOWNHOST_CHECK_MATCH) return;
    if (r == LIBSSH2_KNOWNHOST_CHECK_MISMATCH)
      throw Error(EPERM, name + ": host key (" + describe_host_key(s) + ") does not match the one in " + file +
                             "; this may be a possible attack");
    if (r == LIBSSH2_KNOWNHOST_CHECK_FAILURE)
      throw Error(EIO, name + ": failure matching the host key with " + file);
  }
  throw Error(EPERM, name + ": no host key was found in known_hosts for " + c.server.describe() + " (the server has a " +
                         describe_host_key(s) + "; " + pin_hint(s) + ")");
}

bool offers(const std::string& methods, std::string_view method) {
  std::size_t start = 0;
  while (start <= methods.size()) {
    const std::size_t end = std::min(methods.find(',', start), methods.size());
    if (std::string_view(methods).substr(start, end - start) == method) return true;
    start = end + 1;
  }
  return false;
}

bool try_agent(LIBSSH2_SESSION* s, const std::string& user, std::vector<std::string>& tried) {
  const char* sock = std::getenv("SSH_AUTH_SOCK");
  if (!sock || !*sock) {
    tried.push_back("ssh-agent (SSH_AUTH_SOCK is not set)");
    return false;
  }
  LIBSSH2_AGENT* agent = libssh2_agent_init(s);
  if (!agent) {
    tried.push_back("ssh-agent (cannot start)");
    return false;
  }
  bool ok = false;
  int refused = 0;
  if (libssh2_agent_connect(agent) != 0) {
    tried.push_back(std::string("ssh-agent (cannot connect to ") + sock + ")");
  } else if (libssh2_agent_list_identities(agent) != 0) {
    tried.push_back("ssh-agent (cannot list its keys)");
  } else {
    libssh2_agent_publickey* prev = nullptr;
    libssh2_agent_publickey* id = nullptr;
    while (!ok && libssh2_agent_get_identity(agent, &id, prev) == 0) {
      if (libssh2_agent_userauth(agent, user.c_str(), id) == 0) ok = true;
      else ++refused;
      prev = id;
    }
    if (!ok) tried.push_back("ssh-agent (" + std::to_string(refused) + " key(s) refused)");
  }
  libssh2_agent_disconnect(agent);
  libssh2_agent_free(agent);
  return ok;
}

bool try_identity_file(Session& session, const std::string& user, const std::string& file,
                       std::vector<std::string>& tried) {
  LIBSSH2_SESSION* s = session.session();
  const int r = libssh2_userauth_publickey_fromfile_ex(s, user.c_str(), static_cast<unsigned>(user.size()), nullptr,
                                                       file.c_str(), nullptr);
  if (r == 0) return true;
  if (r == LIBSSH2_ERROR_FILE || ::access(file.c_str(), R_OK) != 0)
    tried.push_back("identity file " + file + " (cannot read it: " + session.last_error() + ")");
  else
    tried.push_back("identity file " + file + " (refused)");
  return false;
}

void authenticate(Session& session, const SshConfig& c, const std::string& name) {
  LIBSSH2_SESSION* s = session.session();
  const char* list = libssh2_userauth_list(s, c.user.c_str(), static_cast<unsigned>(c.user.size()));
  if (!list) {
    if (libssh2_userauth_authenticated(s)) return;  // "none" was enough
    throw Error(EIO, name + ": cannot ask the server how to authenticate: " + session.last_error());
  }
  const std::string methods = list;
  std::vector<std::string> tried;
  if (offers(methods, "publickey")) {
    if (try_agent(s, c.user, tried)) return;
    for (const auto& f : c.identity_files)
      if (try_identity_file(session, c.user, f, tried)) return;
  } else if (!c.identity_files.empty() || std::getenv("SSH_AUTH_SOCK")) {
    tried.push_back("public keys (the server does not accept them)");
  }
  if (c.password) {
    if (!offers(methods, "password")) {
      tried.push_back("password (the server does not accept passwords)");
    } else {
      const std::string& pw = c.password->value;
      const int r = libssh2_userauth_password_ex(s, c.user.c_str(), static_cast<unsigned>(c.user.size()), pw.c_str(),
                                                 static_cast<unsigned>(pw.size()), nullptr);
      if (r == 0) return;
      tried.push_back("password from secret '" + c.password->id + "' (refused)");
    }
  }
  std::string what;
  for (const auto& t : tried) what += (what.empty() ? "" : ", ") + t;
  if (what.empty()) what = "nothing";
  throw Error(EACCES, name + ": authentication as '" + c.user + "' failed: tried " + what + "; the server accepts " +
                          methods);
}

}  // namespace

Session::~Session() {
  if (session_) {
    // Say goodbye if the socket takes it at once; never wait for a dead server.
    libssh2_session_set_blocking(session_, 0);
    libssh2_session_disconnect(session_, "netblk: closing");
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
    libssh2_session_set_blocking(session_, 1);
    libssh2_session_free(session_);  // frees the channel too
  }
  if (fd_ >= 0) ::close(fd_);
}

std::string Session::last_error() const {
  if (!session_) return {};
  char* msg = nullptr;
  int len = 0;
  libssh2_session_last_error(session_, &msg, &len, 0);
  return msg && len > 0 ? std::string(msg, static_cast<std::size_t>(len)) : std::string("unknown error");
}

std::string describe_host_key(LIBSSH2_SESSION* s) {
  std::size_t len = 0;
  int type = 0;
  const char* key = libssh2_session_hostkey(s, &len, &type);
  const char* h = libssh2_hostkey_hash(s, LIBSSH2_HOSTKEY_HASH_SHA256);
  if (!key || !h) return "host key that cannot be read";
  unsigned char b64[64] = {};
  int n = EVP_EncodeBlock(b64, reinterpret_cast<const unsigned char*>(h), 32);
  while (n > 0 && b64[n - 1] == '=') --n;  // ssh-keygen leaves the padding out
  return key_type_name(type) + " key SHA256:" + std::string(reinterpret_cast<char*>(b64), static_cast<std::size_t>(n));
}

std::shared_ptr<Session> open_session(const SshConfig& c, const std::string& name, std::chrono::milliseconds limit) {
  global_init();
  const auto deadline = Clock::now() + limit;
  auto out = std::make_shared<Session>();
  out->fd_ = connect_tcp(c.server, name, deadline);
  out->session_ = libssh2_session_init();
  if (!out->session_) throw Error(ENOMEM, name + ": cannot create an SSH session");
  LIBSSH2_SESSION* s = out->session_;
  libssh2_session_set_blocking(s, 1);
  const auto left = [&] {
    return std::max<long>(1, static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                   deadline - Clock::now()).count()));
  };
  libssh2_session_set_timeout(s, left());
  // libssh2 1.10 runs its cipher and MAC 16 bytes per call; HMAC-SHA1 first (still sound as
  // an HMAC, and offered by OpenSSH by default) took 0.80-0.85 s of a 256 MiB read where
  // HMAC-SHA2-256 took 0.91-1.16 s. Servers that refuse it get SHA-2.
  libssh2_session_method_pref(s, LIBSSH2_METHOD_MAC_SC, kMacs);
  libssh2_session_method_pref(s, LIBSSH2_METHOD_MAC_CS, kMacs);
  if (libssh2_session_handshake(s, out->fd_) != 0)
    throw Error(ECONNRESET, name + ": failed to establish SSH session: " + out->last_error());
  check_host_key(s, c, name);
  libssh2_session_set_timeout(s, left());
  authenticate(*out, c, name);
  libssh2_session_set_timeout(s, left());
  out->channel_ = libssh2_channel_open_ex(s, "session", sizeof("session") - 1, kChannelWindow,
                                          LIBSSH2_CHANNEL_PACKET_DEFAULT, nullptr, 0);
  if (!out->channel_) throw Error(EIO, name + ": cannot open an SSH channel: " + out->last_error());
  if (libssh2_channel_process_startup(out->channel_, "subsystem", sizeof("subsystem") - 1, "sftp",
                                      sizeof("sftp") - 1) != 0)
    throw Error(EIO, name + ": the server refused the sftp subsystem: " + out->last_error());
  NETBLK_LOG(debug, "{}: SSH session up ({})", name, describe_host_key(s));
  return out;
}

}  // namespace netblk::ssh
