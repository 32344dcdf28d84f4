// The rbd driver against a Ceph cluster on 127.0.0.1 (one monitor, one memstore OSD:
// tests/servers/ceph.*), started once for the binary without authentication and once with
// cephx; the fault tests start a third of their own and stop its daemons.
// Names and options (no cluster); every name form; create, write, read, zeroes, discard
// (space freed, as `rbd du` says), resize; block status from the object map (map, sparse
// copies); a snapshot read; one connection per configuration; cephx by keyring and by
// key-secret, a wrong key and a missing image (one line, under a second); the monitor
// stopped (one line within the timeout) and the OSD stopped in a copy (one line in bounded
// time); a local qcow2 overlay backed by an RBD image exported by serve with
// copy-on-read; a qcow2 image inside an RBD image (qemu-img check passes).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "ceph.hpp"
#include "drive_checks.hpp"
#include "netblk/buffer.hpp"
#include "netblk/open.hpp"
#include "netblk_serve.hpp"
#include "protocols/rbd/ceph_api.hpp"
#include "protocols/rbd/rbd_config.hpp"
#include "servers.hpp"

using namespace netblk;
using namespace netblk::test;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kMiB = 1u << 20;

// netblk loads librbd on first use (protocols/rbd/ceph_api.hpp). Loaded before the first
// shared cluster starts, its static destructors run after the clusters are stopped at exit,
// as when it was linked; loaded later, they ran first, and stopping a cluster then woke
// librados's threads on freed configuration.
struct LoadCephFirst : ::testing::Environment {
  void SetUp() override { netblk::rbd::ceph(); }
};
[[maybe_unused]] ::testing::Environment* const kLoadCephFirst = ::testing::AddGlobalTestEnvironment(new LoadCephFirst);
constexpr std::uint64_t kDiskSize = (6u << 20) + 4096;

// A cluster and the image "disk" on it, a copy of a local file.
template <CephCluster::Auth A>
struct Cluster {
  CephCluster ceph{A};
  TempDir dir;
  Cluster() {
    write_pattern_file(dir / "disk.img", kDiskSize, 23);
    ceph.tool({"rbd", "import", dir / "disk.img", "rbd/disk"});
  }
  std::string disk() const { return dir / "disk.img"; }
  // rbd:rbd/IMAGE:conf=CONF
  std::string name(const std::string& image) const { return "rbd:rbd/" + image + ":conf=" + ceph.conf(); }
  // The same as a json: name of the protocol node alone (no format probed over it).
  std::string node(const std::string& image, const std::string& extra = {}) const {
    json j{{"driver", "rbd"}, {"pool", "rbd"}, {"image", image}, {"conf", ceph.conf()}};
    if (!extra.empty()) j["=keyvalue-pairs"] = json::array({extra, "true"}).dump();
    return "json:" + j.dump();
  }
};
using Plain = Cluster<CephCluster::Auth::none>;
using Secure = Cluster<CephCluster::Auth::cephx>;

std::string error_of(const Json& options) {
  spec::Options o(options, spec::Options::Kind::protocol, "rbd");
  try {
    rbd::config_from_options(o);
  } catch (const Error& e) {
    return e.what();
  }
  return "(accepted)";
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// `rbd du`'s USED of an image, in bytes.
std::uint64_t used(CephCluster& ceph, const std::string& image) {
  const json du = json::parse(ceph.tool({"rbd", "du", "--format", "json", "rbd/" + image}));
  for (const auto& i : du["images"])
    if (i["name"] == image && !i.contains("snapshot")) return i["used_size"].get<std::uint64_t>();
  return ~0ull;
}

std::uint64_t rbd_size(CephCluster& ceph, const std::string& image) {
  return json::parse(ceph.tool({"rbd", "info", "--format", "json", "rbd/" + image}))["size"].get<std::uint64_t>();
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Names and options (no cluster)

TEST(RbdNames, Filenames) {
  using rbd::options_from_filename;
  const Json plain = options_from_filename("rbd:pool/image");
  EXPECT_EQ(plain, (Json{{"pool", "pool"}, {"namespace", ""}, {"image", "image"}}));
  const Json all = options_from_filename(
      "rbd:p/ns/img@snap:conf=/etc/c.conf:id=admin:mon_host=127.0.0.1\\:6789:key=AQ\\=\\=:rados_osd_op_timeout=5");
  EXPECT_EQ(all["pool"], "p");
  EXPECT_EQ(all["namespace"], "ns");
  EXPECT_EQ(all["image"], "img");
  EXPECT_EQ(all["snapshot"], "snap");
  EXPECT_EQ(all["conf"], "/etc/c.conf");
  EXPECT_EQ(all["user"], "admin");
  EXPECT_EQ(Json::parse(all["=keyvalue-pairs"].get<std::string>()),
            (Json{"mon_host", "127.0.0.1:6789", "key", "AQ==", "rados_osd_op_timeout", "5"}));
  // Backslash escapes in every part.
  const Json esc = options_from_filename("rbd:p\\/q/i\\:m\\@g@s\\:1:conf=/a\\:b");
  EXPECT_EQ(esc["pool"], "p/q");
  EXPECT_EQ(esc["image"], "i:m@g");
  EXPECT_EQ(esc["snapshot"], "s:1");
  EXPECT_EQ(esc["conf"], "/a:b");
  for (const auto& [bad, why] : std::vector<std::pair<std::string, std::string>>{
           {"rbd:image", "Pool name is required"},
           {"rbd:p/i:conf", "conf option conf has no value"},
           {"rbd:p/i:conf=/x:bogus", "conf option bogus has no value"}}) {
    try {
      options_from_filename(bad);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()), why) << bad;
    }
  }
}

