#include "protocols/nbd/nbd_config.hpp"

#include <algorithm>
#include <cctype>
#include <thread>

#include "spec/tree.hpp"

namespace netblk::nbd_client {
namespace {

[[noreturn]] void bad_url() { throw Error(EINVAL, "No valid URL specified"); }

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// nbd[s][+tcp|+unix]://[user@]host[:port]/[export][?socket=path][#fragment]
Json options_from_url(const std::string& url) {
  const auto sep = url.find("://");
  const std::string scheme = url.substr(0, sep);
  bool is_unix, tls;
  if (scheme == "nbd" || scheme == "nbd+tcp") is_unix = false, tls = false;
  else if (scheme == "nbd+unix") is_unix = true, tls = false;
  else if (scheme == "nbds" || scheme == "nbds+tcp") is_unix = false, tls = true;
  else if (scheme == "nbds+unix") is_unix = true, tls = true;
  else bad_url();

  std::string_view rest(url);
  rest.remove_prefix(sep + 3);
  if (auto hash = rest.find('#'); hash != std::string_view::npos) rest = rest.substr(0, hash);
  std::string_view query;
  bool has_query = false;
  if (auto q = rest.find('?'); q != std::string_view::npos) {
    query = rest.substr(q + 1);
    has_query = true;
    rest = rest.substr(0, q);
  }
  std::string_view authority = rest.substr(0, rest.find('/'));
  std::string_view path = rest.substr(authority.size());
  if (auto at = authority.rfind('@'); at != std::string_view::npos) authority.remove_prefix(at + 1);

  std::string host;
  std::string_view port_text;
  bool has_port = false;
  if (!authority.empty() && authority.front() == '[') {
    auto close = authority.find(']');
    if (close == std::string_view::npos) bad_url();
    host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') bad_url();
      port_text = after.substr(1);
      has_port = true;
    }
  } else {
    auto colon = authority.rfind(':');
    if (colon != std::string_view::npos) {
      port_text = authority.substr(colon + 1);
      has_port = true;
      authority = authority.substr(0, colon);
    }
    host = percent_decode(authority);
  }
  unsigned port = 0;
  for (char c : port_text) {
    if (c < '0' || c > '9') bad_url();
    port = port * 10 + static_cast<unsigned>(c - '0');
    if (port > 65535) bad_url();
  }

  Json out = Json::object();
  if (!path.empty() && path.front() == '/') path.remove_prefix(1);
  std::string export_name = percent_decode(path);
  if (!export_name.empty()) out["export"] = export_name;

  // Query parameters: none for TCP, exactly "socket" for unix.
  std::vector<std::pair<std::string, std::string>> params;
  if (has_query && !query.empty()) {
    std::size_t start = 0;
    while (start <= query.size()) {
      std::size_t end = query.find('&', start);
      if (end == std::string_view::npos) end = query.size();
      std::string_view item = query.substr(start, end - start);
      if (!item.empty()) {
        auto eq = item.find('=');
        std::string name = percent_decode(item.substr(0, eq));
        std::string value = eq == std::string_view::npos ? "" : percent_decode(item.substr(eq + 1));
        params.emplace_back(std::move(name), std::move(value));
      }
      start = end + 1;
    }
  }
  if (params.size() > 1 || (is_unix && params.empty()) || (!is_unix && !params.empty())) bad_url();

