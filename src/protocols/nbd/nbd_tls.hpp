// TLS for the NBD client (NBD_OPT_STARTTLS, then GnuTLS over the same socket): x509 with a
// tls-creds-x509 object (or the system trust store for nbds:// without tls-creds) and PSK
// with a tls-creds-psk object.
#pragma once
#include <memory>
#include <string>

#include "protocols/nbd/nbd_connection.hpp"

namespace netblk::nbd_client {

// Runs the TLS handshake over `raw` (a connected socket stream, nothing buffered) and
// returns the encrypted stream. Throws Error naming `name`.
Task<std::shared_ptr<Stream>> start_tls(std::shared_ptr<Stream> raw, const NbdConfig& config, const std::string& name);

// Checks that tls-creds names a client credential object (at open, before connecting).
void check_tls_config(const NbdConfig& config);

}  // namespace netblk::nbd_client
