// spec::SocketAddress: QEMU's SocketAddress options, inet_parse and the legacy keys.
#include <gtest/gtest.h>

#include "error_of.hpp"
#include "spec/socket_address.hpp"
#include "spec/tree.hpp"

namespace netblk::spec {
namespace {

using Type = SocketAddress::Type;
const SocketAddress::Accept kAll{.inet = true, .unix_socket = true, .fd = true};

using test::error_of;

TEST(SocketAddress, Inet) {
  auto a = SocketAddress::from_tree(Json{{"type", "inet"}, {"host", "::1"}, {"port", 22}}, kAll, "SSH server");
  EXPECT_EQ(a.type, Type::inet);
  EXPECT_EQ(a.host, "::1");
  EXPECT_EQ(a.port, "22");
  EXPECT_EQ(a.describe(), "[::1]:22");
  EXPECT_EQ(a.to_options().dump(), R"({"type":"inet","host":"::1","port":"22"})");
  auto v4 = SocketAddress::from_tree(parse_keyval("type=inet,host=h,port=1,ipv4=on,numeric=on,keep-alive=off"), kAll, "x");
  EXPECT_TRUE(v4.ipv4_only);
  EXPECT_FALSE(v4.ipv6_only);
  EXPECT_EQ(v4.to_options().dump(), R"({"type":"inet","host":"h","port":"1","ipv4":true})");
  auto both = SocketAddress::from_tree(parse_keyval("type=inet,host=h,port=1,ipv4=on,ipv6=on"), kAll, "x");
  EXPECT_FALSE(both.ipv4_only || both.ipv6_only);
}

TEST(SocketAddress, UnixAndFd) {
  auto u = SocketAddress::from_tree(parse_keyval("type=unix,path=/run/s"), kAll, "x");
  EXPECT_EQ(u.type, Type::unix_socket);
  EXPECT_EQ(u.path, "/run/s");
  EXPECT_EQ(u.describe(), "/run/s");
  auto abs = SocketAddress::from_tree(parse_keyval("type=unix,path=name,abstract=on"), kAll, "x");
  EXPECT_EQ(abs.path, std::string("\0name", 5));
  EXPECT_EQ(abs.to_options().dump(), R"({"type":"unix","path":"name","abstract":true})");
  auto fd = SocketAddress::from_tree(parse_keyval("type=fd,str=7"), kAll, "x");
  EXPECT_EQ(fd.type, Type::fd);
  EXPECT_EQ(fd.fd, "7");
  EXPECT_EQ(fd.to_options().dump(), R"({"type":"fd","str":"7"})");
  // The tree printed back parses to the same address.
  auto again = SocketAddress::from_tree(abs.to_options(), kAll, "x");
  EXPECT_EQ(again.path, abs.path);
}

TEST(SocketAddress, Errors) {
  const SocketAddress::Accept inet_only{.inet = true, .unix_socket = false, .fd = false};
  EXPECT_EQ(error_of([] { SocketAddress::from_tree(parse_keyval("host=h"), kAll, "x"); }),
            "Parameter 'type' is missing");
  EXPECT_EQ(error_of([] { SocketAddress::from_tree(parse_keyval("type=tcp"), kAll, "x"); }),
            "Parameter 'type' does not accept value 'tcp'");
  EXPECT_EQ(error_of([&] { SocketAddress::from_tree(parse_keyval("type=unix,path=/s"), inet_only, "SSH server"); }),
            "SSH server address type 'unix' is not supported");
  EXPECT_EQ(error_of([] { SocketAddress::from_tree(parse_keyval("type=vsock,cid=3,port=1"), kAll, "NBD server"); }),
            "NBD server address type 'vsock' is not supported");
  EXPECT_EQ(error_of([] { SocketAddress::from_tree(parse_keyval("type=fd"), kAll, "x"); }),
            "Parameter 'str' is missing");
  EXPECT_EQ(error_of([] { SocketAddress::from_tree(parse_keyval("type=inet,host=h,port=1,path=/p"), kAll, "x"); }),
            "Parameter 'path' is unexpected");
  EXPECT_EQ(error_of([] { SocketAddress::from_tree(parse_keyval("type=inet,host=h,port=1,ipv4=maybe"), kAll, "x"); })
                .find("Parameter 'ipv4'"),
            0u);
}

TEST(SocketAddress, GroupOfADriver) {
  // SSH: server.host/server.port inside the driver's options; the rest is the driver's.
  Options o(parse_keyval("server.type=inet,server.host=h,server.port=22,path=/img"), Options::Kind::protocol, "ssh");
  Options server = o.group("server");
  auto a = SocketAddress::from_options(server, kAll, "SSH server");
  server.finish();
  EXPECT_EQ(a.describe(), "h:22");
  EXPECT_EQ(o.str("path"), "/img");
  o.finish();
  Options missing(parse_keyval("server.type=inet,server.host=h"), Options::Kind::protocol, "ssh");
  Options group = missing.group("server");
  EXPECT_EQ(error_of([&] { SocketAddress::from_options(group, kAll, "x"); }), "Parameter 'server.port' is missing");
}

TEST(SocketAddress, List) {
  // GlusterFS: server.N.*
  Options o(parse_keyval("server.0.type=inet,server.0.host=a,server.0.port=24007,"
                         "server.1.type=unix,server.1.path=/run/g.sock,volume=v"),
            Options::Kind::protocol, "gluster");
  auto list = SocketAddress::list_from_options(o, "server", kAll, "GlusterFS server");
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].host, "a");
  EXPECT_EQ(list[1].path, "/run/g.sock");
  EXPECT_EQ(o.str("volume"), "v");
  o.finish();
  Options bad(parse_keyval("server.0.type=inet,server.0.host=a"), Options::Kind::protocol, "gluster");
  EXPECT_EQ(error_of([&] { SocketAddress::list_from_options(bad, "server", kAll, "x"); }),
            "Parameter 'server.0.port' is missing");
  Options extra(parse_keyval("server.0.type=unix,server.0.path=/s,server.0.foo=1"), Options::Kind::protocol, "gluster");
  EXPECT_EQ(error_of([&] { SocketAddress::list_from_options(extra, "server", kAll, "x"); }),
            "Parameter 'server.0.foo' is unexpected");
  Options none(Json::object(), Options::Kind::protocol, "gluster");
  EXPECT_TRUE(SocketAddress::list_from_options(none, "server", kAll, "x").empty());
}

