#include "protocols/gluster/gluster_config.hpp"

#include <algorithm>
#include <charconv>

#include "core/log.hpp"
#include "core/parse.hpp"
#include "spec/tree.hpp"
#include "spec/uri.hpp"

namespace netblk::gluster {
namespace {

const char* const kUsage =
    "usage: gluster[+tcp|+unix|+rdma]://[HOST[:PORT]]/VOLUME/PATH[?socket=SOCKET]"
    "[,file.debug=N][,file.logfile=PATH]";

[[noreturn]] void invalid_uri(const std::string& url) {
  throw Error(EINVAL, "invalid URI " + spec::redact_password(url) + " (" + kUsage + ")");
}

// QEMU's debug option: a number, clamped to 0..9 (not refused).
int debug_from(spec::Options& o) {
  auto v = o.take("debug");
  if (!v) return kDefaultDebug;
  long long n = 0;
  if (v->is_number_integer()) {
    n = v->get<long long>();
  } else if (v->is_string()) {
    const std::string text = v->get<std::string>();
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    if (ec != std::errc() || end != text.data() + text.size() || text.empty()) o.invalid("debug", "expects a number");
  } else {
    o.invalid("debug", "expects a number");
  }
  return static_cast<int>(std::clamp<long long>(n, 0, kMaxDebug));
}

// One server.N group as QEMU takes it: type tcp is inet's old name, and a unix socket's
// path may be spelled socket.
Json normalised_server(const Json& item, std::size_t index) {
  const std::string where = "server." + std::to_string(index) + ".";
  if (!item.is_object()) throw Error(EINVAL, "Parameter 'server." + std::to_string(index) + "' expects a group of options");
  Json s = item;
  auto type = s.find("type");
  if (type == s.end()) throw Error(EINVAL, "Parameter '" + where + "type' is missing");
  std::string t = type->is_string() ? type->get<std::string>() : type->dump();
  if (t == "tcp") t = "inet";
  if (t != "inet" && t != "unix") throw Error(EINVAL, "Parameter '" + where + "type' may be 'inet' or 'unix'");
  s["type"] = t;
  if (t == "unix" && s.contains("socket")) {
    if (s.contains("path")) throw Error(EINVAL, "Conflicting parameters '" + where + "path' and '" + where + "socket'");
    s["path"] = s["socket"];
    s.erase("socket");
  }
  return s;
}

}  // namespace

void parse_filename(const std::string& filename, Json& options) { options["filename"] = filename; }

Json options_from_url(const std::string& url, bool* rdma) {
  const auto uri = spec::Uri::parse(url);
  if (!uri || uri->base != "gluster") invalid_uri(url);
  bool is_unix = false;
  if (uri->transport == "unix") {
    is_unix = true;
  } else if (uri->transport == "rdma") {
    if (rdma) *rdma = true;
  } else if (!uri->transport.empty() && uri->transport != "tcp") {
    invalid_uri(url);
  }
  // /VOLUME/PATH: slashes before each part are skipped, both parts are required.
  const std::string& p = uri->path;
  std::size_t at = p.find_first_not_of('/');
  if (at == std::string::npos) invalid_uri(url);
  const std::size_t volume_end = p.find('/', at);
  if (volume_end == std::string::npos) invalid_uri(url);
  const std::string volume = p.substr(at, volume_end - at);
  at = p.find_first_not_of('/', volume_end);
  if (at == std::string::npos) invalid_uri(url);
  const std::string path = p.substr(at);

  // unix takes exactly one parameter, socket=; tcp none.
  if (uri->params.size() > 1 || (is_unix && uri->params.empty()) || (!is_unix && !uri->params.empty()))
    invalid_uri(url);
  Json server = Json::object();
  if (is_unix) {
    if (!uri->host.empty() || uri->port || uri->params[0].first != "socket" || uri->params[0].second.empty())
      invalid_uri(url);
    server = Json{{"type", "unix"}, {"path", uri->params[0].second}};
  } else {
    const unsigned port = uri->port && *uri->port ? *uri->port : kDefaultPort;
    server = Json{{"type", "inet"}, {"host", uri->host.empty() ? "localhost" : uri->host},
                  {"port", std::to_string(port)}};
  }
  Json out = Json::object();
  out["volume"] = volume;
  out["path"] = path;
  out["server"] = Json::array({server});
  return out;
}

GlusterConfig config_from_options(spec::Options& o) {
  // Work on a copy that the filename (if any) is merged into; every key of `o` is ours.
  Json tree = o.tree();
  for (auto it = tree.begin(); it != tree.end(); ++it) o.ignore(it.key());
  GlusterConfig c;
  if (auto f = tree.find("filename"); f != tree.end()) {
    const std::string filename = spec::scalar_text(*f);
    tree.erase("filename");
    spec::refuse_with_filename(tree, {"volume", "path", "server"});
    spec::merge(tree, options_from_url(filename, &c.rdma_requested));
  }

  spec::Options e(tree, spec::Options::Kind::protocol, "gluster");
  const auto volume = e.str("volume");
  if (!volume || volume->empty()) e.invalid("volume", "is missing");
  c.volume = *volume;
  const auto path = e.str("path");
  if (!path || path->empty()) e.invalid("path", "is missing");
  c.path = *path;

  auto servers = e.take("server");
  if (!servers || (servers->is_array() && servers->empty()) || (servers->is_object() && servers->empty()))
    e.invalid("server", "is missing");
  if (!servers->is_array()) e.invalid("server", "expects a list of servers (server.0.type, server.0.host, ...)");
  Json list = Json::array();
  for (std::size_t i = 0; i < servers->size(); ++i) list.push_back(normalised_server((*servers)[i], i));
  spec::Options s(Json{{"server", list}}, spec::Options::Kind::protocol, "gluster");
  c.servers = spec::SocketAddress::list_from_options(s, "server", {.inet = true, .unix_socket = true, .fd = false},
                                                     "GlusterFS server");
  for (auto& a : c.servers) {
    if (a.type != spec::SocketAddress::Type::inet) continue;
    try {
      a.port = std::to_string(parse_uint(a.port, "port", 65535));
    } catch (const Error&) {
      throw Error(EINVAL, "'" + a.port + "' is not a valid port number");
    }
  }

  c.debug = debug_from(e);
  if (auto log = e.str("logfile")) c.logfile = log->empty() ? kDefaultLogfile : *log;
  e.finish();
  return c;
}

Json canonical_options(const GlusterConfig& c) {
  Json j = Json::object();
  j["driver"] = "gluster";
  j["volume"] = c.volume;
  j["path"] = c.path;
  Json servers = Json::array();
  for (const auto& s : c.servers) servers.push_back(s.to_options());
  j["server"] = std::move(servers);
  if (c.debug != kDefaultDebug) j["debug"] = c.debug;
  if (c.logfile != kDefaultLogfile) j["logfile"] = c.logfile;
  return j;
}

namespace {

std::string url_for(const spec::SocketAddress& s, const GlusterConfig& c) {
  const std::string where = "/" + spec::percent_encode(c.volume) + "/" + spec::percent_encode(c.path);
  if (s.type == spec::SocketAddress::Type::unix_socket)
    return "gluster+unix://" + where + "?socket=" + spec::percent_encode(s.path);
  return "gluster://" + spec::bracket_host(s.host) + ":" + s.port + where;
}

}  // namespace

std::string plain_filename(const GlusterConfig& c) {
  if (c.servers.size() != 1 || c.debug != kDefaultDebug || c.logfile != kDefaultLogfile) return {};
  const auto& s = c.servers.front();
  if (s.ipv4_only || s.ipv6_only || (!s.path.empty() && s.path.front() == '\0')) return {};
  return url_for(s, c);
}

std::string display_name(const GlusterConfig& c) {
  if (c.servers.empty()) return "gluster:///" + c.volume + "/" + c.path;
  return url_for(c.servers.front(), c);
}

std::string connection_key(const GlusterConfig& c) {
  std::string key = c.volume;
  for (const auto& s : c.servers) {
    key += '\n';
    key += s.to_options().dump();
  }
  return key;
}

std::string describe_server(const GlusterConfig& c, std::size_t index) {
  const auto& s = c.servers.at(index);
  const std::string name = "server." + std::to_string(index);
  if (s.type == spec::SocketAddress::Type::unix_socket) return name + " (socket " + s.path + ")";
  return name + " (" + s.describe() + ")";
}

}  // namespace netblk::gluster
