#include "protocols/iscsi/iscsi_config.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include "core/secrets.hpp"
#include "spec/config_groups.hpp"
#include "spec/tree.hpp"
#include "spec/uri.hpp"

namespace netblk::iscsi {
namespace {

[[noreturn]] void bad_url() {
  throw Error(EINVAL,
              "Failed to parse URL : iSCSI URL must be of the form: "
              "iscsi://[<username>[%<password>]@]<host>[:<port>]/<target-iqn>/<lun>");
}

// The keys of QEMU's -iscsi group (qemu_iscsi_opts), which --iscsi and [iscsi] sections take.
[[maybe_unused]] const bool kGroupRegistered = [] {
  spec::register_config_group(
      "iscsi", {"user", "password", "password-secret", "header-digest", "initiator-name", "timeout"});
  return true;
}();

// portal=HOST[:PORT]: libiscsi's default port when none is given; IPv6 in brackets.
spec::SocketAddress parse_portal(const std::string& text) {
  const bool bare = text.find(':') == std::string::npos || (!text.empty() && text.back() == ']');
  return spec::SocketAddress::parse_inet(bare ? text + ":" + std::to_string(kDefaultPort) : text);
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string checked_digest(const std::string& value) {
  std::string v = lower(value);
  if (v != "crc32c" && v != "none" && v != "crc32c-none" && v != "none-crc32c")
    throw Error(EINVAL, "Invalid header-digest setting : " + value);
  return v;
}

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

// One place credentials may come from: its user, and its password or secret.
struct Chap {
  std::optional<std::string> user;
  std::optional<std::string> password;
  std::optional<std::string> secret_id;
};

// A group's (or the options') password and password-secret, checked as QEMU's apply_chap.
void resolve_password(const Chap& from, IscsiConfig& c) {
  if (from.password && from.secret_id)
    throw Error(EINVAL, "'password' and 'password-secret' properties are mutually exclusive");
  if (from.secret_id) {
    c.password = secrets::lookup(*from.secret_id);
    c.password_secret = *from.secret_id;
  } else if (from.password) {
    c.password = *from.password;
  }
}

std::optional<std::string> group_value(const Json* group, const char* key) {
  if (!group) return std::nullopt;
  auto it = group->find(key);
  if (it == group->end()) return std::nullopt;
  return spec::scalar_text(*it);
}

}  // namespace

void parse_filename(const std::string& filename, Json& options) { options["filename"] = filename; }

UrlParts parse_url(const std::string& url) {
  const auto uri = spec::Uri::parse(url);
  if (!uri || !uri->has_authority || !uri->transport.empty() || uri->host.empty() || uri->has_query ||
      uri->fragment)
    bad_url();
  const std::string scheme = lower(uri->base);
  if (scheme != "iscsi" && scheme != "iser") bad_url();
  // /TARGET/LUN: the LUN after the last '/', the target (percent-decoded) before it.
  std::string_view path = uri->path;
  if (path.empty() || path.front() != '/') bad_url();
  path.remove_prefix(1);
  const auto slash = path.rfind('/');
  if (slash == std::string_view::npos || slash == 0) bad_url();
  const std::string target(path.substr(0, slash));
  const std::string_view lun = path.substr(slash + 1);
  if (lun.empty() || lun.size() > 5 || lun.find_first_not_of("0123456789") != std::string_view::npos) bad_url();
  const unsigned lun_number = static_cast<unsigned>(std::stoul(std::string(lun)));
  if (lun_number > 0xffff) bad_url();

  UrlParts out;
  out.options = Json::object();
  out.options["transport"] = scheme == "iser" ? "iser" : "tcp";
  out.options["portal"] = spec::bracket_host(uri->host) + ":" + std::to_string(uri->port.value_or(kDefaultPort));
  out.options["target"] = target;
  out.options["lun"] = lun_number;
  auto creds = uri->credentials(spec::Uri::Userinfo::libiscsi);
  if (!creds) bad_url();
  out.user = creds->user;
  out.password = creds->password;
  return out;
}

IscsiConfig config_from_options(spec::Options& o) {
  Json tree = o.tree();
  for (auto it = tree.begin(); it != tree.end(); ++it) o.ignore(it.key());
  Chap from_url;
  if (auto f = tree.find("filename"); f != tree.end()) {
    const std::string filename = spec::scalar_text(*f);
    tree.erase("filename");
    spec::refuse_with_filename(tree, {"transport", "portal", "target", "lun"});
    UrlParts parts = parse_url(filename);
    spec::merge(tree, parts.options);
    if (!parts.user.empty()) {
      from_url.user = parts.user;
      from_url.password = parts.password;
    }
  }

  spec::Options e(tree, spec::Options::Kind::protocol, "iscsi");
  IscsiConfig c;
  auto transport = e.str("transport");
  auto portal = e.str("portal");
  auto target = e.str("target");
  if (!transport || !portal || !target || target->empty())
    throw Error(EINVAL, "Need all of transport, portal and target options");
  c.transport = *transport;
  if (c.transport != "tcp" && c.transport != "iser") throw Error(EINVAL, "Unknown transport: " + c.transport);
  c.portal = parse_portal(*portal);
  c.target = *target;
  c.lun = static_cast<unsigned>(e.uint("lun", 0, 0xffff));
  Chap from_options;
  from_options.user = e.str("user");
  from_options.password = e.str("password");
  from_options.secret_id = e.str("password-secret");
  auto initiator = e.str("initiator-name");
  auto digest = e.str("header-digest");
  auto timeout = e.seconds("timeout");
  e.finish();

  // Then the --iscsi group for this target (or the one without an id), as QEMU's -iscsi.
  const Json* group = spec::find_config_group("iscsi", c.target);
  if (!initiator) initiator = group_value(group, "initiator-name");
  if (!digest) digest = group_value(group, "header-digest");
  if (!timeout) {
    if (auto t = group_value(group, "timeout")) {
      spec::Options g(Json{{"timeout", *t}}, spec::Options::Kind::object, "iscsi");
      timeout = g.seconds("timeout");
    }
  }
  Chap from_group{group_value(group, "user"), group_value(group, "password"), group_value(group, "password-secret")};
  Chap from_env;
  if (const char* u = env("LIBISCSI_CHAP_USERNAME")) from_env.user = u;
  if (const char* p = env("LIBISCSI_CHAP_PASSWORD")) from_env.password = p;

  // The user comes from the first place that names one; its password from the first that
  // has one: options, the --iscsi group (which QEMU puts before the URL's), the URL, the
  // environment (which libiscsi reads for URLs without a user).
  for (const Chap* from : {&from_options, &from_group, &from_url, &from_env})
    if (from->user && !from->user->empty()) {
      c.user = *from->user;
      break;
    }
  if (!c.user.empty()) {
    for (const Chap* from : {&from_options, &from_group, &from_url, &from_env}) {
      resolve_password(*from, c);
      if (!c.password.empty() || !c.password_secret.empty()) break;
    }
    if (c.password.empty() && c.password_secret.empty())
      throw Error(EINVAL, "CHAP username specified but no password was given");
  }

  if (initiator) {
    if (initiator->empty()) throw Error(EINVAL, "Parameter 'initiator-name' must not be empty");
    c.initiator_name = *initiator;
    c.initiator_given = true;
  }
  if (digest) {
    c.header_digest = checked_digest(*digest);
    c.header_digest_given = true;
  }
  if (timeout) c.timeout = *timeout;
  return c;
}

Json canonical_options(const IscsiConfig& c) {
  Json j = Json::object();
  j["driver"] = "iscsi";
  j["transport"] = c.transport;
  j["portal"] = c.portal.describe();
  j["target"] = c.target;
  j["lun"] = c.lun;
  if (!c.user.empty()) j["user"] = c.user;
  if (!c.password_secret.empty()) j["password-secret"] = c.password_secret;
  if (c.initiator_given) j["initiator-name"] = c.initiator_name;
  if (c.header_digest_given) j["header-digest"] = c.header_digest;
  if (c.timeout.count()) j["timeout"] = c.timeout.count();
  return j;
}

std::string display_name(const IscsiConfig& c) {
  return (c.transport == "iser" ? "iser://" : "iscsi://") + c.portal.describe() + "/" +
         spec::percent_encode(c.target, ":@!$'()*,;") + "/" + std::to_string(c.lun);
}

std::string plain_filename(const IscsiConfig& c) {
  if (!c.user.empty() || c.initiator_given || c.header_digest_given || c.timeout.count()) return {};
  return display_name(c);
}

}  // namespace netblk::iscsi
