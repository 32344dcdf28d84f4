// The URIs drivers take as file names (nbd+unix:///e?socket=/s, gluster+tcp://h/vol/img,
// iscsi://user%pass@h:3260/iqn/0, ...): one parser for all of them, an RFC 3986 subset.
//
//   scheme[+transport]:[//[userinfo@]host[:port]]path[?query][#fragment]
//
// It is lenient where QEMU's drivers are (characters RFC 3986 would want escaped are
// taken as they are) and strict where a mistake changes what is named: a bad percent
// escape, a port that is not a number up to 65535, an unclosed IPv6 bracket, a scheme
// that is not ALPHA *(ALPHA / DIGIT / "+" / "-" / "."). Drivers turn a failed parse into
// their own QEMU message ("No valid URL specified").
#pragma once
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace netblk::spec {

struct Uri {
  std::string scheme;     // as written, lower or upper case kept: "nbds+unix"
  std::string base;       // the scheme before the first '+': "nbds"
  std::string transport;  // after it ("unix", "tcp"), or ""
  bool has_authority = false;  // "//" followed the scheme
  // userinfo as written (not decoded: drivers split it their own way), if an '@' came
  // before the host.
  std::optional<std::string> userinfo;
  std::string host;  // decoded; an IPv6 address without its brackets
  bool host_bracketed = false;
  std::optional<unsigned> port;  // absent when not given or empty ("h:")
  std::string path;              // decoded, with its leading '/'
  bool has_query = false;        // a '?' was present
  std::string query;             // as written
  // Query parameters in order: "a=1&b&&c=%20" -> (a,1) (b,"") (c," "); empty items dropped.
  std::vector<std::pair<std::string, std::string>> params;
  std::optional<std::string> fragment;  // as written

  // nullopt when `text` is not a URI of the form above.
  static std::optional<Uri> parse(std::string_view text);

  // The value of query parameter `name` (its first occurrence), or nullopt.
  std::optional<std::string> param(std::string_view name) const;
  // QEMU's rule for drivers' URLs: a parameter the driver does not know, or one given
  // twice, makes the whole URL invalid. The name of the first such parameter, or nullopt.
  std::optional<std::string> unknown_param(std::initializer_list<std::string_view> known) const;

  // User and password from the userinfo. Rfc: "user:password", both percent-decoded.
  // Libiscsi: "user%password" (or "user:password"), split at the first '%' or ':' and not
  // decoded, as libiscsi reads its URLs. {"", nullopt} without userinfo; nullopt when a
  // decoded part has a bad escape.
  enum class Userinfo { rfc, libiscsi };
  struct Credentials {
    std::string user;
    std::optional<std::string> password;
  };
  std::optional<Credentials> credentials(Userinfo style = Userinfo::rfc) const;
};

// Percent-decoding (RFC 3986); nullopt on a '%' not followed by two hex digits.
std::optional<std::string> percent_decode(std::string_view s);
// Percent-encoding of everything but unreserved characters and `keep` (for paths and
// names put into URLs: "/" and the sub-delimiters that need no escape there).
std::string percent_encode(std::string_view s, std::string_view keep = "/:@!$'()*,;");
// A drive name as it may be shown (a qcow2 image's stored backing name, a message): the
// password of a URL's userinfo is cut out ("http://u@h/x" from "http://u:pw@h/x";
// "iscsi://u@h/..." from libiscsi's "iscsi://u%pw@h/..."), also in every string of a json:
// name, and json: keys named "password" are left out. Anything else is kept as written.
std::string redact_password(std::string_view name);
// A host for a URL or a "host:port" message: IPv6 addresses in brackets.
std::string bracket_host(const std::string& host);

}  // namespace netblk::spec
