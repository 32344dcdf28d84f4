// URL helpers built on libcurl's URL parser (curl_url), so that the driver names a drive
// exactly as libcurl will read it.
#pragma once
#include <string>

namespace netblk::curlproto {

// The URL without the password of its userinfo ("http://user@h/x" from
// "http://user:pw@h/x"); the user name is kept. A URL libcurl cannot parse is returned
// with everything between "//" and "@" removed, so no secret survives either way.
std::string redact_password(const std::string& url);
// The scheme in lower case ("https"), or "" when there is none.
std::string url_scheme(const std::string& url);
// True when both URLs have the same scheme, host and port (credentials may follow).
bool same_origin(const std::string& a, const std::string& b);

}  // namespace netblk::curlproto
