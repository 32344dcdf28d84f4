// QEMU's TLS credential objects, defined with --object and named by id from drive options
// (tls-creds=ID): tls-creds-x509 (dir with ca-cert.pem, client-cert.pem/client-key.pem or
// server-cert.pem/server-key.pem) and tls-creds-psk (dir with keys.psk: "user:hexkey" lines).
// Parsed and kept here; the NBD client (and any server side) turns them into GnuTLS
// credentials when it connects.
#pragma once
#include <string>

namespace netblk::nbd::tls {

struct Creds {
  enum class Type { x509, psk };
  Type type = Type::x509;
  std::string id;
  std::string dir;
  std::string endpoint = "client";  // client | server
  bool verify_peer = true;          // x509
  std::string username = "qemu";    // psk
  std::string priority;             // GnuTLS priority string; "" = the default
};

// The object defined with `id`; throws Error "No TLS credentials with id 'ID'".
Creds creds(const std::string& id);

}  // namespace netblk::nbd::tls
