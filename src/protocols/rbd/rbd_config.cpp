#include "protocols/rbd/rbd_config.hpp"

#include "spec/tree.hpp"

namespace netblk::rbd {
namespace {

// QEMU's qemu_rbd_next_tok: the text before the first `delim` that is not escaped by a
// backslash; `rest` gets what follows it (nullopt when there is no delimiter).
std::string next_tok(std::string src, char delim, std::optional<std::string>& rest) {
  for (std::size_t i = 0; i < src.size(); ++i) {
    if (src[i] == '\\' && i + 1 < src.size()) {
      ++i;
      continue;
    }
    if (src[i] == delim) {
      rest = src.substr(i + 1);
      src.resize(i);
      return src;
    }
  }
  rest.reset();
  return src;  // `src` is a copy: `rest` may be where it came from
}

// Whether `s` holds `c` that is not escaped.
bool has_unescaped(const std::string& s, char c) {
  std::optional<std::string> rest;
  next_tok(s, c, rest);
  return rest.has_value();
}

// QEMU's qemu_rbd_unescape: a backslash stands for the character after it.
std::string unescape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) ++i;
    out += s[i];
  }
  return out;
}

std::string text_of(const Json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

}  // namespace

std::string escape(const std::string& s, std::string_view special) {
  std::string out;
  for (const char ch : s) {
    if (ch == '\\' || special.find(ch) != std::string_view::npos) out += '\\';
    out += ch;
  }
  return out;
}

bool secret_option(const std::string& key) { return key == "key"; }

Json options_from_filename(const std::string& filename) {
  if (filename.rfind("rbd:", 0) != 0) throw Error(EINVAL, "File name must start with 'rbd:'");
  std::optional<std::string> p = filename.substr(4);
  Json out = Json::object();
  const std::string pool = next_tok(*p, '/', p);
  if (!p) throw Error(EINVAL, "Pool name is required");
  out["pool"] = unescape(pool);
  std::string image;
  if (has_unescaped(*p, '@')) {
    image = next_tok(*p, '@', p);
    out["snapshot"] = unescape(next_tok(*p, ':', p));
  } else {
    image = next_tok(*p, ':', p);
  }
  if (has_unescaped(image, '/')) {
    std::optional<std::string> rest;
    out["namespace"] = unescape(next_tok(image, '/', rest));
    image = *rest;
  } else {
    out["namespace"] = "";
  }
  out["image"] = unescape(image);
  Json pairs = Json::array();
  while (p) {
    const std::string name = unescape(next_tok(*p, '=', p));
    if (!p) throw Error(EINVAL, "conf option " + name + " has no value");
    const std::string value = unescape(next_tok(*p, ':', p));
    if (name == "conf") {
      out["conf"] = value;
    } else if (name == "id") {
      out["user"] = value;
    } else {
      pairs.push_back(name);
      pairs.push_back(value);
    }
  }
  if (!pairs.empty()) out["=keyvalue-pairs"] = pairs.dump();
  return out;
}

void parse_filename(const std::string& filename, Json& options) { options["filename"] = filename; }

RbdConfig config_from_options(spec::Options& o) {
  Json tree = o.tree();
  for (auto it = tree.begin(); it != tree.end(); ++it) o.ignore(it.key());
  if (auto f = tree.find("filename"); f != tree.end()) {
    const std::string filename = spec::scalar_text(*f);
    tree.erase("filename");
    spec::refuse_with_filename(tree, {"pool", "namespace", "image", "snapshot", "conf", "user", "=keyvalue-pairs"});
    spec::merge(tree, options_from_filename(filename));
  }
  spec::Options e(tree, spec::Options::Kind::protocol, "rbd");
  RbdConfig c;
  const auto pool = e.str("pool");
  if (!pool) e.invalid("pool", "is missing");
  c.pool = *pool;
  if (auto ns = e.str("namespace")) c.ns = *ns;
  const auto image = e.str("image");
  if (!image) e.invalid("image", "is missing");
  if (image->empty()) throw Error(EINVAL, "rbd:" + escape(c.pool) + "/: image name must be provided");
  c.image = *image;
  if (auto snap = e.str("snapshot")) c.snapshot = *snap;
  c.conf = e.str("conf");
  c.user = e.str("user");
  if (auto encrypt = e.take("encrypt"))
    throw Error(ENOTSUP, display_name(c) + ": encryption (encrypt.*) is not supported by this build");

  if (auto servers = e.take("server")) {
    if (!servers->is_array()) e.invalid("server", "expects a list of monitors (server.0.host, server.0.port)");
    for (std::size_t i = 0; i < servers->size(); ++i) {
      const Json& item = (*servers)[i];
      const std::string where = "server." + std::to_string(i);
      if (!item.is_object()) throw Error(EINVAL, "Parameter '" + where + "' expects a group of options");
      spec::Options s(item, spec::Options::Kind::protocol, "rbd", where + ".");
      Monitor m;
      const auto host = s.str("host");
      if (!host) s.invalid("host", "is missing");
      m.host = *host;
      if (auto port = s.str("port")) m.port = *port;
      s.finish();
      c.servers.push_back(std::move(m));
    }
  }

  if (auto auth = e.take("auth-client-required")) {
    Json list = auth->is_array() ? *auth : Json::array({*auth});
    for (const auto& a : list) {
      const std::string mode = text_of(a);
      if (mode != "cephx" && mode != "none")
        e.invalid("auth-client-required", "does not accept value '" + mode + "' (expects 'cephx' or 'none')");
      c.auth_client_required.push_back(mode);
    }
  }
  c.key_secret = e.secret("key-secret");

  if (auto pairs = e.str("=keyvalue-pairs")) {
    Json list;
    try {
      list = Json::parse(*pairs);
    } catch (const std::exception&) {
      e.invalid("=keyvalue-pairs", "expects a JSON list of strings");
    }
    if (!list.is_array() || list.size() % 2) e.invalid("=keyvalue-pairs", "expects a JSON list of strings");
    for (std::size_t i = 0; i < list.size(); i += 2) c.keyvalues.emplace_back(text_of(list[i]), text_of(list[i + 1]));
  }
  if (auto t = e.seconds("timeout")) {
    if (t->count() == 0) e.invalid("timeout", "must be at least 1");
    c.timeout = *t;
    c.timeout_given = true;
  }
  e.finish();
  return c;
}

