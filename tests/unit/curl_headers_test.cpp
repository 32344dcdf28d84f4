// The curl driver's pure parsers: response header lines, Content-Range, and URLs named
// without their password. Plus option checks that fail before any connection.
#include <gtest/gtest.h>

#include "netblk/open.hpp"
#include "protocols/curl/headers.hpp"
#include "protocols/curl/url.hpp"
#include "spec/uri.hpp"

using namespace netblk;
using namespace netblk::curlproto;

TEST(CurlHeaders, StatusLineStartsANewResponse) {
  ResponseFacts f;
  parse_header_line("HTTP/1.1 302 Found\r\n", f);
  parse_header_line("Content-Length: 5\r\n", f);
  EXPECT_EQ(f.status, 302);
  parse_header_line("HTTP/2 206\r\n", f);
  EXPECT_EQ(f.status, 206);
  EXPECT_FALSE(f.content_length);
  parse_header_line("content-range:   bytes 0-0/123456789012  \r\n", f);
  ASSERT_TRUE(f.content_range);
  EXPECT_EQ(*f.content_range->total, 123456789012u);
  EXPECT_EQ(*f.content_range->first, 0u);
  EXPECT_EQ(*f.content_range->last, 0u);
}

TEST(CurlHeaders, NamesAreCaseInsensitiveAndValuesTrimmed) {
  ResponseFacts f;
  parse_header_line("HTTP/1.1 200 OK\r\n", f);
  parse_header_line("CONTENT-LENGTH:\t 4096 \r\n", f);
  parse_header_line("accept-ranges: Bytes\r\n", f);
  EXPECT_EQ(f.content_length, 4096u);
  EXPECT_TRUE(f.accept_ranges);
  parse_header_line("Accept-Ranges: none\r\n", f);
  EXPECT_FALSE(f.accept_ranges);
  EXPECT_TRUE(f.ranges_refused);
  parse_header_line("Accept-Ranges: foo, bytes\r\n", f);
  EXPECT_TRUE(f.accept_ranges);
}

TEST(CurlHeaders, MalformedValuesAreIgnored) {
  ResponseFacts f;
  parse_header_line("HTTP/1.1 200 OK\r\n", f);
  parse_header_line("Content-Length: -5\r\n", f);
  EXPECT_FALSE(f.content_length);
  parse_header_line("Content-Length: 99999999999999999999999\r\n", f);
  EXPECT_FALSE(f.content_length);
  parse_header_line("Content-Length: 12abc\r\n", f);
  EXPECT_FALSE(f.content_length);
  parse_header_line(": nothing\r\n", f);
  parse_header_line("no colon here\r\n", f);
  parse_header_line("\r\n", f);
  EXPECT_EQ(f.status, 200);
}

TEST(CurlHeaders, ContentRangeForms) {
  auto a = parse_content_range("bytes 100-199/1000");
  ASSERT_TRUE(a);
  EXPECT_EQ(*a->first, 100u);
  EXPECT_EQ(*a->last, 199u);
  EXPECT_EQ(*a->total, 1000u);
  auto b = parse_content_range("bytes */1000");
  ASSERT_TRUE(b);
  EXPECT_FALSE(b->first);
  EXPECT_EQ(*b->total, 1000u);
  auto c = parse_content_range("bytes 0-9/*");
  ASSERT_TRUE(c);
  EXPECT_FALSE(c->total);
  EXPECT_FALSE(parse_content_range("bytes */*"));
  EXPECT_FALSE(parse_content_range("bytes 9-0/100"));
  EXPECT_FALSE(parse_content_range("bytes 0-100/100"));
  EXPECT_FALSE(parse_content_range("items 0-1/100"));
  EXPECT_FALSE(parse_content_range("bytes0-1/100"));
  EXPECT_FALSE(parse_content_range(""));
}