TEST(RbdNames, OptionErrors) {
  EXPECT_EQ(error_of({{"image", "i"}}), "Parameter 'pool' is missing");
  EXPECT_EQ(error_of({{"pool", "p"}}), "Parameter 'image' is missing");
  EXPECT_EQ(error_of({{"filename", "rbd:p/"}}), "rbd:p/: image name must be provided");
  EXPECT_EQ(error_of({{"pool", "p"}, {"image", "i"}, {"bogus", 1}}),
            "Block protocol 'rbd' doesn't support the option 'bogus'");
  EXPECT_EQ(error_of({{"filename", "rbd:p/i"}, {"image", "j"}}), "Option 'image' cannot be used with a file name");
  EXPECT_EQ(error_of({{"pool", "p"}, {"image", "i"}, {"server", Json::array({{{"port", "6789"}}})}}),
            "Parameter 'server.0.host' is missing");
  EXPECT_EQ(error_of({{"pool", "p"}, {"image", "i"}, {"server", Json::array({{{"host", "h"}, {"x", 1}}})}}),
            "Block protocol 'rbd' doesn't support the option 'server.0.x'");
  EXPECT_NE(error_of({{"pool", "p"}, {"image", "i"}, {"auth-client-required", Json::array({"kerberos"})}})
                .find("auth-client-required"),
            std::string::npos);
  EXPECT_EQ(error_of({{"pool", "p"}, {"image", "i"}, {"encrypt", {{"format", "luks"}}}}),
            "rbd:p/i: encryption (encrypt.*) is not supported by this build");
  EXPECT_EQ(error_of({{"pool", "p"}, {"image", "i"}, {"key-secret", "nosuch"}}), "No secret with id 'nosuch'");
  EXPECT_EQ(error_of({{"pool", "p"}, {"image", "i"}, {"timeout", "0"}}), "Parameter 'timeout' must be at least 1");
}

TEST(RbdNames, CanonicalNamesNeverHoldTheKey) {
  spec::Options o(Json{{"filename", "rbd:p/n/i@s:id=u:mon_host=10.0.0.1:key=SECRETKEY:rbd_cache=false"}},
                  spec::Options::Kind::protocol, "rbd");
  const auto c = rbd::config_from_options(o);
  EXPECT_EQ(c.user, "u");
  ASSERT_EQ(c.keyvalues.size(), 3u);
  const Json canon = rbd::canonical_options(c);
  EXPECT_EQ(canon.dump().find("SECRETKEY"), std::string::npos) << canon.dump();
  EXPECT_EQ(canon["namespace"], "n");
  EXPECT_EQ(canon["snapshot"], "s");
  EXPECT_EQ(Json::parse(canon["=keyvalue-pairs"].get<std::string>()),
            (Json{"mon_host", "10.0.0.1", "rbd_cache", "false"}));
  EXPECT_EQ(rbd::plain_filename(c), "");  // it would need the key
  EXPECT_EQ(rbd::display_name(c), "rbd:p/n/i@s");

  spec::Options m(Json{{"pool", "p:x"},
                       {"image", "i"},
                       {"user", "admin"},
                       {"server", Json::array({{{"host", "::1"}, {"port", "3300"}}, {{"host", "h2"}}})},
                       {"auth-client-required", Json::array({"cephx", "none"})},
                       {"timeout", 7}},
                  spec::Options::Kind::protocol, "rbd");
  const auto cm = rbd::config_from_options(m);
  EXPECT_EQ(rbd::mon_host(cm), "[::1]:3300;h2");
  EXPECT_EQ(cm.timeout, 7s);
  EXPECT_EQ(rbd::canonical_options(cm)["server"][1], (Json{{"host", "h2"}}));
  EXPECT_EQ(rbd::canonical_options(cm)["timeout"], 7);
  EXPECT_EQ(rbd::display_name(cm), "rbd:p\\:x/i");

  spec::Options f(Json{{"filename", "rbd:p/i\\@x:conf=/c:id=u:rbd_cache=false"}}, spec::Options::Kind::protocol, "rbd");
  EXPECT_EQ(rbd::plain_filename(rbd::config_from_options(f)), "rbd:p/i\\@x:conf=/c:id=u:rbd_cache=false");
}