Json canonical_options(const RbdConfig& c) {
  Json j = Json::object();
  j["driver"] = "rbd";
  j["pool"] = c.pool;
  if (!c.ns.empty()) j["namespace"] = c.ns;
  j["image"] = c.image;
  if (!c.snapshot.empty()) j["snapshot"] = c.snapshot;
  if (c.conf) j["conf"] = *c.conf;
  if (c.user) j["user"] = *c.user;
  if (!c.servers.empty()) {
    Json list = Json::array();
    for (const auto& m : c.servers) {
      Json s{{"host", m.host}};
      if (!m.port.empty()) s["port"] = m.port;
      list.push_back(std::move(s));
    }
    j["server"] = std::move(list);
  }
  if (!c.auth_client_required.empty()) j["auth-client-required"] = c.auth_client_required;
  if (c.key_secret) j["key-secret"] = c.key_secret->id;
  Json pairs = Json::array();
  for (const auto& [k, v] : c.keyvalues) {
    if (secret_option(k)) continue;
    pairs.push_back(k);
    pairs.push_back(v);
  }
  if (!pairs.empty()) j["=keyvalue-pairs"] = pairs.dump();
  if (c.timeout_given) j["timeout"] = c.timeout.count();
  return j;
}

std::string display_name(const RbdConfig& c) {
  std::string name = "rbd:";
  name += escape(c.pool);
  name += '/';
  if (!c.ns.empty()) {
    name += escape(c.ns);
    name += '/';
  }
  name += escape(c.image);
  if (!c.snapshot.empty()) {
    name += '@';
    name += escape(c.snapshot);
  }
  return name;
}

std::string plain_filename(const RbdConfig& c) {
  if (!c.servers.empty() || !c.auth_client_required.empty() || c.key_secret || c.timeout_given) return {};
  std::string name = display_name(c);
  auto add = [&name](const std::string& k, const std::string& v) {
    name += ':';
    name += escape(k, ":=");
    name += '=';
    name += escape(v, ":");
  };
  if (c.conf) add("conf", *c.conf);
  if (c.user) add("id", *c.user);
  for (const auto& [k, v] : c.keyvalues) {
    if (secret_option(k)) return {};
    add(k, v);
  }
  return name;
}

std::string mon_host(const RbdConfig& c) {
  std::string out;
  for (const auto& m : c.servers) {
    if (!out.empty()) out += ';';
    const bool v6 = m.host.find(':') != std::string::npos;
    if (v6) out += '[';
    out += m.host;
    if (v6) out += ']';
    if (!m.port.empty()) {
      out += ':';
      out += m.port;
    }
  }
  return out;
}

std::string connection_key(const RbdConfig& c) {
  // Everything that goes into the rados_t (the secret too: a different key is a different
  // connection), never shown.
  Json k = canonical_options(c);
  k.erase("pool");
  k.erase("namespace");
  k.erase("image");
  k.erase("snapshot");
  Json pairs = Json::array();
  for (const auto& [key, v] : c.keyvalues) pairs.push_back(Json::array({key, v}));
  k["=keyvalue-pairs"] = pairs;
  if (c.key_secret) {
    // Hex: the secret's bytes need not be UTF-8.
    std::string hex;
    for (const unsigned char ch : c.key_secret->value) {
      hex += "0123456789abcdef"[ch >> 4];
      hex += "0123456789abcdef"[ch & 15];
    }
    k["key-secret-value"] = hex;
  }
  return k.dump();
}

}  // namespace netblk::rbd
