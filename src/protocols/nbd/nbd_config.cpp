#include "protocols/nbd/nbd_config.hpp"

#include <algorithm>
#include <thread>

#include "spec/tree.hpp"
#include "spec/uri.hpp"

namespace netblk::nbd_client {
namespace {

[[noreturn]] void bad_url() { throw Error(EINVAL, "No valid URL specified"); }

const spec::SocketAddress::Accept kAccept{.inet = true, .unix_socket = true, .fd = false};

// nbd[s][+tcp|+unix]://[user@]host[:port]/[export][?socket=path][#fragment]
Json options_from_url(const std::string& url) {
  const auto uri = spec::Uri::parse(url);
  if (!uri || !uri->has_authority) bad_url();
  bool tls;
  if (uri->base == "nbd") tls = false;
  else if (uri->base == "nbds") tls = true;
  else bad_url();
  const bool is_unix = uri->transport == "unix";
  if (!is_unix && !uri->transport.empty() && uri->transport != "tcp") bad_url();

  Json out = Json::object();
  std::string_view path = uri->path;
  if (!path.empty() && path.front() == '/') path.remove_prefix(1);
  if (!path.empty()) out["export"] = std::string(path);

  // Query parameters: none for TCP, exactly "socket" for unix.
  if (is_unix) {
    if (!uri->host.empty() || uri->port || uri->params.empty() || uri->unknown_param({"socket"})) bad_url();
    out["server"] = Json{{"type", "unix"}, {"path", uri->params.front().second}};
  } else {
    if (uri->host.empty() || !uri->params.empty()) bad_url();
    const unsigned port = uri->port.value_or(0);
    out["server"] = Json{{"type", "inet"}, {"host", uri->host}, {"port", std::to_string(port ? port : kDefaultPort)}};
  }
  if (tls) out["x-tls"] = true;
  return out;
}

// nbd:HOST:PORT[:exportname=NAME] and nbd:unix:PATH[:exportname=NAME]
Json options_from_legacy(const std::string& filename) {
  static constexpr std::string_view kExportTag = ":exportname=";
  Json out = Json::object();
  std::string file = filename;
  if (auto pos = file.find(kExportTag); pos != std::string::npos) {
    std::string export_name = file.substr(pos + kExportTag.size());
    // As QEMU: an empty name after the tag leaves the address unset too.
    if (export_name.empty()) return out;
    out["export"] = export_name;
    file.resize(pos);
  }
  if (!file.starts_with("nbd:")) throw Error(EINVAL, "File name string for NBD must start with 'nbd:'");
  std::string host_spec = file.substr(4);
  if (host_spec.empty()) return out;
  if (host_spec.starts_with("unix:")) {
    out["server"] = Json{{"type", "unix"}, {"path", host_spec.substr(5)}};
  } else {
    out["server"] = spec::SocketAddress::parse_inet(host_spec).to_options();
  }
  return out;
}

}  // namespace

void parse_filename(const std::string& filename, Json& options) { options["filename"] = filename; }

Json options_from_filename(const std::string& filename) {
  if (filename.find("://") != std::string::npos) return options_from_url(filename);
  return options_from_legacy(filename);
}

NbdConfig config_from_options(spec::Options& o) {
  // Work on a copy that the filename (if any) is merged into; every key of `o` is ours.
  Json tree = o.tree();
  for (auto it = tree.begin(); it != tree.end(); ++it) o.ignore(it.key());
  if (auto f = tree.find("filename"); f != tree.end()) {
    std::string filename = spec::scalar_text(*f);
    tree.erase("filename");
    spec::refuse_with_filename(tree, {"host", "port", "path", "export", "server"});
    spec::merge(tree, options_from_filename(filename));
  }

  spec::Options e(tree, spec::Options::Kind::protocol, "nbd");
  NbdConfig c;
  // The legacy host/port/path keys become server.* (QEMU's nbd_process_legacy_socket_options).
  Json server = e.take("server").value_or(Json::object());
  if (!server.is_object()) throw Error(EINVAL, "Parameter 'server' expects an object of options");
  spec::fold_legacy_socket_keys(e, server, std::to_string(kDefaultPort));
  if (server.empty()) throw Error(EINVAL, "NBD server address missing");
  c.address = spec::SocketAddress::from_tree(server, kAccept, "NBD server");

  c.export_name = e.str("export");
  if (c.export_name && c.export_name->size() > kMaxStringSize)
    throw Error(EINVAL, "export name too long to send to server");
  c.tls = e.boolean("x-tls", false);
  c.tls_creds = e.str("tls-creds", "");
  if (!c.tls_creds.empty()) c.tls = true;
  c.tls_hostname = e.str("tls-hostname", "");
  if (auto bitmap = e.str("x-dirty-bitmap"))
    throw Error(ENOTSUP, "x-dirty-bitmap is not supported (netblk reports base:allocation only)");
  c.reconnect_delay = e.seconds("reconnect-delay");
  if (auto t = e.seconds("open-timeout")) c.open_timeout = *t;
  if (auto t = e.seconds("x-io-timeout")) {
    if (t->count() == 0) e.invalid("x-io-timeout", "must be at least 1");
    c.io_timeout = *t;
  }
  c.connections_given = e.has("x-connections");
  c.connections = static_cast<unsigned>(e.uint("x-connections", default_connections(), 16));
  if (c.connections == 0) e.invalid("x-connections", "must be at least 1");
  e.finish();
  return c;
}

Json canonical_options(const NbdConfig& c) {
  Json j = Json::object();
  j["driver"] = "nbd";
  j["server"] = c.address.to_options();
  if (c.export_name) j["export"] = *c.export_name;
  if (!c.tls_creds.empty()) j["tls-creds"] = c.tls_creds;
  else if (c.tls) j["x-tls"] = true;
  if (!c.tls_hostname.empty()) j["tls-hostname"] = c.tls_hostname;
  return j;
}

std::string plain_filename(const NbdConfig& c) {
  if (!c.tls_creds.empty() || !c.tls_hostname.empty() || c.address.ipv4_only || c.address.ipv6_only) return {};
  const std::string scheme = c.tls ? "nbds" : "nbd";
  if (c.address.type == NbdAddress::Type::inet) {
    std::string url = scheme + "://" + c.address.describe();
    if (c.export_name) {
      url += '/';
      url += spec::percent_encode(*c.export_name);
    }
    return url;
  }
  if (!c.address.path.empty() && c.address.path.front() == '\0') return {};
  std::string url = scheme + "+unix://";
  if (c.export_name) {
    url += '/';
    url += spec::percent_encode(*c.export_name);
  }
  url += "?socket=";
  url += spec::percent_encode(c.address.path);
  return url;
}

std::string display_name(const NbdConfig& c) {
  std::string plain = plain_filename(c);
  if (!plain.empty()) return plain;
  if (c.address.type == NbdAddress::Type::inet)
    return "nbd://" + c.address.describe() + "/" + c.export_name.value_or("");
  return "nbd+unix:///" + c.export_name.value_or("") + "?socket=" + c.address.path;
}

unsigned default_connections() {
  return std::clamp(std::thread::hardware_concurrency() / 2, 1u, 4u);
}

}  // namespace netblk::nbd_client