// ---------------------------------------------------------------------------------------
// Without authentication

TEST(Rbd, EveryNameForm) {
  auto& s = shared<Plain>();
  const std::string conf = s.ceph.conf();
  const std::string mon = "127.0.0.1:" + std::to_string(s.ceph.mon_port());
  const json server = json::array({{{"host", "127.0.0.1"}, {"port", std::to_string(s.ceph.mon_port())}}});
  const std::vector<std::vector<std::string>> forms{
      {s.name("disk")},
      {"rbd:rbd/disk:mon_host=127.0.0.1\\:" + std::to_string(s.ceph.mon_port())},
      {"-f", "raw", "rbd:rbd/disk:conf=" + conf + ":id=admin:rbd_cache=false"},
      {json_name({{"driver", "rbd"}, {"pool", "rbd"}, {"image", "disk"}, {"conf", conf}})},
      {json_name({{"driver", "rbd"}, {"pool", "rbd"}, {"image", "disk"}, {"server", server}, {"auth-client-required", json::array({"none"})}})},
      {json_name({{"driver", "raw"}, {"file", {{"driver", "rbd"}, {"filename", s.name("disk")}, {"timeout", 9}}}})},
      {json_name({{"driver", "raw"}, {"file.driver", "rbd"}, {"file.pool", "rbd"}, {"file.image", "disk"},
                  {"file.server.0.host", "127.0.0.1"}, {"file.server.0.port", std::to_string(s.ceph.mon_port())}})},
      {"--image-opts", "driver=rbd,pool=rbd,namespace=,image=disk,conf=" + conf + ",user=admin,timeout=5"},
  };
  for (const auto& f : forms) {
    SCOPED_TRACE(f.back());
    expect_same_bytes(f, s.disk());
  }
  // A namespace, in the file name and as an option.
  s.ceph.tool({"rbd", "namespace", "create", "rbd/ns1"});
  s.ceph.tool({"rbd", "import", "--no-progress", s.disk(), "rbd/ns1/inns"});
  expect_same_bytes({"rbd:rbd/ns1/inns:conf=" + conf}, s.disk());
  expect_same_bytes({json_name({{"driver", "rbd"}, {"pool", "rbd"}, {"namespace", "ns1"}, {"image", "inns"}, {"conf", conf}})},
                    s.disk());
  expect_failure_with(run_netblk({"info", "rbd:rbd/inns:conf=" + conf}, 30s), "not in the default namespace",
                      {"error opening image inns"});
  auto info = run_netblk({"info", "--output=json", json_name({{"driver", "rbd"}, {"pool", "rbd"}, {"image", "disk"}, {"conf", conf}})});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(json::parse(info.out)["filename"], s.name("disk"));
  auto quiet = run_netblk({"info", s.name("disk")}, 30s);
  EXPECT_EQ(quiet.err, "");
  // QEMU reads the same bytes by the same name.
  TempDir t;
  auto q = run({"qemu-img", "convert", "-f", "raw", "-O", "raw", s.name("disk"), t / "q.raw"}, 60s);
  ASSERT_EQ(q.exit_code, 0) << q.err;
  EXPECT_EQ(file_hash(t / "q.raw"), file_hash(s.disk()));
}