  if (is_unix) {
    if (!host.empty() || (has_port && !port_text.empty()) || params[0].first != "socket") bad_url();
    out["server"] = Json{{"type", "unix"}, {"path", params[0].second}};
  } else {
    if (host.empty()) bad_url();
    out["server"] = Json{{"type", "inet"}, {"host", host}, {"port", std::to_string(port ? port : kDefaultPort)}};
  }
  if (tls) out["x-tls"] = true;
  return out;
}

// QEMU's inet_parse: "host:port", "[v6]:port" or ":port", then ",ipv4"/",ipv6"/... options.
Json inet_server(const std::string& spec) {
  std::string host, rest;
  if (!spec.empty() && spec.front() == '[') {
    auto close = spec.find(']');
    if (close == std::string::npos || close + 1 >= spec.size() || spec[close + 1] != ':')
      throw Error(EINVAL, "error parsing IPv6 address '" + spec + "'");
    host = spec.substr(1, close - 1);
    rest = spec.substr(close + 2);
  } else {
    auto colon = spec.find(':');
    if (colon == std::string::npos) throw Error(EINVAL, "error parsing address '" + spec + "'");
    host = spec.substr(0, colon);
    rest = spec.substr(colon + 1);
  }
  std::string port = rest.substr(0, rest.find(','));
  if (port.empty()) throw Error(EINVAL, "error parsing address '" + spec + "'");
  Json server{{"type", "inet"}, {"host", host}, {"port", port}};
  std::string opts = rest.substr(port.size());
  if (opts.find(",ipv4") != std::string::npos) server["ipv4"] = true;
  if (opts.find(",ipv6") != std::string::npos) server["ipv6"] = true;
  return server;
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
    out["server"] = inet_server(host_spec);
  }
  return out;
}

// A number of seconds, with QEMU's message for anything else.
std::optional<std::uint64_t> seconds_option(spec::Options& o, const std::string& key) {
  auto v = o.take(key);
  if (!v) return std::nullopt;
  if (v->is_number_unsigned()) return v->get<std::uint64_t>();
  if (v->is_number_integer()) {
    if (v->get<std::int64_t>() < 0) o.invalid(key, "must not be negative");
    return static_cast<std::uint64_t>(v->get<std::int64_t>());
  }
  if (v->is_string()) {
    const std::string s = v->get<std::string>();
    if (!s.empty() && s.size() < 10 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return std::stoull(s);
    if (s.starts_with("-")) o.invalid(key, "must not be negative");
  }
  throw Error(EINVAL, "Parameter '" + key + "' expects a number");
}

std::string bracket_host(const std::string& host) {
  return host.find(':') != std::string::npos ? "[" + host + "]" : host;
}

NbdAddress address_from_server(const Json& tree) {
  spec::Options s(tree, spec::Options::Kind::object, "nbd");
  NbdAddress a;
  auto type = s.str("type");
  if (!type) throw Error(EINVAL, "Parameter 'type' is missing");
  if (*type == "inet") {
    a.type = NbdAddress::Type::inet;
    auto host = s.str("host");
    if (!host) throw Error(EINVAL, "Parameter 'host' is missing");
    auto port = s.str("port");
    if (!port) throw Error(EINVAL, "Parameter 'port' is missing");
    a.host = *host;
    a.port = *port;
    a.ipv4_only = s.boolean("ipv4", false);
    a.ipv6_only = s.boolean("ipv6", false);
    if (a.ipv4_only && a.ipv6_only) a.ipv4_only = a.ipv6_only = false;  // both allowed = either
    s.boolean("numeric");
    s.str("to");
    s.boolean("keep-alive");
    s.boolean("mptcp");
  } else if (*type == "unix") {
    a.type = NbdAddress::Type::unix_socket;
    auto path = s.str("path");
    if (!path) throw Error(EINVAL, "Parameter 'path' is missing");
    a.path = *path;
    if (s.boolean("abstract", false)) a.path.insert(a.path.begin(), '\0');
    s.boolean("tight");
  } else if (*type == "vsock" || *type == "fd") {
    throw Error(ENOTSUP, "NBD server address type '" + *type + "' is not supported");
  } else {
    throw Error(EINVAL, "Parameter 'type' does not accept value '" + *type + "'");
  }
  s.finish();
  return a;
}

}  // namespace

std::string percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size()) bad_url();
    int hi = hex_value(s[i + 1]), lo = hex_value(s[i + 2]);
    if (hi < 0 || lo < 0) bad_url();
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

