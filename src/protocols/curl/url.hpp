// URL helpers built on libcurl's URL parser (curl_url), so that the driver names a drive
// exactly as libcurl will read it.
#pragma once
#include <string>

namespace netblk::curlproto {

// (A URL's password is cut out of names shown by spec::redact_password, spec/uri.hpp.)
// The scheme in lower case ("https"), or "" when there is none.
std::string url_scheme(const std::string& url);
// True when both URLs have the same scheme, host and port (credentials may follow).
bool same_origin(const std::string& a, const std::string& b);

}  // namespace netblk::curlproto