NETBLK_DRIVE_CHECKS(Rbd, DriveCheckParam{"none", [] {
                      auto& s = shared<Plain>();
                      return DriveCase{.name = s.name("disk"),
                                       .source = s.disk(),
                                       .writable = false,
                                       .bad_names = {s.name("missing"), "rbd:nopool/disk:conf=" + s.ceph.conf(),
                                                     json_name({{"driver", "rbd"}, {"pool", "rbd"}, {"image", "disk"},
                                                                {"server", json::array({{{"host", "127.0.0.1"}, {"port", "1"}}})},
                                                                {"timeout", 2}}),
                                                     "rbd:rbd"},
                                       .qemu_reads_it = true,
                                       .bad_name_limit = 10s};
                    }});

TEST(Rbd, CreateWriteReadResize) {
  auto& s = shared<Plain>();
  TempDir t;
  write_pattern_file(t / "src.img", 9 * kMiB + 512, 7);
  expect_ok(run_netblk({"create", "-f", "raw", s.name("made"), "3M"}, 30s), "create raw");
  EXPECT_EQ(rbd_size(s.ceph, "made"), 3 * kMiB);
  expect_ok(run_netblk({"convert", "-O", "raw", t / "src.img", s.name("made")}, 60s), "convert to rbd");
  EXPECT_EQ(rbd_size(s.ceph, "made"), 9 * kMiB + 512);
  s.ceph.tool({"rbd", "export", "rbd/made", t / "exported.raw"});
  EXPECT_EQ(file_hash(t / "exported.raw"), file_hash(t / "src.img"));
  expect_same_bytes({s.name("made")}, t / "src.img");
  // create on an existing image resizes it (emptied, as a file's truncation).
  expect_ok(run_netblk({"create", "-f", "raw", s.name("made"), "20M"}, 30s), "resize");
  EXPECT_EQ(rbd_size(s.ceph, "made"), 20 * kMiB);
  EXPECT_EQ(used(s.ceph, "made"), 0u);
  // netblk resize keeps the bytes: grown, then shrunk back to the source's size (--shrink).
  expect_ok(run_netblk({"convert", "-n", "-O", "raw", t / "src.img", s.name("made")}, 60s), "convert into it");
  expect_ok(run_netblk({"resize", "-f", "raw", s.name("made"), "24M"}, 30s), "resize to 24M");
  EXPECT_EQ(rbd_size(s.ceph, "made"), 24 * kMiB);
  const std::string back = std::to_string(9 * kMiB + 512);
  EXPECT_NE(run_netblk({"resize", "-f", "raw", s.name("made"), back}, 30s).exit_code, 0) << "a shrink without --shrink";
  expect_ok(run_netblk({"resize", "--shrink", "-f", "raw", s.name("made"), back}, 30s), "resize --shrink");
  EXPECT_EQ(rbd_size(s.ceph, "made"), 9 * kMiB + 512);
  expect_same_bytes({s.name("made")}, t / "src.img");
  // A snapshot name cannot be created.
  expect_failure_with(run_netblk({"create", "-f", "raw", "rbd:rbd/made@s:conf=" + s.ceph.conf(), "1M"}, 30s),
                      "create a snapshot", {"Can't use snapshot name for image creation"});
}

