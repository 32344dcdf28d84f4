#include "spec/uri.hpp"

#include <algorithm>
#include <vector>

#include "spec/tree.hpp"

namespace netblk::spec {
namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_unreserved(char c) { return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_' || c == '~'; }

bool valid_scheme(std::string_view s) {
  if (s.empty() || !is_alpha(s.front())) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return is_alpha(c) || is_digit(c) || c == '+' || c == '-' || c == '.'; });
}

// "" or up to 65535 in decimal digits.
bool parse_port(std::string_view text, std::optional<unsigned>& port) {
  if (text.empty()) return true;
  unsigned n = 0;
  for (char c : text) {
    if (!is_digit(c)) return false;
    n = n * 10 + static_cast<unsigned>(c - '0');
    if (n > 65535) return false;
  }
  port = n;
  return true;
}

// The authority: [userinfo@]host[:port], host possibly "[v6]".
bool parse_authority(std::string_view authority, Uri& uri) {
  if (auto at = authority.rfind('@'); at != std::string_view::npos) {
    uri.userinfo = std::string(authority.substr(0, at));
    authority.remove_prefix(at + 1);
  }
  std::string_view port_text;
  if (!authority.empty() && authority.front() == '[') {
    const auto close = authority.find(']');
    if (close == std::string_view::npos) return false;
    uri.host = std::string(authority.substr(1, close - 1));
    uri.host_bracketed = true;
    const std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return false;
      port_text = after.substr(1);
    }
  } else {
    if (auto colon = authority.rfind(':'); colon != std::string_view::npos) {
      port_text = authority.substr(colon + 1);
      authority = authority.substr(0, colon);
    }
    auto host = percent_decode(authority);
    if (!host) return false;
    uri.host = std::move(*host);
  }
  return parse_port(port_text, uri.port);
}

bool parse_query(std::string_view query, Uri& uri) {
  std::size_t start = 0;
  while (start <= query.size()) {
    std::size_t end = query.find('&', start);
    if (end == std::string_view::npos) end = query.size();
    const std::string_view item = query.substr(start, end - start);
    if (!item.empty()) {
      const auto eq = item.find('=');
      auto name = percent_decode(item.substr(0, eq));
      auto value = eq == std::string_view::npos ? std::optional<std::string>("") : percent_decode(item.substr(eq + 1));
      if (!name || !value) return false;
      uri.params.emplace_back(std::move(*name), std::move(*value));
    }
    start = end + 1;
  }
  return true;
}

}  // namespace

std::optional<std::string> percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    const int hi = hex_value(s[i + 1]), lo = hex_value(s[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

std::string percent_encode(std::string_view s, std::string_view keep) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (is_unreserved(c) || keep.find(c) != std::string_view::npos) {
      out += c;
      continue;
    }
    const auto u = static_cast<unsigned char>(c);
    out += '%';
    out += kHex[u >> 4];
    out += kHex[u & 15];
  }
  return out;
}

namespace {

std::string redact_url_password(std::string_view text) {
  const auto scheme_end = text.find("://");
  if (scheme_end == std::string_view::npos || !valid_scheme(text.substr(0, scheme_end))) return std::string(text);
  const std::size_t authority = scheme_end + 3;
  const std::size_t authority_end = std::min(text.find_first_of("/?#", authority), text.size());
  const std::size_t at = text.substr(0, authority_end).rfind('@');
  if (at == std::string_view::npos || at < authority) return std::string(text);
  std::string_view userinfo = text.substr(authority, at - authority);
  // libiscsi reads "user%password"; elsewhere '%' starts an escape.
  const bool libiscsi = text.substr(0, 5) == "iscsi" || text.substr(0, 4) == "iser";
  const std::size_t cut = userinfo.find_first_of(libiscsi ? ":%" : ":");
  if (cut == std::string_view::npos) return std::string(text);
  return std::string(text.substr(0, authority + cut)) + std::string(text.substr(at));
}

void redact_json(Json& v) {
  if (v.is_object()) {
    std::vector<std::string> passwords;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (it.key() == "password") passwords.push_back(it.key());
      else redact_json(it.value());
    }
    for (const auto& key : passwords) v.erase(key);
  } else if (v.is_array()) {
    for (auto& e : v) redact_json(e);
  } else if (v.is_string()) {
    v = redact_url_password(v.get<std::string>());
  }
}

}  // namespace

