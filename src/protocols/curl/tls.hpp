// The TLS cipher order of our HTTPS and FTPS transfers.
#pragma once
#include <curl/curl.h>

#include <string>
#include <vector>

namespace netblk::curlproto {

// `names` (OpenSSL cipher names, in preference order) with each AES-128-GCM suite moved
// just before the AES-256-GCM suite of the same key exchange, when both are there
// ("ECDHE-RSA-AES128-GCM-SHA256" before "ECDHE-RSA-AES256-GCM-SHA384",
// "TLS_AES_128_GCM_SHA256" before "TLS_AES_256_GCM_SHA384"). Nothing is added or removed,
// and no suite moves ahead of one with a preferred key exchange.
std::vector<std::string> aes128_gcm_first(std::vector<std::string> names);

// Makes `easy` offer AES-128-GCM before AES-256-GCM, as browsers do, among the suites the
// system's TLS configuration allows (when libcurl uses OpenSSL; otherwise it changes
// nothing). Both are strong; AES-128 takes 10 rounds to AES-256's 14, which on a local
// network is a few percent of a bulk copy's CPU time on each side. Servers that impose
// their own order keep it.
void prefer_aes128_gcm(CURL* easy);

}  // namespace netblk::curlproto