TEST(Rbd, ZeroesDiscardAndBlockStatus) {
  auto& s = shared<Plain>();
  expect_ok(run_netblk({"create", "-f", "raw", s.name("ops"), "32M"}, 30s), "create");
  std::string want(32 * kMiB, '\0');
  run_sync<void>([&]() -> Task<void> {
    auto node = co_await open_drive(named(s.node("ops"), false));
    EXPECT_EQ(node->driver(), "rbd");
    EXPECT_TRUE(node->caps().has_block_status);
    BlockStatus st = co_await node->block_status(0, node->size());
    EXPECT_EQ(st.length, 32 * kMiB);
    EXPECT_EQ(st.flags & (kStatusZero | kStatusData), kStatusZero);
    // 16 MiB of data at 8 MiB: objects 2-5 (4 MiB objects).
    Buffer data(16 * kMiB);
    for (std::size_t i = 0; i < data.size(); ++i) data.data()[i] = static_cast<std::byte>(i * 7 + 1);
    co_await node->write(8 * kMiB, data.span());
    std::memcpy(want.data() + 8 * kMiB, data.data(), data.size());
    co_await node->flush();
    st = co_await node->block_status(0, node->size());
    EXPECT_EQ(st.length, 8 * kMiB);
    EXPECT_TRUE(st.flags & kStatusZero);
    st = co_await node->block_status(8 * kMiB, node->size() - 8 * kMiB);
    EXPECT_EQ(st.length, 16 * kMiB);
    EXPECT_TRUE(st.flags & kStatusData);
    co_await node->write_zeroes(8 * kMiB, kMiB);
    std::memset(want.data() + 8 * kMiB, 0, kMiB);
    int fast = 0;
    try {
      co_await node->write_zeroes(0, kMiB, kZeroFast);
    } catch (const Error& e) {
      fast = e.code();
    }
    EXPECT_EQ(fast, ENOTSUP);
    Buffer back(32 * kMiB);
    co_await node->read(0, back.span());
    EXPECT_TRUE(std::memcmp(back.data(), want.data(), want.size()) == 0);
    co_await node->close();
  });
  EXPECT_EQ(used(s.ceph, "ops"), 16 * kMiB);
  run_sync<void>([&]() -> Task<void> {
    auto node = co_await open_drive(named(s.node("ops"), false));
    // Two whole objects discarded: their space is freed and they read as holes.
    co_await node->discard(12 * kMiB, 8 * kMiB);
    std::memset(want.data() + 12 * kMiB, 0, 8 * kMiB);
    co_await node->flush();
    const BlockStatus st = co_await node->block_status(12 * kMiB, 8 * kMiB);
    EXPECT_EQ(st.flags & (kStatusZero | kStatusData), kStatusZero) << st.flags;
    EXPECT_EQ(st.length, 8 * kMiB);
    co_await node->close();
  });
  EXPECT_EQ(used(s.ceph, "ops"), 8 * kMiB);
  TempDir t;
  write_file(t / "want.raw", want);
  expect_same_bytes({s.name("ops")}, t / "want.raw");
  // map shows the holes; a sparse copy leaves them unallocated.
  auto map = run_netblk({"map", "--output=json", s.name("ops")}, 30s);
  ASSERT_EQ(map.exit_code, 0) << map.err;
  std::uint64_t data_bytes = 0;
  for (const auto& e : json::parse(map.out))
    if (e["data"].get<bool>()) data_bytes += e["length"].get<std::uint64_t>();
  EXPECT_EQ(data_bytes, 8 * kMiB) << map.out;
  expect_ok(run_netblk({"convert", "-O", "raw", s.name("ops"), t / "sparse.raw"}, 30s), "sparse copy");
  struct stat st {};
  ASSERT_EQ(::stat((t / "sparse.raw").c_str(), &st), 0);
  EXPECT_EQ(static_cast<std::uint64_t>(st.st_size), 32 * kMiB);
  EXPECT_LE(static_cast<std::uint64_t>(st.st_blocks) * 512, 8 * kMiB + 64 * 1024);
}

TEST(Rbd, ManyRequestsInFlight) {
  auto& s = shared<Plain>();
  expect_ok(run_netblk({"create", "-f", "raw", s.name("many"), "16M"}, 30s), "create");
  run_sync<void>([&]() -> Task<void> {
    auto node = co_await open_drive(named(s.node("many"), false));
    constexpr std::uint64_t kChunk = 64 * 1024;
    std::uint64_t next = 0;
    auto writer = [&]() -> Task<void> {
      while (next < 16 * kMiB / kChunk) {
        const std::uint64_t i = next++;
        Buffer b(kChunk);
        std::memset(b.data(), static_cast<int>(i & 0xff), kChunk);
        co_await node->write(i * kChunk, b.span());
      }
    };
    co_await run_concurrently(32, writer, [] {});
    next = 0;
    int wrong = 0;
    auto reader = [&]() -> Task<void> {
      while (next < 16 * kMiB / kChunk) {
        const std::uint64_t i = next++;
        Buffer b(kChunk);
        co_await node->read(i * kChunk, b.span());
        for (std::size_t k = 0; k < kChunk; ++k)
          if (b.data()[k] != static_cast<std::byte>(i & 0xff)) {
            ++wrong;
            break;
          }
      }
    };
    co_await run_concurrently(32, reader, [] {});
    EXPECT_EQ(wrong, 0);
    co_await node->close();
  });
}

