// Fuzzes the drivers' filename parsers: spec::Uri (every scheme's URLs, as a qcow2 image's
// backing file name may carry them), its credentials and parameter rules, percent
// decoding, and QEMU's inet address syntax. Nothing may escape but netblk::Error, and a
// parsed URI's parts must hold together.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "netblk/error.hpp"
#include "spec/socket_address.hpp"
#include "spec/uri.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  if (auto uri = netblk::spec::Uri::parse(text)) {
    if (uri->port && *uri->port > 65535) std::abort();
    if (!uri->transport.empty() && uri->scheme.size() <= uri->base.size()) std::abort();
    (void)uri->credentials(netblk::spec::Uri::Userinfo::rfc);
    (void)uri->credentials(netblk::spec::Uri::Userinfo::libiscsi);
    (void)uri->unknown_param({"socket", "export"});
    (void)uri->param("socket");
  }
  (void)netblk::spec::redact_password(text);
  (void)netblk::spec::redact_password("json:" + text);
  (void)netblk::spec::percent_decode(text);
  (void)netblk::spec::percent_encode(text);
  try {
    netblk::spec::SocketAddress a = netblk::spec::SocketAddress::parse_inet(text);
    (void)a.describe();
    (void)a.to_options();
  } catch (const netblk::Error&) {
  }
  return 0;
}
