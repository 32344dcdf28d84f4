#include "spec/socket_address.hpp"

#include "spec/uri.hpp"

namespace netblk::spec {

SocketAddress SocketAddress::from_options(Options& s, Accept accept, std::string_view what) {
  SocketAddress a;
  const auto required = [&s](const std::string& key) {
    auto v = s.str(key);
    if (!v) s.invalid(key, "is missing");
    return *v;
  };
  const std::string type = required("type");
  const bool known = type == "inet" || type == "unix" || type == "fd" || type == "vsock";
  if (!known) s.invalid("type", "does not accept value '" + type + "'");
  if (type == "vsock" || (type == "inet" && !accept.inet) || (type == "unix" && !accept.unix_socket) ||
      (type == "fd" && !accept.fd))
    throw Error(ENOTSUP, std::string(what) + " address type '" + type + "' is not supported");
  if (type == "inet") {
    a.type = Type::inet;
    a.host = required("host");
    a.port = required("port");
    a.ipv4_only = s.boolean("ipv4", false);
    a.ipv6_only = s.boolean("ipv6", false);
    if (a.ipv4_only && a.ipv6_only) a.ipv4_only = a.ipv6_only = false;  // both allowed = either
    s.boolean("numeric");
    s.str("to");
    s.boolean("keep-alive");
    s.boolean("mptcp");
  } else if (type == "unix") {
    a.type = Type::unix_socket;
    a.path = required("path");
    if (s.boolean("abstract", false)) a.path.insert(a.path.begin(), '\0');
    s.boolean("tight");
  } else {
    a.type = Type::fd;
    a.fd = required("str");
  }
  return a;
}

SocketAddress SocketAddress::from_tree(const Json& tree, Accept accept, std::string_view what) {
  Options s(tree, Options::Kind::object, std::string(what));
  SocketAddress a = from_options(s, accept, what);
  s.finish();
  return a;
}

std::vector<SocketAddress> SocketAddress::list_from_options(Options& o, const std::string& key, Accept accept,
                                                            std::string_view what) {
  std::vector<SocketAddress> out;
  auto list = o.take(key);
  if (!list) return out;
  if (!list->is_array()) o.invalid(key, "expects a list of addresses");
  for (std::size_t i = 0; i < list->size(); ++i) {
    Options item((*list)[i], Options::Kind::object, std::string(what), key + "." + std::to_string(i) + ".");
    out.push_back(from_options(item, accept, what));
    item.finish();
  }
  return out;
}

SocketAddress SocketAddress::parse_inet(const std::string& text) {
  std::string host, rest;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':')
      throw Error(EINVAL, "error parsing IPv6 address '" + text + "'");
    host = text.substr(1, close - 1);
    rest = text.substr(close + 2);
  } else {
    const auto colon = text.find(':');
    if (colon == std::string::npos) throw Error(EINVAL, "error parsing address '" + text + "'");
    host = text.substr(0, colon);
    rest = text.substr(colon + 1);
  }
  const std::string port = rest.substr(0, rest.find(','));
  if (port.empty()) throw Error(EINVAL, "error parsing address '" + text + "'");
  SocketAddress a;
  a.host = std::move(host);
  a.port = port;
  const std::string opts = rest.substr(port.size());
  a.ipv4_only = opts.find(",ipv4") != std::string::npos;
  a.ipv6_only = opts.find(",ipv6") != std::string::npos;
  return a;
}

Json SocketAddress::to_options() const {
  Json j = Json::object();
  switch (type) {
    case Type::inet:
      j["type"] = "inet";
      j["host"] = host;
      j["port"] = port;
      if (ipv4_only) j["ipv4"] = true;
      if (ipv6_only) j["ipv6"] = true;
      break;
    case Type::unix_socket:
      j["type"] = "unix";
      if (!path.empty() && path.front() == '\0') {
        j["path"] = path.substr(1);
        j["abstract"] = true;
      } else {
        j["path"] = path;
      }
      break;
    case Type::fd:
      j["type"] = "fd";
      j["str"] = fd;
      break;
  }
  return j;
}

std::string SocketAddress::describe() const {
  switch (type) {
    case Type::inet:
      return bracket_host(host) + ":" + port;
    case Type::unix_socket:
      return path;
    case Type::fd:
      break;
  }
  return "fd " + fd;
}

void fold_legacy_socket_keys(Options& o, Json& server, std::string_view default_port) {
  auto host = o.str("host");
  auto port = o.str("port");
  auto path = o.str("path");
  if (!host && !port && !path) return;
  if (!server.empty()) throw Error(EINVAL, "Cannot use 'server' and path/host/port at the same time");
  if (path && host) throw Error(EINVAL, "path and host may not be used at the same time");
  if (path) {
    if (port) throw Error(EINVAL, "port may not be used without host");
    server = Json{{"type", "unix"}, {"path", *path}};
  } else if (host) {
    server = Json{{"type", "inet"}, {"host", *host}, {"port", port.value_or(std::string(default_port))}};
  }
}

}  // namespace netblk::spec
