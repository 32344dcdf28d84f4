// spec::Uri: the one URI parser of drivers' file names.
#include <gtest/gtest.h>

#include "spec/uri.hpp"

namespace netblk::spec {
namespace {

TEST(Uri, SchemeTransportAuthorityPath) {
  auto u = Uri::parse("nbds+unix://user@host:10999/a%20b/c?socket=/s#frag");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->scheme, "nbds+unix");
  EXPECT_EQ(u->base, "nbds");
  EXPECT_EQ(u->transport, "unix");
  EXPECT_TRUE(u->has_authority);
  EXPECT_EQ(u->userinfo, "user");
  EXPECT_EQ(u->host, "host");
  EXPECT_EQ(u->port, 10999u);
  EXPECT_EQ(u->path, "/a b/c");
  EXPECT_TRUE(u->has_query);
  EXPECT_EQ(u->query, "socket=/s");
  EXPECT_EQ(u->fragment, "frag");
  EXPECT_EQ(u->param("socket"), "/s");
  EXPECT_EQ(u->param("other"), std::nullopt);
}

TEST(Uri, NoTransportNoPortNoPath) {
  auto u = Uri::parse("gluster://h");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->base, "gluster");
  EXPECT_EQ(u->transport, "");
  EXPECT_EQ(u->host, "h");
  EXPECT_FALSE(u->port);
  EXPECT_EQ(u->path, "");
  EXPECT_FALSE(u->has_query);
  EXPECT_FALSE(u->userinfo);
  // An empty port is no port (RFC 3986 6.2.3).
  auto e = Uri::parse("nbd://h:/x");
  ASSERT_TRUE(e);
  EXPECT_FALSE(e->port);
  EXPECT_EQ(Uri::parse("nbd://h:0/x")->port, 0u);
}

TEST(Uri, Ipv6Brackets) {
  auto u = Uri::parse("iscsi://[fe80::1%25eth0]:3260/iqn.x/0");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->host, "fe80::1%25eth0");  // brackets hold the address as written
  EXPECT_TRUE(u->host_bracketed);
  EXPECT_EQ(u->port, 3260u);
  EXPECT_EQ(u->path, "/iqn.x/0");
  auto v = Uri::parse("nbd://[::1]/x");
  ASSERT_TRUE(v);
  EXPECT_EQ(v->host, "::1");
  EXPECT_FALSE(v->port);
  EXPECT_FALSE(Uri::parse("nbd://[::1/x"));
  EXPECT_FALSE(Uri::parse("nbd://[::1]x/"));
  EXPECT_EQ(bracket_host("::1"), "[::1]");
  EXPECT_EQ(bracket_host("h"), "h");
}

TEST(Uri, Userinfo) {
  auto u = Uri::parse("ssh://us%40er:pa%3Ass@h/p");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->userinfo, "us%40er:pa%3Ass");
  auto rfc = u->credentials();
  ASSERT_TRUE(rfc);
  EXPECT_EQ(rfc->user, "us@er");
  EXPECT_EQ(rfc->password, "pa:ss");
  // libiscsi: user%password, as written.
  auto i = Uri::parse("iscsi://admin%secret@h/iqn/1");
  ASSERT_TRUE(i);
  auto iscsi = i->credentials(Uri::Userinfo::libiscsi);
  ASSERT_TRUE(iscsi);
  EXPECT_EQ(iscsi->user, "admin");
  EXPECT_EQ(iscsi->password, "secret");
  EXPECT_EQ(Uri::parse("iscsi://admin:secret@h/iqn/1")->credentials(Uri::Userinfo::libiscsi)->password, "secret");
  auto none = Uri::parse("iscsi://h/iqn/1")->credentials();
  ASSERT_TRUE(none);
  EXPECT_EQ(none->user, "");
  EXPECT_FALSE(none->password);
  // The last '@' ends the userinfo.
  EXPECT_EQ(Uri::parse("nbd://a@b@h/x")->host, "h");
  EXPECT_FALSE(Uri::parse("ssh://u%zz@h/p")->credentials());
}