TEST(Rbd, SnapshotReadsOnly) {
  auto& s = shared<Plain>();
  TempDir t;
  write_pattern_file(t / "v1.img", 4 * kMiB, 1);
  write_pattern_file(t / "v2.img", 4 * kMiB, 2);
  expect_ok(run_netblk({"convert", "-O", "raw", t / "v1.img", s.name("snapped")}, 30s), "v1");
  s.ceph.tool({"rbd", "snap", "create", "rbd/snapped@one"});
  expect_ok(run_netblk({"convert", "-n", "-O", "raw", t / "v2.img", s.name("snapped")}, 30s), "v2");
  expect_same_bytes({"rbd:rbd/snapped@one:conf=" + s.ceph.conf()}, t / "v1.img");
  expect_same_bytes({json_name({{"driver", "rbd"}, {"pool", "rbd"}, {"image", "snapped"}, {"snapshot", "one"}, {"conf", s.ceph.conf()}})},
                    t / "v1.img");
  expect_same_bytes({s.name("snapped")}, t / "v2.img");
  // Written through: refused.
  auto w = run_netblk({"convert", "-n", "-O", "raw", t / "v2.img", "rbd:rbd/snapped@one:conf=" + s.ceph.conf()}, 30s);
  EXPECT_NE(w.exit_code, 0);
  expect_failure_with(run_netblk({"info", "rbd:rbd/snapped@two:conf=" + s.ceph.conf()}, 30s), "missing snapshot",
                      {"rbd:rbd/snapped@two", "snapshot two", "No such file or directory"});
}

TEST(Rbd, OneConnectionPerConfiguration) {
  auto& s = shared<Plain>();
  // librados's threads: one "ms_dispatch" per cluster connection.
  const auto connections = [] {
    std::size_t n = 0;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/task"))
      n += read_file(e.path().string() + "/comm") == "ms_dispatch\n" ? 1 : 0;
    return n;
  };
  run_sync<void>([&]() -> Task<void> {
    const std::size_t before = connections();
    auto first = co_await open_drive(named(s.node("disk", "rbd_cache")));
    const std::size_t with_one = connections();
    EXPECT_GT(with_one, before);
    auto second = co_await open_drive(named(s.node("disk", "rbd_cache")));
    EXPECT_EQ(connections(), with_one) << "a second node of the same configuration connected again";
    co_await first->close();
    co_await second->close();
    auto other = co_await open_drive(named(s.node("disk", "rbd_cache_writethrough_until_flush")));
    EXPECT_GT(connections(), with_one) << "another configuration shared the connection";
    co_await other->close();
  });
}

// ---------------------------------------------------------------------------------------
// cephx

TEST(RbdCephx, KeyringAndKeySecret) {
  auto& s = shared<Secure>();
  const std::string port = std::to_string(s.ceph.mon_port());
  const json server = json::array({{{"host", "127.0.0.1"}, {"port", port}}});
  // conf= alone (its [client] section names the keyring); keyring= and mon_host= without a
  // configuration file; key-secret (base64, as QEMU needs it) without either.
  expect_same_bytes({s.name("disk")}, s.disk());
  expect_same_bytes({"rbd:rbd/disk:id=admin:keyring=" + s.ceph.admin_keyring() + ":mon_host=127.0.0.1\\:" + port},
                    s.disk());
  const std::string secret = "secret,id=k0,data=" + s.ceph.admin_key() + ",format=base64";
  const json with_secret{{"driver", "rbd"},         {"pool", "rbd"},      {"image", "disk"},
                         {"user", "admin"},         {"server", server},   {"key-secret", "k0"},
                         {"auth-client-required", json::array({"cephx"})}};
  expect_same_bytes({"--object", secret, json_name(with_secret)}, s.disk());
  // The key is in no output, message or name.
  auto info = run_netblk({"info", "--output=json", "--object", secret, json_name(with_secret)}, 30s);
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(info.out.find(s.ceph.admin_key()), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("key-secret"), std::string::npos) << info.out;
  const std::string in_name = "rbd:rbd/disk:mon_host=127.0.0.1\\:" + port + ":key=" + s.ceph.admin_key();
  auto named_key = run_netblk({"info", "--output=json", in_name}, 30s);
  ASSERT_EQ(named_key.exit_code, 0) << named_key.err;
  EXPECT_EQ(named_key.out.find(s.ceph.admin_key()), std::string::npos) << named_key.out;
  auto missing = run_netblk({"info", in_name.substr(0, in_name.find(":mon_host")) + "x" + in_name.substr(in_name.find(":mon_host"))}, 30s);
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_EQ(missing.err.find(s.ceph.admin_key()), std::string::npos) << missing.err;
  // qemu-img reads it with the same secret.
  TempDir t;
  auto q = run({"qemu-img", "convert", "--object", secret, "--image-opts", "-O", "raw",
                "driver=raw,file.driver=rbd,file.pool=rbd,file.image=disk,file.user=admin,file.key-secret=k0,"
                "file.server.0.host=127.0.0.1,file.server.0.port=" + port,
                t / "q.raw"},
               60s);
  ASSERT_EQ(q.exit_code, 0) << q.err;
  EXPECT_EQ(file_hash(t / "q.raw"), file_hash(s.disk()));
}

