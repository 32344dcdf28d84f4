#include "protocols/ssh/ssh_config.hpp"

#include <pwd.h>
#include <unistd.h>

#include <cctype>

#include "core/parse.hpp"
#include "spec/tree.hpp"
#include "spec/uri.hpp"

namespace netblk::ssh {
namespace {

// The digest sizes of QEMU's host-key-check.type values.
std::size_t digest_size(const std::string& type) {
  if (type == "md5") return 16;
  if (type == "sha1") return 20;
  if (type == "sha256") return 32;
  return 0;
}

// QEMU compares the hash as hex digit pairs with any ':' between them, in either case.
bool valid_hash(const std::string& hash, std::size_t bytes) {
  std::size_t digits = 0;
  for (char ch : hash) {
    if (ch == ':') {
      if (digits % 2) return false;
      continue;
    }
    if (!std::isxdigit(static_cast<unsigned char>(ch))) return false;
    ++digits;
  }
  return digits == 2 * bytes;
}

HostKeyCheck host_key_check_from(spec::Options& hk) {
  HostKeyCheck h;
  const auto mode = hk.str("mode");
  if (!mode) {
    if (hk.has("type") || hk.has("hash")) hk.invalid("mode", "is missing");
    return h;
  }
  if (*mode == "none") {
    h.mode = HostKeyCheck::Mode::none;
  } else if (*mode == "known_hosts") {
    h.mode = HostKeyCheck::Mode::known_hosts;
  } else if (*mode == "hash") {
    h.mode = HostKeyCheck::Mode::hash;
    const auto type = hk.str("type");
    if (!type) hk.invalid("type", "is missing");
    if (!digest_size(*type)) hk.invalid("type", "does not accept value '" + *type + "'");
    const auto hash = hk.str("hash");
    if (!hash) hk.invalid("hash", "is missing");
    if (!valid_hash(*hash, digest_size(*type)))
      hk.invalid("hash", "expects the " + std::to_string(digest_size(*type)) + " bytes of a " + *type +
                             " digest in hex");
    h.type = *type;
    h.hash = *hash;
  } else {
    hk.invalid("mode", "does not accept value '" + *mode + "'");
  }
  return h;
}

Json host_key_tree(const HostKeyCheck& h) {
  switch (h.mode) {
    case HostKeyCheck::Mode::none:
      return Json{{"mode", "none"}};
    case HostKeyCheck::Mode::hash:
      return Json{{"mode", "hash"}, {"type", h.type}, {"hash", h.hash}};
    case HostKeyCheck::Mode::known_hosts:
      break;
  }
  return Json{{"mode", "known_hosts"}};
}

std::vector<std::string> identity_files_from(spec::Options& e) {
  std::vector<std::string> files;
  auto v = e.take("identity-file");
  if (!v) return files;
  if (v->is_string()) {
    files.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    for (const auto& item : *v) {
      if (!item.is_string()) e.invalid("identity-file", "expects a list of file names");
      files.push_back(item.get<std::string>());
    }
  } else {
    e.invalid("identity-file", "expects a file name or a list of them");
  }
  for (const auto& f : files)
    if (f.empty()) e.invalid("identity-file", "expects a file name, not ''");
  return files;
}

const passwd* own_entry(passwd& storage, std::vector<char>& buf) {
  passwd* found = nullptr;
  buf.resize(16384);
  if (getpwuid_r(geteuid(), &storage, buf.data(), buf.size(), &found) != 0) return nullptr;
  return found;
}

}  // namespace

void parse_filename(const std::string& filename, Json& options) { options["filename"] = filename; }

Json options_from_url(const std::string& url) {
  const auto uri = spec::Uri::parse(url);
  if (!uri) throw Error(EINVAL, "No valid URL specified");
  if (uri->scheme != "ssh") throw Error(EINVAL, "URI scheme must be 'ssh'");
  if (uri->host.empty()) throw Error(EINVAL, "missing hostname in URI");
  if (uri->path.empty()) throw Error(EINVAL, "missing remote path in URI");
  const auto creds = uri->credentials();
  if (!creds) throw Error(EINVAL, "No valid URL specified");
  // Never echo it: the password may be in it.
  if (creds->password) throw Error(EINVAL, "a password in an ssh:// URL is not supported (use password-secret)");
  Json out = Json::object();
  if (!creds->user.empty()) out["user"] = creds->user;
  out["server"] = Json{{"host", uri->host}, {"port", std::to_string(uri->port.value_or(22))}};
  out["path"] = uri->path;
  // As QEMU: the parameters it understands, the others ignored.
  if (auto check = uri->param("host_key_check")) out["host_key_check"] = *check;
  return out;
}

HostKeyCheck parse_legacy_host_key_check(const std::string& text) {
  HostKeyCheck h;
  if (text == "no") {
    h.mode = HostKeyCheck::Mode::none;
    return h;
  }
  if (text == "yes") return h;
  for (const char* type : {"md5", "sha1", "sha256"}) {
    const std::string prefix = std::string(type) + ":";
    if (!text.starts_with(prefix)) continue;
    h.mode = HostKeyCheck::Mode::hash;
    h.type = type;
    h.hash = text.substr(prefix.size());
    if (!valid_hash(h.hash, digest_size(h.type)))
      throw Error(EINVAL, "host_key_check '" + text + "' is not " + std::to_string(digest_size(h.type)) +
                              " bytes of " + h.type + " in hex");
    return h;
  }
  throw Error(EINVAL, "unknown host_key_check setting (" + text + ")");
}

SshConfig config_from_options(spec::Options& o) {
  // Work on a copy that the filename (if any) is merged into; every key of `o` is ours.
  Json tree = o.tree();
  for (auto it = tree.begin(); it != tree.end(); ++it) o.ignore(it.key());
  if (auto f = tree.find("filename"); f != tree.end()) {
    const std::string filename = spec::scalar_text(*f);
    tree.erase("filename");
    spec::refuse_with_filename(tree, {"host", "port", "path", "user", "host_key_check", "server"});
    spec::merge(tree, options_from_url(filename));
  }

  spec::Options e(tree, spec::Options::Kind::protocol, "ssh");
  SshConfig c;
  // QEMU's legacy host/port keys become server.host/server.port.
  Json server = e.take("server").value_or(Json::object());
  if (!server.is_object()) e.invalid("server", "expects a group of options");
  const auto host = e.str("host");
  const auto port = e.str("port");
  if (port && !host) throw Error(EINVAL, "port may not be used without host");
  if (host) {
    if (!server.empty()) throw Error(EINVAL, "Cannot use 'server' and host/port at the same time");
    server = Json{{"host", *host}, {"port", port.value_or(kDefaultPort)}};
  }
  if (server.empty()) e.invalid("server.host", "is missing");
  // QEMU's InetSocketAddress: the keys of SocketAddress's inet type, without "type".
  if (server.contains("type")) e.invalid("server.type", "is unexpected");
  server["type"] = "inet";
  spec::Options s(server, spec::Options::Kind::object, "ssh", "server.");
  c.server = spec::SocketAddress::from_options(s, {.inet = true, .unix_socket = false, .fd = false}, "SSH server");
  s.finish();
  try {
    c.server.port = std::to_string(parse_uint(c.server.port, "port", 65535));
  } catch (const Error&) {
    throw Error(EINVAL, "Use only numeric port value");
  }

  const auto path = e.str("path");
  if (!path || path->empty()) e.invalid("path", "is missing");
  c.path = *path;
  const auto user = e.str("user");
  c.user_given = user.has_value();
  c.user = user ? *user : local_user();
  if (c.user.empty()) throw Error(EINVAL, "Can't get user name");

  const auto legacy = e.str("host_key_check");
  spec::Options hk = e.group("host-key-check");
  if (legacy) {
    if (!hk.tree().empty()) throw Error(EINVAL, "host_key_check cannot be used with host-key-check");
    c.host_key = parse_legacy_host_key_check(*legacy);
  } else {
    c.host_key = host_key_check_from(hk);
  }
  hk.finish();

  c.identity_files = identity_files_from(e);
  c.password = e.secret("password-secret");
  if (auto d = e.seconds("x-reconnect-delay")) c.reconnect_delay = *d;
  if (auto t = e.seconds("x-io-timeout")) {
    if (t->count() == 0) e.invalid("x-io-timeout", "must be at least 1");
    c.io_timeout = *t;
  }
  e.finish();
  return c;
}

Json canonical_options(const SshConfig& c) {
  Json server = c.server.to_options();
  server.erase("type");  // InetSocketAddress has none
  Json j = Json::object();
  j["driver"] = "ssh";
  j["server"] = std::move(server);
  j["path"] = c.path;
  j["user"] = c.user;
  if (c.host_key.mode != HostKeyCheck::Mode::known_hosts) j["host-key-check"] = host_key_tree(c.host_key);
  if (!c.identity_files.empty()) j["identity-file"] = c.identity_files;
  if (c.password) j["password-secret"] = c.password->id;
  const SshConfig defaults;
  if (c.reconnect_delay != defaults.reconnect_delay) j["x-reconnect-delay"] = c.reconnect_delay.count();
  if (c.io_timeout != defaults.io_timeout) j["x-io-timeout"] = c.io_timeout.count();
  return j;
}

std::string plain_filename(const SshConfig& c) {
  const SshConfig defaults;
  if (!c.identity_files.empty() || c.password || c.server.ipv4_only || c.server.ipv6_only ||
      c.reconnect_delay != defaults.reconnect_delay || c.io_timeout != defaults.io_timeout)
    return {};
  std::string url = display_name(c);
  switch (c.host_key.mode) {
    case HostKeyCheck::Mode::none:
      url += "?host_key_check=no";
      break;
    case HostKeyCheck::Mode::hash:
      url += "?host_key_check=" + c.host_key.type + ":" + c.host_key.hash;
      break;
    case HostKeyCheck::Mode::known_hosts:
      break;
  }
  return url;
}

std::string display_name(const SshConfig& c) {
  return "ssh://" + spec::percent_encode(c.user, "!$'()*,;") + "@" + spec::bracket_host(c.server.host) + ":" +
         c.server.port + spec::percent_encode(c.path);
}

std::string local_user() {
  passwd storage{};
  std::vector<char> buf;
  const passwd* pw = own_entry(storage, buf);
  return pw && pw->pw_name ? pw->pw_name : "";
}

std::string local_home() {
  passwd storage{};
  std::vector<char> buf;
  const passwd* pw = own_entry(storage, buf);
  return pw && pw->pw_dir ? pw->pw_dir : "";
}

}  // namespace netblk::ssh