TEST(Uri, QueryParametersInOrder) {
  auto u = Uri::parse("x://h/p?b=2&a&&c=%20&a=3");
  ASSERT_TRUE(u);
  ASSERT_EQ(u->params.size(), 4u);
  EXPECT_EQ(u->params[0], (std::pair<std::string, std::string>{"b", "2"}));
  EXPECT_EQ(u->params[1], (std::pair<std::string, std::string>{"a", ""}));
  EXPECT_EQ(u->params[2], (std::pair<std::string, std::string>{"c", " "}));
  EXPECT_EQ(u->param("a"), "");
  EXPECT_EQ(u->unknown_param({"a", "b", "c"}), "a");  // given twice
  EXPECT_EQ(u->unknown_param({"a", "b"}), "c");
  EXPECT_EQ(Uri::parse("x://h/p?socket=/s")->unknown_param({"socket"}), std::nullopt);
  EXPECT_TRUE(Uri::parse("x://h/p?")->params.empty());
  EXPECT_TRUE(Uri::parse("x://h/p?")->has_query);
  EXPECT_FALSE(Uri::parse("x://h/p?a=%2"));
}

TEST(Uri, PercentCoding) {
  EXPECT_EQ(percent_decode("a%2Fb%2fc"), "a/b/c");
  EXPECT_FALSE(percent_decode("%"));
  EXPECT_FALSE(percent_decode("%4"));
  EXPECT_FALSE(percent_decode("%g0"));
  EXPECT_EQ(percent_encode("a b/c?d#e%"), "a%20b/c%3Fd%23e%25");
  EXPECT_EQ(percent_encode("a/b", ""), "a%2Fb");
  EXPECT_EQ(percent_decode(percent_encode("\x01\xff x")), "\x01\xff x");
}

TEST(Uri, NotUris) {
  for (const char* text : {"", "nbd", "://h", "1nbd://h", "n bd://h", "nbd://h:99999/x", "nbd://h:1a/x",
                           "nbd://h%zz/x", "nbd://h/%zz"})
    EXPECT_FALSE(Uri::parse(text)) << text;
  // Without "//" there is no authority; the rest is the path.
  auto u = Uri::parse("file:/a%20b");
  ASSERT_TRUE(u);
  EXPECT_FALSE(u->has_authority);
  EXPECT_EQ(u->path, "/a b");
}

}  // namespace
}  // namespace netblk::spec

TEST(RedactPassword, CutsThePasswordOutOfEveryNameForm) {
  using netblk::spec::redact_password;
  EXPECT_EQ(redact_password("http://alice:s3cret@127.0.0.1:8080/disk.img?x=1"), "http://alice@127.0.0.1:8080/disk.img?x=1");
  EXPECT_EQ(redact_password("iscsi://alice%s3cret@[::1]:3260/iqn.2001-04.com.example:t/1"),
            "iscsi://alice@[::1]:3260/iqn.2001-04.com.example:t/1");
  EXPECT_EQ(redact_password("ssh://bob@h/x"), "ssh://bob@h/x");
  EXPECT_EQ(redact_password("http://h/a:b@c"), "http://h/a:b@c");
  EXPECT_EQ(redact_password("/images/a:b@c.qcow2"), "/images/a:b@c.qcow2");
  const std::string j = redact_password(
      R"(json:{"driver":"raw","file":{"driver":"iscsi","password":"s3cret","url":"https://u:s3cret@h/x"}})");
  EXPECT_EQ(j.find("s3cret"), std::string::npos) << j;
  EXPECT_NE(j.find("https://u@h/x"), std::string::npos) << j;
  EXPECT_EQ(redact_password("json:{\"file.password\":\"s3cret\"}").find("s3cret"), std::string::npos);
  EXPECT_EQ(redact_password("json:{broken s3cret"), "json:(unreadable)");
  // Nothing to cut: the name as written, dotted keys and all.
  const std::string plain = R"(json:{"file.driver":"http", "file.url":"http://h/x"})";
  EXPECT_EQ(redact_password(plain), plain);
}
