// What an SSH drive names: the server, the remote path, the user, how the host key is
// checked and how to authenticate, from every QEMU spelling (ssh:// URLs with the legacy
// host_key_check query, driver=ssh with server.host/port and host-key-check.*, the legacy
// host/port/host_key_check keys, json:) and netblk's additions (identity-file,
// password-secret, x-reconnect-delay, x-io-timeout). Pure: no network, unit-tested.
#pragma once
#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "netblk/node.hpp"
#include "spec/options.hpp"
#include "spec/socket_address.hpp"

namespace netblk::ssh {

inline constexpr const char* kDefaultPort = "22";

struct HostKeyCheck {
  enum class Mode { known_hosts, none, hash };
  Mode mode = Mode::known_hosts;
  std::string type;  // hash: "md5", "sha1" or "sha256"
  std::string hash;  // hash: hex, ':' separators allowed (as QEMU)
};

struct SshConfig {
  spec::SocketAddress server;  // inet only
  std::string path;
  std::string user;        // the remote user (the local user's name when not given)
  bool user_given = false;
  HostKeyCheck host_key;
  std::vector<std::string> identity_files;  // netblk's: tried in order after the agent
  std::optional<spec::Options::Secret> password;  // netblk's: password-secret
  // netblk's: how long requests wait for a lost connection to come back (0: fail at once).
  std::chrono::seconds reconnect_delay{300};
  // netblk's: requests in flight with nothing received for this long: the connection is dead.
  std::chrono::seconds io_timeout{60};
};

// The driver's parse_filename: keeps the name as "filename"; config_from_options() parses
// it, so that a URL given together with server/path/user options is refused as QEMU does.
void parse_filename(const std::string& filename, Json& options);
// QEMU's parse_uri: ssh://[USER@]HOST[:PORT]/PATH[?host_key_check=...] into option keys.
Json options_from_url(const std::string& url);
// QEMU's host_key_check strings: no, yes, md5:HEX, sha1:HEX, sha256:HEX.
HostKeyCheck parse_legacy_host_key_check(const std::string& text);

// Reads the whole configuration from a node's options (marks every key it uses).
SshConfig config_from_options(spec::Options& o);

// QEMU's option tree ({"driver":"ssh","server":{"host":..,"port":..},"path":..,...});
// the password by its secret's id only.
Json canonical_options(const SshConfig& c);
// ssh://USER@HOST:PORT/PATH[?host_key_check=...], or "" when a URL cannot say it all
// (identity files, a password secret, IPv4/IPv6-only addresses, netblk's own options).
std::string plain_filename(const SshConfig& c);
// For messages: ssh://USER@HOST:PORT/PATH.
std::string display_name(const SshConfig& c);

// The name of the user running netblk (from the password database, as QEMU).
std::string local_user();
// That user's home directory from the password database (not $HOME, as libssh does for
// QEMU); "" when there is none.
std::string local_home();

}  // namespace netblk::ssh