TEST(CurlUrl, PasswordIsRemovedUserKept) {
  EXPECT_EQ(netblk::spec::redact_password("http://alice:s3cret@127.0.0.1:8080/disk.img?x=1"),
            "http://alice@127.0.0.1:8080/disk.img?x=1");
  EXPECT_EQ(netblk::spec::redact_password("ftp://127.0.0.1/a.img"), "ftp://127.0.0.1/a.img");
  EXPECT_EQ(netblk::spec::redact_password("https://bob@h/x"), "https://bob@h/x");
  EXPECT_EQ(netblk::spec::redact_password("tftp://u:p@h/x").find(":p@"), std::string::npos);
  // Even what libcurl cannot parse loses its userinfo.
  EXPECT_EQ(netblk::spec::redact_password("http://u:p@[bad/x").find("p@"), std::string::npos);
  // An '@' in the path is not userinfo.
  EXPECT_EQ(netblk::spec::redact_password("http://h/a@b"), "http://h/a@b");
}

TEST(CurlUrl, SchemeAndOrigin) {
  EXPECT_EQ(url_scheme("HTTPS://h/x"), "https");
  EXPECT_EQ(url_scheme("/local/path"), "");
  EXPECT_TRUE(same_origin("http://h:80/a", "http://h/b"));
  EXPECT_FALSE(same_origin("http://h/a", "http://g/a"));
  EXPECT_FALSE(same_origin("http://h/a", "https://h/a"));
}

namespace {
std::string open_error(const std::string& name) {
  try {
    run_sync<void>([&]() -> Task<void> {
      DriveSpec s;
      s.filename = name;
      s.read_only = true;
      auto n = co_await open_drive(s);
      co_await n->close();
    });
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(CurlOptions, RejectedBeforeConnecting) {
  // Port 9 on loopback: nothing is contacted, the options fail first.
  const std::string base = "json:{\"file.driver\":\"http\",\"file.url\":\"http://127.0.0.1:9/x\"";
  EXPECT_NE(open_error(base + ",\"file.readahead\":1000}").find("not a multiple of 512"), std::string::npos);
  EXPECT_NE(open_error(base + ",\"file.timeout\":10001}").find("timeout parameter is too large"), std::string::npos);
  EXPECT_NE(open_error(base + ",\"file.cookie\":\"a=b\",\"file.cookie-secret\":\"c\"}").find("cookie"),
            std::string::npos);
  EXPECT_NE(open_error(base + ",\"file.password-secret\":\"undefined-id\"}").find("undefined-id"), std::string::npos);
  EXPECT_NE(open_error(base + ",\"file.bogus\":1}").find("bogus"), std::string::npos);
  EXPECT_NE(open_error("json:{\"file.driver\":\"https\",\"file.url\":\"file:///etc/passwd\"}").find("scheme"),
            std::string::npos);
  EXPECT_NE(open_error("json:{\"file.driver\":\"tftp\"}").find("url"), std::string::npos);
}

// The HTTPS/FTPS cipher order: AES-128-GCM just before the AES-256-GCM suite of the same
// key exchange; nothing else moves, nothing is added.
#include "protocols/curl/tls.hpp"

TEST(CurlTls, Aes128GcmMovesJustBeforeItsAes256Partner) {
  using netblk::curlproto::aes128_gcm_first;
  EXPECT_EQ(aes128_gcm_first({"TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"}),
            (std::vector<std::string>{"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                      "TLS_CHACHA20_POLY1305_SHA256"}));
  EXPECT_EQ(aes128_gcm_first({"ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
                              "DHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305",
                              "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "AES256-GCM-SHA384",
                              "AES128-GCM-SHA256"}),
            (std::vector<std::string>{"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                                      "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
                                      "DHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305",
                                      "AES128-GCM-SHA256", "AES256-GCM-SHA384"}));
  // A partner that is not allowed stays out; one already ahead stays where it is.
  EXPECT_EQ(aes128_gcm_first({"ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"}),
            (std::vector<std::string>{"ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"}));
  EXPECT_EQ(aes128_gcm_first({"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"}),
            (std::vector<std::string>{"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"}));
}