TEST(RbdCephx, WrongKeyAndMissingImage) {
  auto& s = shared<Secure>();
  const std::string port = std::to_string(s.ceph.mon_port());
  const json server = json::array({{{"host", "127.0.0.1"}, {"port", port}}});
  auto other = run({"ceph-authtool", "--gen-print-key"});
  ASSERT_EQ(other.exit_code, 0);
  const std::string wrong_key = other.out.substr(0, other.out.find('\n'));
  struct Case {
    std::vector<std::string> args;
    std::vector<std::string> words;
    double limit;
  };
  // A refused key fails at once: the monitor's address is given to librados with its
  // messenger type, which netblk reads from the monitor's banner (untyped, librados keeps
  // hunting until client_mount_timeout). A monitor port where nothing listens fails at once.
  const json opts{{"driver", "rbd"}, {"pool", "rbd"}, {"image", "disk"}, {"user", "admin"}, {"server", server}, {"key-secret", "k"}};
  json v2 = opts;
  v2["server"][0]["port"] = std::to_string(s.ceph.mon_port_v2());
  const std::uint16_t dead = free_port();
  json nobody = opts;
  nobody["server"] = json::array({{{"host", "127.0.0.1"}, {"port", std::to_string(dead)}}});
  const std::string wrong = "secret,id=k,data=" + wrong_key + ",format=base64";
  const std::vector<Case> cases{
      {{"--object", wrong, json_name(opts)}, {"rbd:rbd/disk", "error connecting", "authentication failed"}, 1.0},
      {{"--object", wrong, json_name(v2)}, {"rbd:rbd/disk", "error connecting", "authentication failed"}, 1.0},
      {{"--object", wrong, json_name(nobody)},
       {"rbd:rbd/disk", "no monitor answers", "server.0 (127.0.0.1:" + std::to_string(dead) + "): Connection refused"},
       1.0},
      {{s.name("missing")}, {"rbd:rbd/missing", "error opening image missing", "No such file or directory"}, 1.0},
      {{"rbd:nopool/disk:conf=" + s.ceph.conf()}, {"rbd:nopool/disk", "error opening pool nopool"}, 1.0},
  };
  for (const auto& c : cases) {
    std::vector<std::string> argv{"info"};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    const auto start = std::chrono::steady_clock::now();
    auto r = run_netblk(argv, 30s);
    const double took = seconds_since(start);
    expect_failure_with(r, c.args.back(), c.words);
    EXPECT_EQ(r.err.find(wrong_key), std::string::npos);
    EXPECT_LT(took, c.limit) << c.args.back();
    std::cout << "[ rbd      ] " << c.args.back() << ": failed in " << took << " s\n";
  }
}

// ---------------------------------------------------------------------------------------
// Faults, on a cluster of their own

TEST(RbdFaults, OsdStoppedInACopyThenMonitorStopped) {
  CephCluster ceph(CephCluster::Auth::none);
  TempDir t;
  write_pattern_file(t / "src.img", 16 * kMiB, 4);
  ceph.tool({"rbd", "import", t / "src.img", "rbd/disk"});
  const std::string name = "rbd:rbd/disk:conf=" + ceph.conf();
  const json with_timeout{{"driver", "rbd"}, {"filename", name}, {"timeout", 3}};
  // The image open in serve, read once; then the OSD is stopped and the next copy fails.
  NetblkServe server({.args = {"-t", json_name({{"driver", "raw"}, {"file", with_timeout}})}});
  expect_ok(run_netblk({"convert", "-f", "raw", "-O", "raw", server.url(), t / "first.raw"}, 60s), "first copy");
  EXPECT_EQ(file_hash(t / "first.raw"), file_hash(t / "src.img"));
  ::kill(ceph.osd().pid(), SIGSTOP);  // hung, not gone: no connection refused to notice
  auto start = std::chrono::steady_clock::now();
  auto copy = run_netblk({"convert", "-f", "raw", "-O", "raw", server.url(), t / "second.raw"}, 60s);
  double took = seconds_since(start);
  expect_one_line_failure(copy, "copy with the OSD stopped");
  EXPECT_LT(took, 15.0);
  std::cout << "[ rbd      ] copy with the OSD stopped: failed in " << took << " s\n";
  // A direct copy too.
  start = std::chrono::steady_clock::now();
  copy = run_netblk({"convert", "-O", "raw", json_name(with_timeout), t / "third.raw"}, 60s);
  took = seconds_since(start);
  expect_one_line_failure(copy, "direct copy with the OSD stopped");
  EXPECT_LT(took, 15.0);
  std::cout << "[ rbd      ] direct copy with the OSD stopped: failed in " << took << " s\n";
  server.stop(SIGKILL);
  ::kill(ceph.osd().pid(), SIGKILL);
  ceph.osd().stop();

  ceph.mon().stop();
  start = std::chrono::steady_clock::now();
  auto info = run_netblk({"info", json_name(with_timeout)}, 60s);
  took = seconds_since(start);
  expect_failure_with(info, "monitor stopped", {"rbd:rbd/disk", "error connecting"});
  EXPECT_LT(took, 3.0 + 5.0 + 1.0);
  std::cout << "[ rbd      ] info with the monitor stopped (timeout=3): failed in " << took << " s\n";
}

