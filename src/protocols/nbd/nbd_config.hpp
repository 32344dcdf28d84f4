// What an NBD drive names: the server address, the export and the connection policy, from
// every QEMU spelling (nbd:// URLs, legacy nbd:host:port names, driver=nbd options with
// server.* or the legacy host/port/path keys). Pure functions: no network, unit-tested.
#pragma once
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "netblk/node.hpp"
#include "spec/options.hpp"
#include "spec/socket_address.hpp"

namespace netblk::nbd_client {

inline constexpr std::uint16_t kDefaultPort = 10809;
// Longest export name the protocol carries (NBD_MAX_STRING_SIZE).
inline constexpr std::size_t kMaxStringSize = 4096;

// The server's address: QEMU's SocketAddress (inet or unix; fd and vsock are refused).
using NbdAddress = spec::SocketAddress;

struct NbdConfig {
  NbdAddress address;
  std::optional<std::string> export_name;  // absent: the server's default export ("")
  bool tls = false;                        // nbds:// or tls-creds given
  std::string tls_creds;                   // --object tls-creds-* id
  std::string tls_hostname;
  // QEMU's reconnect-delay: how long requests wait for a lost connection to come back.
  // Absent: netblk's default (reconnect, see kDefaultReconnect); 0: fail at once.
  std::optional<std::chrono::seconds> reconnect_delay;
  // QEMU's open-timeout: 0 = one connection attempt; else retry until it elapses.
  std::chrono::seconds open_timeout{0};
  // netblk's own: a connection with requests in flight and no reply for this long is
  // declared dead (and reconnected).
  std::chrono::seconds io_timeout{60};
  // netblk's own (x-connections): connections to open when the server allows multi-conn
  // (1 = never more). Default: default_connections().
  unsigned connections = 4;
  bool connections_given = false;  // x-connections was set
};

// Half the CPUs, between 1 and 4. Extra connections pay when the server or the network
// limits one connection; on a small machine they only add threads contending for the same
// cores (2 CPUs, local nbdkit: a 1 GiB convert took 0.71 s with 1 connection, 0.83-1.3 s
// with 4; qemu-img, which never opens more than one, 0.66 s).
unsigned default_connections();

// How long in-flight requests wait for a reconnection when reconnect-delay is not given.
inline constexpr std::chrono::seconds kDefaultReconnect{300};
// A single connect + handshake attempt never takes longer than this.
inline constexpr std::chrono::seconds kAttemptTimeout{30};

// The driver's parse_filename: keeps the name as the "filename" option; open() parses it
// (so that a name given together with host/port/export options is refused as QEMU does).
void parse_filename(const std::string& filename, Json& options);

// Turns a filename into QEMU's option keys (server.type, server.host, server.port,
// server.path, export) and netblk's "x-tls" for nbds schemes. Throws Error with QEMU's
// wording ("No valid URL specified", "error parsing address '...'").
Json options_from_filename(const std::string& filename);

// Reads the whole configuration from a node's options (marks every key it uses).
NbdConfig config_from_options(spec::Options& o);

// QEMU's canonical option tree: {"driver":"nbd","server":{...},"export":...}.
Json canonical_options(const NbdConfig& c);
// The URL that opens the same export ("" when only json: can say it, e.g. with tls-creds).
std::string plain_filename(const NbdConfig& c);
// For messages: the URL, or "nbd" + the address.
std::string display_name(const NbdConfig& c);

}  // namespace netblk::nbd_client
