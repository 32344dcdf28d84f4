// What a Ceph RBD drive names, from every QEMU spelling:
// rbd:POOL[/NAMESPACE]/IMAGE[@SNAPSHOT][:KEY=VALUE[:...]] (backslash escapes; conf= and id=
// are options, any other key a librados configuration option, kept as QEMU's
// "=keyvalue-pairs"), and driver=rbd with pool, namespace, image, snapshot, conf, user,
// server.N.host/port (monitors), auth-client-required, key-secret, and netblk's timeout.
// Pure: no network, unit-tested by tests/integration/rbd.cpp.
#pragma once
#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "netblk/node.hpp"
#include "spec/options.hpp"

namespace netblk::rbd {

// Connecting, and every operation: librados's monitor and OSD timeouts and
// client_mount_timeout, and the deadline of each blocking call.
inline constexpr std::chrono::seconds kDefaultTimeout{30};

struct Monitor {
  std::string host;
  std::string port;  // "" = librados's default
};

struct RbdConfig {
  std::string pool;
  std::string ns;  // namespace
  std::string image;
  std::string snapshot;
  std::optional<std::string> conf;
  std::optional<std::string> user;
  std::vector<Monitor> servers;
  std::vector<std::string> auth_client_required;  // "cephx", "none"
  std::optional<spec::Options::Secret> key_secret;
  // librados configuration options from the filename, in order.
  std::vector<std::pair<std::string, std::string>> keyvalues;
  std::chrono::seconds timeout = kDefaultTimeout;
  bool timeout_given = false;
};

// The driver's parse_filename (QEMU's qemu_rbd_parse_filename): "rbd:..." into pool,
// namespace, image, snapshot, conf, user and "=keyvalue-pairs" (a JSON list as text:
// [KEY, VALUE, ...]). Error(EINVAL) for a name that has no pool or image.
void parse_filename(const std::string& filename, Json& options);
Json options_from_filename(const std::string& filename);

// Reads the whole configuration from a node's options (marks every key it uses).
RbdConfig config_from_options(spec::Options& o);

// QEMU's option tree, without any secret: librados's `key`/`keyfile`-like pairs given in
// the filename are left out (the key-secret's id is kept).
Json canonical_options(const RbdConfig& c);
// rbd:POOL[/NS]/IMAGE[@SNAP][:conf=..][:id=..][:K=V] when nothing else is set, else "".
std::string plain_filename(const RbdConfig& c);
// For messages: rbd:POOL[/NS]/IMAGE[@SNAP] (no key-value pairs, so never a key).
std::string display_name(const RbdConfig& c);
// The key of the process's one cluster connection for this configuration.
std::string connection_key(const RbdConfig& c);
// librados's mon_host value for the server list ("" when none).
std::string mon_host(const RbdConfig& c);
// Whether a librados option carries a secret (key, keyring contents...): never shown.
bool secret_option(const std::string& key);
// Backslash-escapes '\' and the characters of `special` (for plain_filename): a pool,
// namespace, image or snapshot name needs ":/@", a key ":=", a value ":".
std::string escape(const std::string& s, std::string_view special = ":/@");

}  // namespace netblk::rbd
