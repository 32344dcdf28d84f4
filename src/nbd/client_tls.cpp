#include "nbd/client_tls.hpp"

#include <map>
#include <mutex>

#include "core/secrets.hpp"
#include "spec/options.hpp"

namespace netblk::nbd::tls {
namespace {

std::mutex g_mutex;
std::map<std::string, Creds>& store() {
  static std::map<std::string, Creds> m;
  return m;
}

void define(const Json& tree, Creds::Type type) {
  spec::Options o(tree, spec::Options::Kind::object, "tls-creds");
  o.ignore("qom-type");
  Creds c;
  c.type = type;
  c.id = o.required_str("id");
  c.dir = o.str("dir", "");
  c.endpoint = o.str("endpoint", "client");
  if (c.endpoint != "client" && c.endpoint != "server")
    throw Error(EINVAL, "Parameter 'endpoint' does not accept value '" + c.endpoint + "'");
  c.priority = o.str("priority", "");
  o.boolean("loaded");
  if (type == Creds::Type::x509) {
    c.verify_peer = o.boolean("verify-peer", true);
    o.boolean("sanity-check");
    if (o.str("passwordid")) throw Error(ENOTSUP, "tls-creds-x509 '" + c.id + "': passwordid is not supported");
  } else {
    c.username = o.str("username", "qemu");
  }
  o.finish();
  if (c.dir.empty()) throw Error(EINVAL, "tls-creds '" + c.id + "': 'dir' is required");
  std::lock_guard lock(g_mutex);
  if (!store().emplace(c.id, c).second) throw Error(EEXIST, "attempt to add duplicate object id '" + c.id + "'");
}

struct Registration {
  Registration() {
    secrets::register_object_type("tls-creds-x509", [](const Json& t) { define(t, Creds::Type::x509); });
    secrets::register_object_type("tls-creds-psk", [](const Json& t) { define(t, Creds::Type::psk); });
  }
} const kRegistration;

}  // namespace

Creds creds(const std::string& id) {
  std::lock_guard lock(g_mutex);
  auto it = store().find(id);
  if (it == store().end()) throw Error(ENOENT, "No TLS credentials with id '" + id + "'");
  return it->second;
}

}  // namespace netblk::nbd::tls