std::string percent_encode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) || std::string_view("-._~/:@!$'()*,;").find(c) != std::string_view::npos) {
      out += c;
    } else {
      out += '%';
      out += kHex[u >> 4];
      out += kHex[u & 15];
    }
  }
  return out;
}

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
    for (auto it = tree.begin(); it != tree.end(); ++it) {
      const std::string& key = it.key();
      if (key == "host" || key == "port" || key == "path" || key == "export" || key == "server") {
        std::string shown = key;
        if (key == "server" && it->is_object() && !it->empty()) shown += "." + it->begin().key();
        throw Error(EINVAL, "Option '" + shown + "' cannot be used with a file name");
      }
    }
    spec::merge(tree, options_from_filename(filename));
  }

  spec::Options e(tree, spec::Options::Kind::protocol, "nbd");
  NbdConfig c;
  // The legacy host/port/path keys become server.* (QEMU's nbd_process_legacy_socket_options).
  auto host = e.str("host");
  auto port = e.str("port");
  auto path = e.str("path");
  Json server = e.take("server").value_or(Json::object());
  if (!server.is_object()) throw Error(EINVAL, "Parameter 'server' expects an object of options");
  if (host || port || path) {
    if (!server.empty()) throw Error(EINVAL, "Cannot use 'server' and path/host/port at the same time");
    if (path && host) throw Error(EINVAL, "path and host may not be used at the same time");
    if (path) {
      if (port) throw Error(EINVAL, "port may not be used without host");
      server = Json{{"type", "unix"}, {"path", *path}};
    } else if (host) {
      server = Json{{"type", "inet"}, {"host", *host}, {"port", port.value_or(std::to_string(kDefaultPort))}};
    }
  }
  if (server.empty()) throw Error(EINVAL, "NBD server address missing");
  c.address = address_from_server(server);

  c.export_name = e.str("export");
  if (c.export_name && c.export_name->size() > kMaxStringSize)
    throw Error(EINVAL, "export name too long to send to server");
  c.tls = e.boolean("x-tls", false);
  c.tls_creds = e.str("tls-creds", "");
  if (!c.tls_creds.empty()) c.tls = true;
  c.tls_hostname = e.str("tls-hostname", "");
  if (auto bitmap = e.str("x-dirty-bitmap"))
    throw Error(ENOTSUP, "x-dirty-bitmap is not supported (netblk reports base:allocation only)");
  if (auto d = seconds_option(e, "reconnect-delay")) c.reconnect_delay = std::chrono::seconds(*d);
  if (auto t = seconds_option(e, "open-timeout")) c.open_timeout = std::chrono::seconds(*t);
  if (auto t = seconds_option(e, "x-io-timeout")) {
    if (*t == 0) e.invalid("x-io-timeout", "must be at least 1");
    c.io_timeout = std::chrono::seconds(*t);
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
  Json server = Json::object();
  if (c.address.type == NbdAddress::Type::inet) {
    server["type"] = "inet";
    server["host"] = c.address.host;
    server["port"] = c.address.port;
    if (c.address.ipv4_only) server["ipv4"] = true;
    if (c.address.ipv6_only) server["ipv6"] = true;
  } else {
    server["type"] = "unix";
    if (!c.address.path.empty() && c.address.path.front() == '\0') {
      server["path"] = c.address.path.substr(1);
      server["abstract"] = true;
    } else {
      server["path"] = c.address.path;
    }
  }
  j["server"] = std::move(server);
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
    std::string url = scheme + "://" + bracket_host(c.address.host) + ":" + c.address.port;
    if (c.export_name) {
      url += '/';
      url += percent_encode(*c.export_name);
    }
    return url;
  }
  if (!c.address.path.empty() && c.address.path.front() == '\0') return {};
  std::string url = scheme + "+unix://";
  if (c.export_name) {
    url += '/';
    url += percent_encode(*c.export_name);
  }
  url += "?socket=";
  url += percent_encode(c.address.path);
  return url;
}

std::string display_name(const NbdConfig& c) {
  std::string plain = plain_filename(c);
  if (!plain.empty()) return plain;
  if (c.address.type == NbdAddress::Type::inet)
    return "nbd://" + bracket_host(c.address.host) + ":" + c.address.port + "/" + c.export_name.value_or("");
  return "nbd+unix:///" + c.export_name.value_or("") + "?socket=" + c.address.path;
}

unsigned default_connections() {
  return std::clamp(std::thread::hardware_concurrency() / 2, 1u, 4u);
}

}  // namespace netblk::nbd_client
