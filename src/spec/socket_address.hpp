// QEMU's SocketAddress, for every driver that names a server: NBD's `server`, SSH's
// `server.host/server.port`, GlusterFS's list `server.N.*`, iSCSI's portal.
//
//   type=inet  host, port, ipv4, ipv6 (numeric, to, keep-alive, mptcp accepted, ignored)
//   type=unix  path, abstract, tight
//   type=fd    str
//
// plus QEMU's inet_parse ("host:port[,ipv4][,ipv6]", "[v6]:port") and the legacy flat
// keys host=/port=/path= at a driver's top level. Printed back as QEMU's option tree for
// canonical names.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "netblk/node.hpp"
#include "spec/options.hpp"

namespace netblk::spec {

struct SocketAddress {
  enum class Type { inet, unix_socket, fd };
  Type type = Type::inet;
  std::string host;  // inet: name or address (IPv6 without brackets)
  std::string port;  // inet: decimal port or service name
  bool ipv4_only = false;
  bool ipv6_only = false;
  std::string path;  // unix: socket path; an abstract socket's name has a leading '\0'
  std::string fd;    // fd: a descriptor number or the name of one (QEMU's "str")

  // The address types a driver takes. Another one is refused with ENOTSUP
  // "WHAT address type 'T' is not supported" (vsock always is).
  struct Accept {
    bool inet = true;
    bool unix_socket = true;
    bool fd = false;
  };

  // The keys of one group of options (`o.group("server")`, or a group built for a list
  // item). A missing key is "Parameter 'K' is missing" (K with the group's prefix); the
  // group's own finish() rejects keys that are not an address's.
  static SocketAddress from_options(Options& group, Accept accept, std::string_view what);
  // A tree of its own, checked whole: unknown keys are "Parameter 'K' is unexpected".
  static SocketAddress from_tree(const Json& tree, Accept accept, std::string_view what);
  // A list of groups under `key` (GlusterFS: server.0.type, server.1.type, ...): each
  // checked whole, named "KEY.N." in messages. An empty or absent list gives {}.
  static std::vector<SocketAddress> list_from_options(Options& o, const std::string& key, Accept accept,
                                                      std::string_view what);
  // QEMU's inet_parse: "host:port", "[v6]:port" or ":port", then ",ipv4", ",ipv6".
  // Error(EINVAL) "error parsing address 'TEXT'" / "error parsing IPv6 address 'TEXT'".
  static SocketAddress parse_inet(const std::string& text);

  // QEMU's option tree: {"type":"inet","host":..,"port":..[,"ipv4":true]},
  // {"type":"unix","path":..[,"abstract":true]}, {"type":"fd","str":..}.
  Json to_options() const;
  // For messages: "host:port" ("[v6]:port"), the socket path, or "fd STR".
  std::string describe() const;
};

// QEMU's legacy top-level keys (nbd_process_legacy_socket_options): host=H[,port=P] or
// path=P stand for server.type=inet/unix. Reads them from `o`; when any is given, `server`
// (the driver's server group, as given) must be empty and becomes their tree, with
// `default_port` when no port was given. QEMU's messages for the bad mixes.
void fold_legacy_socket_keys(Options& o, Json& server, std::string_view default_port);

}  // namespace netblk::spec