// ---------------------------------------------------------------------------------------
// Formats over RBD

// A qcow2 overlay on local disk backed by an RBD image, exported by serve with
// copy-on-read: the bytes are the image's, everything read lands in the overlay, and a
// write through the export stays there.
TEST(Rbd, LocalOverlayWithCopyOnReadThroughServe) {
  auto& s = shared<Plain>();
  TempDir d;
  const std::string overlay = d / "overlay.qcow2";
  expect_ok(run_netblk({"create", "-f", "qcow2", "-b", s.name("disk"), "-F", "raw", overlay}, 30s), "create overlay");
  auto info = run_netblk({"info", "--output=json", overlay}, 30s);
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(json::parse(info.out).value("backing-filename", ""), s.name("disk"));
  {
    NetblkServe server({.args = {"-t", "--drive", "file=" + overlay + ",format=qcow2,copy-on-read=on"}});
    expect_ok(run_netblk({"compare", "-f", "raw", "-F", "raw", server.url(), s.disk()}, 60s), "compare via serve");
    write_pattern_file(d / "patch.img", kMiB, 99);
    expect_ok(run_netblk({"convert", "-n", "-f", "raw", "-O", "raw", d / "patch.img", server.url()}, 60s),
              "write via serve");
  }
  // Every byte of the disk is in the overlay now (qemu-img's map: depth 0 only).
  auto map = run({"qemu-img", "map", "--output=json", overlay}, 60s);
  ASSERT_EQ(map.exit_code, 0) << map.err;
  std::uint64_t top = 0;
  for (const auto& e : json::parse(map.out))
    if (e["depth"] == 0 && e["data"].get<bool>()) top += e["length"].get<std::uint64_t>();
  EXPECT_EQ(top, kDiskSize) << map.out;
  // The RBD image is unchanged.
  s.ceph.tool({"rbd", "export", "rbd/disk", d / "exported.raw"});
  EXPECT_EQ(file_hash(d / "exported.raw"), file_hash(s.disk()));
}

// A qcow2 image inside an RBD image: written by convert (the image grows as qcow2 does),
// read back, and qemu-img check passes.
TEST(Rbd, Qcow2InsideAnRbdImage) {
  auto& s = shared<Plain>();
  TempDir t;
  write_pattern_file(t / "src.img", 40 * kMiB + 4096, 8);
  expect_ok(run_netblk({"convert", "-O", "qcow2", t / "src.img", s.name("q2")}, 60s), "convert to qcow2 on rbd");
  auto info = run_netblk({"info", "--output=json", s.name("q2")}, 30s);
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(json::parse(info.out)["format"], "qcow2");
  EXPECT_EQ(json::parse(info.out)["virtual-size"], 40 * kMiB + 4096);
  expect_ok(run_netblk({"convert", "-O", "raw", s.name("q2"), t / "back.raw"}, 60s), "read qcow2");
  EXPECT_EQ(file_hash(t / "back.raw"), file_hash(t / "src.img"));
  expect_ok(run_netblk({"check", s.name("q2")}, 30s), "netblk check");
  auto q = run({"qemu-img", "check", s.name("q2")}, 60s);
  EXPECT_EQ(q.exit_code, 0) << q.out << q.err;
  EXPECT_NE(q.out.find("No errors were found on the image."), std::string::npos) << q.out;
  // And an empty one made by create.
  expect_ok(run_netblk({"create", "-f", "qcow2", s.name("q2empty"), "1G"}, 30s), "create qcow2 on rbd");
  auto q2 = run({"qemu-img", "check", s.name("q2empty")}, 60s);
  EXPECT_EQ(q2.exit_code, 0) << q2.out << q2.err;
}
