// Every QEMU spelling of an NBD drive, and the bad mixes QEMU refuses, without a network.
#include <gtest/gtest.h>

#include "error_of.hpp"
#include "protocols/nbd/nbd_config.hpp"
#include "spec/tree.hpp"

namespace netblk::nbd_client {
namespace {

using Type = NbdAddress::Type;

NbdConfig from_tree(const Json& tree) {
  spec::Options o(tree, spec::Options::Kind::protocol, "nbd");
  NbdConfig c = config_from_options(o);
  o.finish();
  return c;
}

NbdConfig from_name(const std::string& filename) {
  Json tree = Json::object();
  parse_filename(filename, tree);
  return from_tree(tree);
}

NbdConfig from_json(const std::string& text) {
  Json tree = spec::parse_json_name("json:" + text);
  tree.erase("driver");
  return from_tree(tree);
}

NbdConfig from_keyval(const std::string& text) {
  Json tree = spec::parse_keyval(text);
  tree.erase("driver");
  return from_tree(tree);
}

using netblk::test::error_of;

TEST(NbdNames, UrlWithHostPortExport) {
  NbdConfig c = from_name("nbd://127.0.0.1:10999/disk");
  EXPECT_EQ(c.address.type, Type::inet);
  EXPECT_EQ(c.address.host, "127.0.0.1");
  EXPECT_EQ(c.address.port, "10999");
  EXPECT_EQ(c.export_name, "disk");
  EXPECT_FALSE(c.tls);
  EXPECT_EQ(plain_filename(c), "nbd://127.0.0.1:10999/disk");
}

TEST(NbdNames, UrlDefaultsPortAndExport) {
  NbdConfig c = from_name("nbd://example.org");
  EXPECT_EQ(c.address.port, "10809");
  EXPECT_FALSE(c.export_name.has_value());
  EXPECT_EQ(plain_filename(c), "nbd://example.org:10809");
  EXPECT_EQ(from_name("nbd://example.org/").export_name, std::nullopt);
  EXPECT_EQ(from_name("nbd://h:/x").address.port, "10809");
  EXPECT_EQ(from_name("nbd+tcp://h:7/x").address.port, "7");
}

TEST(NbdNames, UrlExportKeepsSlashesAndDecodes) {
  EXPECT_EQ(from_name("nbd://h/a/b").export_name, "a/b");
  EXPECT_EQ(from_name("nbd://h/a%20b").export_name, "a b");
  NbdConfig c = from_name("nbd://h/we%3Fird%23name");
  EXPECT_EQ(c.export_name, "we?ird#name");
  // The URL we print reopens the same export.
  EXPECT_EQ(from_name(plain_filename(c)).export_name, "we?ird#name");
}

TEST(NbdNames, UrlIgnoresFragmentAndUser) {
  EXPECT_EQ(from_name("nbd://h:1/x#frag").export_name, "x");
  EXPECT_EQ(from_name("nbd://user@h:1/x").address.host, "h");
}

TEST(NbdNames, UrlIpv6) {
  NbdConfig c = from_name("nbd://[::1]:10999/x");
  EXPECT_EQ(c.address.host, "::1");
  EXPECT_EQ(c.address.port, "10999");
  EXPECT_EQ(plain_filename(c), "nbd://[::1]:10999/x");
  EXPECT_EQ(from_name("nbd://[fe80::1]/x").address.port, "10809");
}

TEST(NbdNames, UnixUrl) {
  NbdConfig c = from_name("nbd+unix:///disk?socket=/tmp/s.sock");
  EXPECT_EQ(c.address.type, Type::unix_socket);
  EXPECT_EQ(c.address.path, "/tmp/s.sock");
  EXPECT_EQ(c.export_name, "disk");
  EXPECT_EQ(plain_filename(c), "nbd+unix:///disk?socket=/tmp/s.sock");
  NbdConfig d = from_name("nbd+unix://?socket=/tmp/s.sock");
  EXPECT_FALSE(d.export_name.has_value());
  EXPECT_EQ(plain_filename(d), "nbd+unix://?socket=/tmp/s.sock");
  EXPECT_EQ(from_name("nbd+unix:///x?socket=/a%26b").address.path, "/a&b");
  EXPECT_EQ(plain_filename(from_name("nbd+unix:///x?socket=/a%26b")), "nbd+unix:///x?socket=/a%26b");
}

TEST(NbdNames, TlsSchemes) {
  NbdConfig c = from_name("nbds://h:1/x");
  EXPECT_TRUE(c.tls);
  EXPECT_EQ(plain_filename(c), "nbds://h:1/x");
  EXPECT_TRUE(from_name("nbds+unix:///x?socket=/s").tls);
  EXPECT_TRUE(from_name("nbds+tcp://h/x").tls);
}

TEST(NbdNames, BadUrls) {
  for (const char* name : {"nbd://", "nbd:///x", "nbd+unix:///x", "nbd+unix://h/x?socket=/s",
                           "nbd+unix://:5/x?socket=/s", "nbd://h/x?socket=/s", "nbd://h:1/x?foo=1",
                           "nbd+unix:///x?socket=/s&a=b", "nbd+unix:///x?sock=/s", "nbd://h:99999/x",
                           "nbd://h:abc/x", "nbd+ssh://h/x", "nbd://[::1/x", "nbd://h/%zz"}) {
    EXPECT_EQ(error_of([&] { from_name(name); }), "No valid URL specified") << name;
  }
}

TEST(NbdNames, LegacyTcp) {
  NbdConfig c = from_name("nbd:127.0.0.1:10999");
  EXPECT_EQ(c.address.host, "127.0.0.1");
  EXPECT_EQ(c.address.port, "10999");
  EXPECT_FALSE(c.export_name.has_value());
  NbdConfig d = from_name("nbd:localhost:1:exportname=foo:bar");
  EXPECT_EQ(d.address.host, "localhost");
  EXPECT_EQ(d.export_name, "foo:bar");
  NbdConfig v6 = from_name("nbd:[::1]:10999:exportname=x");
  EXPECT_EQ(v6.address.host, "::1");
  EXPECT_EQ(plain_filename(v6), "nbd://[::1]:10999/x");
  EXPECT_TRUE(from_name("nbd:h:1,ipv4").address.ipv4_only);
}

TEST(NbdNames, LegacyUnix) {
  NbdConfig c = from_name("nbd:unix:/tmp/s.sock:exportname=disk");
  EXPECT_EQ(c.address.type, Type::unix_socket);
  EXPECT_EQ(c.address.path, "/tmp/s.sock");
  EXPECT_EQ(c.export_name, "disk");
  EXPECT_EQ(plain_filename(c), "nbd+unix:///disk?socket=/tmp/s.sock");
}

TEST(NbdNames, LegacyErrors) {
  EXPECT_EQ(error_of([] { from_name("nbd:127.0.0.1"); }), "error parsing address '127.0.0.1'");
  EXPECT_EQ(error_of([] { from_name("nbd:h:"); }), "error parsing address 'h:'");
  EXPECT_EQ(error_of([] { from_name("nbd:[::1"); }), "error parsing IPv6 address '[::1'");
  EXPECT_EQ(error_of([] { from_name("nbd:"); }), "NBD server address missing");
  // QEMU: an empty name after exportname= leaves everything unset.
  EXPECT_EQ(error_of([] { from_name("nbd:127.0.0.1:1:exportname="); }), "NBD server address missing");
}

TEST(NbdNames, ServerOptions) {
  NbdConfig c = from_json(R"({"driver":"nbd","server":{"type":"inet","host":"127.0.0.1","port":10999},"export":"e"})");
  EXPECT_EQ(c.address.port, "10999");
  EXPECT_EQ(c.export_name, "e");
  NbdConfig u = from_keyval("driver=nbd,server.type=unix,server.path=/s,export=e");
  EXPECT_EQ(u.address.type, Type::unix_socket);
  EXPECT_EQ(u.address.path, "/s");
  NbdConfig dotted = from_json(R"({"driver":"nbd","server.type":"inet","server.host":"h","server.port":"5"})");
  EXPECT_EQ(dotted.address.host, "h");
  EXPECT_EQ(from_json(R"({"server":{"type":"unix","path":"x","abstract":true}})").address.path, std::string("\0x", 2));
}

TEST(NbdNames, LegacyKeys) {
  NbdConfig c = from_keyval("driver=nbd,host=127.0.0.1,export=e");
  EXPECT_EQ(c.address.host, "127.0.0.1");
  EXPECT_EQ(c.address.port, "10809");
  NbdConfig p = from_keyval("driver=nbd,host=h,port=7");
  EXPECT_EQ(p.address.port, "7");
  NbdConfig u = from_keyval("path=/s");
  EXPECT_EQ(u.address.type, Type::unix_socket);
  EXPECT_EQ(u.address.path, "/s");
}

TEST(NbdNames, BadOptionMixesHaveQemuWording) {
  EXPECT_EQ(error_of([] { from_keyval("host=h,server.type=inet,server.host=x"); }),
            "Cannot use 'server' and path/host/port at the same time");
  EXPECT_EQ(error_of([] { from_keyval("path=/a,host=h"); }), "path and host may not be used at the same time");
  EXPECT_EQ(error_of([] { from_keyval("path=/a,port=1"); }), "port may not be used without host");
  EXPECT_EQ(error_of([] { from_json("{}"); }), "NBD server address missing");
  EXPECT_EQ(error_of([] { from_keyval("port=1"); }), "NBD server address missing");
  EXPECT_EQ(error_of([] { from_keyval("server.type=inet,server.host=h"); }), "Parameter 'port' is missing");
  EXPECT_EQ(error_of([] { from_keyval("server.type=inet,server.port=1"); }), "Parameter 'host' is missing");
  EXPECT_EQ(error_of([] { from_keyval("server.type=unix"); }), "Parameter 'path' is missing");
  EXPECT_EQ(error_of([] { from_keyval("server.type=foo"); }), "Parameter 'type' does not accept value 'foo'");
  EXPECT_EQ(error_of([] { from_keyval("server.host=h,server.port=1"); }), "Parameter 'type' is missing");
  EXPECT_EQ(error_of([] { from_keyval("server.type=inet,server.host=h,server.port=1,server.foo=1"); }),
            "Parameter 'foo' is unexpected");
  EXPECT_EQ(error_of([] { from_keyval("server.type=unix,server.path=/s,server.host=x"); }),
            "Parameter 'host' is unexpected");
  EXPECT_EQ(error_of([] { from_keyval("host=h,queue-size=3"); }),
            "Block protocol 'nbd' doesn't support the option 'queue-size'");
  EXPECT_EQ(error_of([] { from_keyval("host=h,reconnect-delay=x"); }), "Parameter 'reconnect-delay' expects a number");
  EXPECT_EQ(error_of([] { from_keyval("host=h,open-timeout=abc"); }), "Parameter 'open-timeout' expects a number");
  EXPECT_NE(error_of([] { from_keyval("host=h,x-dirty-bitmap=b"); }).find("x-dirty-bitmap"), std::string::npos);
  EXPECT_EQ(error_of([] { from_keyval("host=h,export=" + std::string(5000, 'x')); }),
            "export name too long to send to server");
}

TEST(NbdNames, FilenameWithAddressOptionsIsRefused) {
  auto with_name = [](Json tree) {
    parse_filename("nbd://127.0.0.1:1/x", tree);
    return from_tree(tree);
  };
  EXPECT_EQ(error_of([&] { with_name(Json{{"export", "y"}}); }), "Option 'export' cannot be used with a file name");
  EXPECT_EQ(error_of([&] { with_name(Json{{"host", "h"}}); }), "Option 'host' cannot be used with a file name");
  EXPECT_EQ(error_of([&] { with_name(Json{{"server", Json{{"host", "h"}}}}); }),
            "Option 'server.host' cannot be used with a file name");
  // Connection policy options combine with a name.
  NbdConfig c = with_name(Json{{"reconnect-delay", 5}, {"open-timeout", "7"}});
  EXPECT_EQ(c.reconnect_delay, std::chrono::seconds(5));
  EXPECT_EQ(c.open_timeout, std::chrono::seconds(7));
}

TEST(NbdNames, TlsOptions) {
  NbdConfig c = from_keyval("host=h,tls-creds=tls0,tls-hostname=example.org");
  EXPECT_TRUE(c.tls);
  EXPECT_EQ(c.tls_creds, "tls0");
  EXPECT_EQ(c.tls_hostname, "example.org");
  EXPECT_EQ(plain_filename(c), "");  // only json: can carry tls-creds
  EXPECT_EQ(canonical_options(c).dump(),
            R"({"driver":"nbd","server":{"type":"inet","host":"h","port":"10809"},"tls-creds":"tls0","tls-hostname":"example.org"})");
}

TEST(NbdNames, CanonicalOptions) {
  EXPECT_EQ(canonical_options(from_name("nbd:127.0.0.1:10809:exportname=x")).dump(),
            R"({"driver":"nbd","server":{"type":"inet","host":"127.0.0.1","port":"10809"},"export":"x"})");
  EXPECT_EQ(canonical_options(from_name("nbd+unix:///x?socket=/p")).dump(),
            R"({"driver":"nbd","server":{"type":"unix","path":"/p"},"export":"x"})");
  // The canonical tree opens the same thing.
  NbdConfig c = from_name("nbd://[::1]:5/e");
  Json tree = canonical_options(c);
  tree.erase("driver");
  NbdConfig again = from_tree(tree);
  EXPECT_EQ(plain_filename(again), plain_filename(c));
  EXPECT_EQ(canonical_options(from_name("nbds://h/x")).dump(),
            R"({"driver":"nbd","server":{"type":"inet","host":"h","port":"10809"},"export":"x","x-tls":true})");
}

TEST(NbdNames, PolicyDefaults) {
  NbdConfig c = from_name("nbd://h/x");
  EXPECT_FALSE(c.reconnect_delay.has_value());
  EXPECT_EQ(c.open_timeout, std::chrono::seconds(0));
  EXPECT_EQ(c.connections, netblk::nbd_client::default_connections());
  EXPECT_GE(c.connections, 1u);
  EXPECT_LE(c.connections, 4u);
  EXPECT_EQ(from_keyval("host=h,x-connections=1").connections, 1u);
  EXPECT_EQ(from_keyval("host=h,x-connections=4").connections, 4u);
  EXPECT_EQ(from_keyval("host=h,reconnect-delay=0").reconnect_delay, std::chrono::seconds(0));
}

}  // namespace
}  // namespace netblk::nbd_client
