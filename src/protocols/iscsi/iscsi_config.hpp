// What an iSCSI drive names, from every QEMU spelling: iscsi:// (and iser://) URLs,
// driver=iscsi options (transport, portal, target, lun, user, password-secret,
// initiator-name, header-digest, timeout), the global --iscsi / [iscsi "IQN"] groups and
// libiscsi's LIBISCSI_CHAP_USERNAME / LIBISCSI_CHAP_PASSWORD. Pure: no network, unit-tested.
#pragma once
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "netblk/node.hpp"
#include "spec/options.hpp"
#include "spec/socket_address.hpp"

namespace netblk::iscsi {

inline constexpr std::uint16_t kDefaultPort = 3260;
// QEMU's initiator name when none is configured.
inline constexpr const char* kDefaultInitiator = "iqn.2008-11.org.linux-kvm";

struct IscsiConfig {
  std::string transport = "tcp";  // "tcp" or "iser"
  spec::SocketAddress portal;     // inet host and port
  std::string target;             // the target's IQN
  unsigned lun = 0;
  std::string user;               // CHAP user; "" = no CHAP
  std::string password;           // never printed
  std::string password_secret;    // the --object secret's id when the password came from one
  std::string initiator_name = kDefaultInitiator;
  bool initiator_given = false;     // set by options or a group (else the default)
  std::string header_digest = "none-crc32c";
  bool header_digest_given = false;
  std::chrono::seconds timeout{0};  // 0: none
};

// The driver's parse_filename: keeps the name as "filename"; open() parses it, so that a
// name given with portal/target/lun options is refused as with other URL drivers.
void parse_filename(const std::string& filename, Json& options);

// iscsi://[USER[%PASSWORD]@]HOST[:PORT]/TARGET/LUN → {transport, portal, target, lun} and,
// when the URL has them, the user and password (returned apart: never an option).
struct UrlParts {
  Json options;
  std::string user;
  std::optional<std::string> password;
};
UrlParts parse_url(const std::string& url);

// The whole configuration from a node's options, then the --iscsi group for its target,
// then the environment (marks every key it uses).
IscsiConfig config_from_options(spec::Options& o);

// QEMU's option tree for canonical names: no password, only the secret's id.
Json canonical_options(const IscsiConfig& c);
// iscsi://host:port/target/lun when that says everything (no user, no initiator name,
// digest or timeout of its own), else "".
std::string plain_filename(const IscsiConfig& c);
// For messages: the URL without any user or password.
std::string display_name(const IscsiConfig& c);

}  // namespace netblk::iscsi