TEST(SocketAddress, InetParse) {
  auto a = SocketAddress::parse_inet("h:10809");
  EXPECT_EQ(a.host, "h");
  EXPECT_EQ(a.port, "10809");
  auto v6 = SocketAddress::parse_inet("[::1]:5,ipv6");
  EXPECT_EQ(v6.host, "::1");
  EXPECT_EQ(v6.port, "5");
  EXPECT_TRUE(v6.ipv6_only);
  EXPECT_EQ(SocketAddress::parse_inet(":7").host, "");
  EXPECT_EQ(error_of([] { SocketAddress::parse_inet("h"); }), "error parsing address 'h'");
  EXPECT_EQ(error_of([] { SocketAddress::parse_inet("h:,ipv4"); }), "error parsing address 'h:,ipv4'");
  EXPECT_EQ(error_of([] { SocketAddress::parse_inet("[::1]"); }), "error parsing IPv6 address '[::1]'");
}

TEST(SocketAddress, LegacyKeys) {
  auto fold = [](const std::string& keyval) {
    Options o(parse_keyval(keyval), Options::Kind::protocol, "nbd");
    Json server = Json::object();
    if (auto s = o.take("server")) server = *s;
    fold_legacy_socket_keys(o, server, "10809");
    return server;
  };
  EXPECT_EQ(fold("host=h").dump(), R"({"type":"inet","host":"h","port":"10809"})");
  EXPECT_EQ(fold("host=h,port=1").dump(), R"({"type":"inet","host":"h","port":"1"})");
  EXPECT_EQ(fold("path=/s").dump(), R"({"type":"unix","path":"/s"})");
  EXPECT_EQ(fold("export=x").dump(), "{}");
  EXPECT_EQ(fold("port=1").dump(), "{}");  // a port alone names nothing
  EXPECT_EQ(error_of([&] { fold("host=h,server.type=inet"); }),
            "Cannot use 'server' and path/host/port at the same time");
  EXPECT_EQ(error_of([&] { fold("host=h,path=/s"); }), "path and host may not be used at the same time");
  EXPECT_EQ(error_of([&] { fold("path=/s,port=1"); }), "port may not be used without host");
}

}  // namespace
}  // namespace netblk::spec