std::string redact_password(std::string_view name) {
  if (!name.starts_with("json:")) return redact_url_password(name);
  Json tree;
  try {
    tree = parse_json_name(name);  // bounded depth; crumpled, so dotted keys are nested
  } catch (const Error&) {
    return "json:(unreadable)";  // nothing of it can be shown safely
  }
  const Json before = tree;
  redact_json(tree);
  // Shown as written unless something had to go (then in the nested form).
  return tree == before ? std::string(name) : "json:" + tree.dump();
}

std::string bracket_host(const std::string& host) {
  return host.find(':') != std::string::npos ? "[" + host + "]" : host;
}

std::optional<Uri> Uri::parse(std::string_view text) {
  Uri uri;
  const auto colon = text.find(':');
  if (colon == std::string_view::npos || !valid_scheme(text.substr(0, colon))) return std::nullopt;
  uri.scheme = std::string(text.substr(0, colon));
  const auto plus = uri.scheme.find('+');
  uri.base = uri.scheme.substr(0, plus);
  if (plus != std::string::npos) uri.transport = uri.scheme.substr(plus + 1);
  std::string_view rest = text.substr(colon + 1);

  if (auto hash = rest.find('#'); hash != std::string_view::npos) {
    uri.fragment = std::string(rest.substr(hash + 1));
    rest = rest.substr(0, hash);
  }
  if (auto q = rest.find('?'); q != std::string_view::npos) {
    uri.has_query = true;
    uri.query = std::string(rest.substr(q + 1));
    rest = rest.substr(0, q);
    if (!parse_query(uri.query, uri)) return std::nullopt;
  }
  if (rest.starts_with("//")) {
    uri.has_authority = true;
    rest.remove_prefix(2);
    const std::string_view authority = rest.substr(0, rest.find('/'));
    if (!parse_authority(authority, uri)) return std::nullopt;
    rest.remove_prefix(authority.size());
  }
  auto path = percent_decode(rest);
  if (!path) return std::nullopt;
  uri.path = std::move(*path);
  return uri;
}

std::optional<std::string> Uri::param(std::string_view name) const {
  for (const auto& [key, value] : params)
    if (key == name) return value;
  return std::nullopt;
}

std::optional<std::string> Uri::unknown_param(std::initializer_list<std::string_view> known) const {
  for (std::size_t i = 0; i < params.size(); ++i) {
    const std::string& name = params[i].first;
    if (std::find(known.begin(), known.end(), name) == known.end()) return name;
    for (std::size_t j = 0; j < i; ++j)
      if (params[j].first == name) return name;
  }
  return std::nullopt;
}

std::optional<Uri::Credentials> Uri::credentials(Userinfo style) const {
  Credentials c;
  if (!userinfo) return c;
  const std::string& info = *userinfo;
  if (style == Userinfo::libiscsi) {
    const auto sep = info.find_first_of("%:");
    c.user = info.substr(0, sep);
    if (sep != std::string::npos) c.password = info.substr(sep + 1);
    return c;
  }
  const auto sep = info.find(':');
  auto user = percent_decode(std::string_view(info).substr(0, sep));
  if (!user) return std::nullopt;
  c.user = std::move(*user);
  if (sep != std::string::npos) {
    auto password = percent_decode(std::string_view(info).substr(sep + 1));
    if (!password) return std::nullopt;
    c.password = std::move(*password);
  }
  return c;
}

}  // namespace netblk::spec
