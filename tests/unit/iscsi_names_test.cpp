// Every QEMU spelling of an iSCSI drive, its canonical name without secrets, QEMU's -iscsi
// groups and -readconfig sections, without a network.
#include <gtest/gtest.h>
#include <stdlib.h>

#include "core/secrets.hpp"
#include "error_of.hpp"
#include "protocols/iscsi/iscsi_config.hpp"
#include "spec/config_groups.hpp"
#include "spec/tree.hpp"

namespace netblk::iscsi {
namespace {

using test::error_of;

IscsiConfig from_tree(const Json& tree) {
  spec::Options o(tree, spec::Options::Kind::protocol, "iscsi");
  IscsiConfig c = config_from_options(o);
  o.finish();
  return c;
}

IscsiConfig from_name(const std::string& filename) {
  Json tree = Json::object();
  parse_filename(filename, tree);
  return from_tree(tree);
}

struct CleanGroups {
  CleanGroups() {
    spec::clear_config_groups();
    unsetenv("LIBISCSI_CHAP_USERNAME");
    unsetenv("LIBISCSI_CHAP_PASSWORD");
  }
  ~CleanGroups() { spec::clear_config_groups(); }
};

TEST(IscsiNames, Urls) {
  CleanGroups clean;
  auto c = from_name("iscsi://10.0.0.1/iqn.2001-04.com.example:disk/3");
  EXPECT_EQ(c.transport, "tcp");
  EXPECT_EQ(c.portal.host, "10.0.0.1");
  EXPECT_EQ(c.portal.port, "3260");
  EXPECT_EQ(c.target, "iqn.2001-04.com.example:disk");
  EXPECT_EQ(c.lun, 3u);
  EXPECT_EQ(c.initiator_name, "iqn.2008-11.org.linux-kvm");
  EXPECT_EQ(plain_filename(c), "iscsi://10.0.0.1:3260/iqn.2001-04.com.example:disk/3");

  auto v6 = from_name("iscsi://[fe80::1]:3261/iqn.x%3Ay/0");
  EXPECT_EQ(v6.portal.host, "fe80::1");
  EXPECT_EQ(v6.portal.port, "3261");
  EXPECT_EQ(v6.target, "iqn.x:y");
  EXPECT_EQ(display_name(v6), "iscsi://[fe80::1]:3261/iqn.x:y/0");

  auto chap = from_name("iscsi://me%pw@h/iqn/1");
  EXPECT_EQ(chap.user, "me");
  EXPECT_EQ(chap.password, "pw");
  EXPECT_EQ(plain_filename(chap), "");
  EXPECT_EQ(canonical_options(chap).dump().find("pw"), std::string::npos);

  for (const char* bad : {"iscsi://h/iqn", "iscsi://h/iqn/x", "iscsi:///iqn/1", "iscsi://h/1", "iscsi://h/iqn/1?a=b",
                          "iscsi+tcp://h/iqn/1", "http://h/iqn/1"})
    EXPECT_EQ(error_of([&] { from_name(bad); }).rfind("Failed to parse URL", 0), 0u) << bad;
  EXPECT_EQ(from_name("iser://h/iqn/1").transport, "iser");
}

TEST(IscsiNames, Options) {
  CleanGroups clean;
  secrets::define(spec::parse_keyval("qom-type=secret,id=isec,data=topsecret"));
  Json t = {{"transport", "tcp"}, {"portal", "h:3300"},       {"target", "iqn"},
            {"lun", "2"},         {"user", "u"},              {"password-secret", "isec"},
            {"timeout", 7},       {"header-digest", "CRC32C"}, {"initiator-name", "iqn.me"}};
  auto c = from_tree(t);
  EXPECT_EQ(c.portal.port, "3300");
  EXPECT_EQ(c.lun, 2u);
  EXPECT_EQ(c.password, "topsecret");
  EXPECT_EQ(c.timeout.count(), 7);
  EXPECT_EQ(c.header_digest, "crc32c");
  Json canon = canonical_options(c);
  EXPECT_EQ(canon["password-secret"], "isec");
  EXPECT_EQ(canon.dump().find("topsecret"), std::string::npos);
  EXPECT_EQ(from_tree({{"transport", "tcp"}, {"portal", "h"}, {"target", "iqn"}}).portal.port, "3260");

  EXPECT_EQ(error_of([&] { from_tree({{"transport", "tcp"}, {"portal", "h"}}); }), "Need all of transport, portal and target options");
  EXPECT_EQ(error_of([&] {
              from_tree({{"transport", "tcp"}, {"portal", "h"}, {"target", "iqn"}, {"user", "u"}});
            }),
            "CHAP username specified but no password was given");
  EXPECT_EQ(error_of([&] {
              from_tree({{"transport", "tcp"}, {"portal", "h"}, {"target", "iqn"}, {"user", "u"}, {"password", "p"},
                         {"password-secret", "isec"}});
            }),
            "'password' and 'password-secret' properties are mutually exclusive");
  EXPECT_EQ(error_of([&] {
              from_tree({{"transport", "tcp"}, {"portal", "h"}, {"target", "iqn"}, {"header-digest", "md5"}});
            }),
            "Invalid header-digest setting : md5");
  EXPECT_EQ(error_of([&] { from_tree({{"transport", "tcp"}, {"portal", "h"}, {"target", "iqn"}, {"x", "1"}}); }),
            "Block protocol 'iscsi' doesn't support the option 'x'");
  Json mixed = {{"filename", "iscsi://h/iqn/1"}, {"lun", 2}};
  EXPECT_EQ(error_of([&] { from_tree(mixed); }), "Option 'lun' cannot be used with a file name");
}

TEST(IscsiNames, GroupsAndEnvironment) {
  CleanGroups clean;
  spec::add_config_group("iscsi", spec::parse_keyval("initiator-name=iqn.all"));
  spec::read_config_text("# comment\n[iscsi \"iqn.t\"]\n  initiator-name = \"iqn.t-only\"\n  user = \"gu\"\n"
                         "  password = \"gp\"\n",
                         "test.conf");
  auto t = from_name("iscsi://h/iqn.t/1");
  EXPECT_EQ(t.initiator_name, "iqn.t-only");
  EXPECT_EQ(t.user, "gu");
  EXPECT_EQ(t.password, "gp");
  auto other = from_name("iscsi://h/iqn.other/1");
  EXPECT_EQ(other.initiator_name, "iqn.all");
  EXPECT_EQ(other.user, "");
  // The drive's own options win over a group's.
  auto own = from_tree({{"filename", "iscsi://h/iqn.t/1"}, {"initiator-name", "iqn.mine"}});
  EXPECT_EQ(own.initiator_name, "iqn.mine");

  EXPECT_EQ(error_of([] { spec::add_config_group("iscsi", spec::parse_keyval("bogus=1")); }),
            "Invalid parameter 'bogus'");
  EXPECT_EQ(error_of([] { spec::add_config_group("nosuch", spec::parse_keyval("a=1")); }),
            "There is no option group 'nosuch'");
  EXPECT_EQ(error_of([] { spec::read_config_text("[iscsi]\nuser = unquoted\n", "x.conf"); }), "x.conf:2: parse error");

  spec::clear_config_groups();
  setenv("LIBISCSI_CHAP_USERNAME", "eu", 1);
  setenv("LIBISCSI_CHAP_PASSWORD", "ep", 1);
  auto env = from_name("iscsi://h/iqn/1");
  EXPECT_EQ(env.user, "eu");
  EXPECT_EQ(env.password, "ep");
  EXPECT_EQ(from_name("iscsi://me%mine@h/iqn/1").password, "mine");  // the URL's own first
  unsetenv("LIBISCSI_CHAP_USERNAME");
  unsetenv("LIBISCSI_CHAP_PASSWORD");
}

}  // namespace
}  // namespace netblk::iscsi
