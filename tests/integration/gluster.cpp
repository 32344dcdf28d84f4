// The gluster driver against glusterd on 127.0.0.1 (its own state directory in a TempDir;
// tests/servers/glusterd.*), started once for the binary with two volumes: "gv" (one brick,
// distribute: its brick directory holds the files as they are) and "rv" (replica 2).
// Every name form; a server list whose first entry is dead; raw and qcow2 images created,
// written and read on the volume (qemu-img check passes on the qcow2); the replica written
// to both bricks, and one brick killed while a copy reads (identical bytes); a missing
// volume, file or server (one line, in seconds), and a server that never answers (one
// line after the 10 s deadline of glfs_init); a local qcow2 overlay over a backing file
// on the volume, exported by `netblk serve`; the drive checks. qemu-img is called once: each
// of its calls on Gluster spends ~10 s in glfs_fini.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "drive_checks.hpp"
#include "glusterd.hpp"
#include "netblk/buffer.hpp"
#include "netblk/open.hpp"
#include "netblk_serve.hpp"
#include "protocols/gluster/gluster_config.hpp"
#include "servers.hpp"

using namespace netblk;
using namespace netblk::test;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kDiskSize = (6u << 20) + 4321;
constexpr std::uint64_t kBigSize = 128u << 20;

// glusterd, its volumes and the images on them; one set per binary.
struct Served {
  TempDir dir;
  Glusterd gd{{{.name = "gv", .bricks = 1, .replica = false}, {.name = "rv", .bricks = 2, .replica = true}}};
  Served() {
    write_pattern_file(dir / "disk.img", kDiskSize, 18);
    put(dir / "disk.img", gd.url("gv", "disk.img"));
  }
  // A local file copied onto the volume by netblk.
  static void put(const std::string& file, const std::string& url) {
    auto r = run_netblk({"convert", "-O", "raw", file, url}, 120s);
    if (r.exit_code != 0) throw std::runtime_error("copying " + file + " to " + url + " failed: " + r.err);
  }
  std::string disk() const { return dir / "disk.img"; }
  std::string brick_file(const std::string& name) const { return gd.brick("gv", 0) + "/" + name; }
};

json server_tcp(int port = Glusterd::kPort) {
  return json{{"type", "inet"}, {"host", "127.0.0.1"}, {"port", std::to_string(port)}};
}

json gluster_options(const std::string& volume, const std::string& path, json servers) {
  return json{{"driver", "gluster"}, {"volume", volume}, {"path", path}, {"server", std::move(servers)}};
}

std::string error_of(const Json& options) {
  spec::Options o(options, spec::Options::Kind::protocol, "gluster");
  try {
    gluster::config_from_options(o);
  } catch (const Error& e) {
    return e.what();
  }
  return "(accepted)";
}

std::uint64_t allocated(const std::string& path) {
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<std::uint64_t>(st.st_blocks) * 512 : 0;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Names and options (no server)

TEST(GlusterNames, Urls) {
  using gluster::options_from_url;
  const Json plain = options_from_url("gluster://h/vol/dir/a.img");
  EXPECT_EQ(plain["volume"], "vol");
  EXPECT_EQ(plain["path"], "dir/a.img");
  EXPECT_EQ(plain["server"][0], (Json{{"type", "inet"}, {"host", "h"}, {"port", "24007"}}));
  EXPECT_EQ(options_from_url("gluster+tcp://[::1]:24010/v/a")["server"][0]["host"], "::1");
  EXPECT_EQ(options_from_url("gluster+tcp://[::1]:24010/v/a")["server"][0]["port"], "24010");
  EXPECT_EQ(options_from_url("gluster:///v/a")["server"][0]["host"], "localhost");
  EXPECT_EQ(options_from_url("gluster+unix:///v/a?socket=/run/g.sock")["server"][0],
            (Json{{"type", "unix"}, {"path", "/run/g.sock"}}));
  bool rdma = false;
  EXPECT_EQ(options_from_url("gluster+rdma://h/v/a", &rdma)["server"][0]["type"], "inet");
  EXPECT_TRUE(rdma);
  for (const std::string bad : {"gluster://h/vol", "gluster://h/", "gluster+unix://h/v/a?socket=/s",
                                "gluster+unix:///v/a", "gluster+unix:///v/a?sock=/s", "gluster://h/v/a?socket=/s",
                                "gluster+unix:///v/a?socket=/s&x=1", "gluster+foo://h/v/a", "gluster://h:99999/v/a"}) {
    try {
      options_from_url(bad);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind("invalid URI ", 0), 0u) << e.what();
      EXPECT_NE(std::string(e.what()).find("usage: gluster[+tcp|+unix|+rdma]://"), std::string::npos) << e.what();
    }
  }
}

TEST(GlusterNames, OptionErrorsAreQemus) {
  const Json one = Json::array({server_tcp()});
  EXPECT_EQ(error_of({{"path", "a"}, {"server", one}}), "Parameter 'volume' is missing");
  EXPECT_EQ(error_of({{"volume", "v"}, {"server", one}}), "Parameter 'path' is missing");
  EXPECT_EQ(error_of({{"volume", "v"}, {"path", "a"}}), "Parameter 'server' is missing");
  EXPECT_EQ(error_of({{"volume", "v"}, {"path", "a"}, {"server", Json::array({{{"host", "h"}}})}}),
            "Parameter 'server.0.type' is missing");
  EXPECT_EQ(error_of({{"volume", "v"}, {"path", "a"}, {"server", Json::array({{{"type", "fd"}, {"str", "3"}}})}}),
            "Parameter 'server.0.type' may be 'inet' or 'unix'");
  EXPECT_EQ(error_of({{"volume", "v"},
                      {"path", "a"},
                      {"server", Json::array({server_tcp(), {{"type", "unix"}, {"path", "/a"}, {"socket", "/b"}}})}}),
            "Conflicting parameters 'server.1.path' and 'server.1.socket'");
  EXPECT_EQ(error_of({{"volume", "v"}, {"path", "a"}, {"server", Json::array({{{"type", "tcp"}, {"host", "h"}}})}}),
            "Parameter 'server.0.port' is missing");
  EXPECT_EQ(error_of({{"volume", "v"},
                      {"path", "a"},
                      {"server", Json::array({{{"type", "inet"}, {"host", "h"}, {"port", "gluster"}}})}}),
            "'gluster' is not a valid port number");
  EXPECT_EQ(error_of({{"volume", "v"}, {"path", "a"}, {"server", one}, {"bogus", 1}}),
            "Block protocol 'gluster' doesn't support the option 'bogus'");
  EXPECT_EQ(error_of({{"filename", "gluster://h/v/a"}, {"volume", "w"}}),
            "Option 'volume' cannot be used with a file name");
}

TEST(GlusterNames, ConfigAndCanonicalNames) {
  // tcp is inet's old name, socket a unix path's; debug is clamped to 0..9, as QEMU.
  spec::Options o(Json{{"volume", "v"},
                       {"path", "d/a.img"},
                       {"debug", "12"},
                       {"server", Json::array({{{"type", "tcp"}, {"host", "::1"}, {"port", 24007}},
                                               {{"type", "unix"}, {"socket", "/run/g.sock"}}})}},
                  spec::Options::Kind::protocol, "gluster");
  const auto c = gluster::config_from_options(o);
  ASSERT_EQ(c.servers.size(), 2u);
  EXPECT_EQ(c.servers[1].path, "/run/g.sock");
  EXPECT_EQ(c.debug, 9);
  EXPECT_EQ(gluster::plain_filename(c), "");  // two servers: only json: says it
  const Json canon = gluster::canonical_options(c);
  EXPECT_EQ(canon["server"][0], (Json{{"type", "inet"}, {"host", "::1"}, {"port", "24007"}}));
  EXPECT_EQ(canon["server"][1], (Json{{"type", "unix"}, {"path", "/run/g.sock"}}));
  EXPECT_EQ(canon["debug"], 9);
  EXPECT_EQ(gluster::describe_server(c, 0), "server.0 ([::1]:24007)");

  spec::Options u(Json{{"filename", "gluster+tcp://[::1]/v/d/a.img"}, {"debug", -3}}, spec::Options::Kind::protocol,
                  "gluster");
  const auto cu = gluster::config_from_options(u);
  EXPECT_EQ(cu.debug, 0);
  EXPECT_EQ(gluster::display_name(cu), "gluster://[::1]:24007/v/d/a.img");
  spec::Options s(Json{{"filename", "gluster+unix:///v/a?socket=/s"}}, spec::Options::Kind::protocol, "gluster");
  EXPECT_EQ(gluster::plain_filename(gluster::config_from_options(s)), "gluster+unix:///v/a?socket=/s");
}

// ---------------------------------------------------------------------------------------
// Against glusterd

NETBLK_DRIVE_CHECKS(Gluster, DriveCheckParam{"tcp", [] {
                      auto& s = shared<Served>();
                      return DriveCase{.name = s.gd.url("gv", "disk.img"),
                                       .source = s.brick_file("disk.img"),
                                       .writable = true,
                                       .bad_names = {s.gd.url("gv", "missing.img"), s.gd.url("nosuch", "disk.img"),
                                                     "gluster://127.0.0.1:1/gv/disk.img", "gluster://127.0.0.1/gv"},
                                       // Each qemu-img call on Gluster costs 10-21 s (glfs_fini).
                                       .qemu_reads_it = false,
                                       .bad_name_limit = 10s};
                    }});

TEST(Gluster, EveryNameForm) {
  auto& s = shared<Served>();
  TempDir t;
  const std::string file = s.disk();
  const std::string unix_url = "gluster+unix:///gv/disk.img?socket=" + s.gd.socket();
  const std::vector<std::vector<std::string>> forms{
      {s.gd.url("gv", "disk.img")},
      {"gluster://127.0.0.1/gv/disk.img"},
      {"gluster+tcp://127.0.0.1:24007/gv//disk.img"},
      {unix_url},
      {"-f", "raw", "gluster+rdma://127.0.0.1/gv/disk.img"},
      {json_name(gluster_options("gv", "disk.img", Json::array({server_tcp()})))},
      {json_name(gluster_options("gv", "/disk.img",
                                 Json::array({{{"type", "tcp"}, {"host", "127.0.0.1"}, {"port", "24007"}},
                                              {{"type", "unix"}, {"socket", s.gd.socket()}}})))},
      {json_name({{"driver", "raw"}, {"file", {{"driver", "gluster"}, {"filename", unix_url}, {"debug", "2"}}}})},
      {json_name({{"driver", "raw"},
                  {"file.driver", "gluster"},
                  {"file.volume", "gv"},
                  {"file.path", "disk.img"},
                  {"file.server.0.type", "unix"},
                  {"file.server.0.path", s.gd.socket()}})},
      {"--image-opts", "driver=gluster,volume=gv,path=disk.img,server.0.type=tcp,server.0.host=127.0.0.1,"
                       "server.0.port=24007,debug=9,logfile=" + t / "gfapi.log"},
  };
  for (const auto& f : forms) {
    SCOPED_TRACE(f.back());
    expect_same_bytes(f, file);
  }
  // QEMU's --drive form with the options beside the URL (info takes --drive; convert not).
  auto drive = run_netblk({"info", "--output=json", "--drive",
                           "file=" + s.gd.url("gv", "disk.img") + ",format=raw,file.debug=4,file.logfile=" +
                               t / "gfapi-drive.log"},
                          30s);
  ASSERT_EQ(drive.exit_code, 0) << drive.err;
  EXPECT_EQ(json::parse(drive.out)["virtual-size"], kDiskSize);
  EXPECT_TRUE(std::filesystem::exists(t / "gfapi-drive.log"));
  // logfile= is where gfapi's log went (debug=9: much of it).
  EXPECT_GT(std::filesystem::file_size(t / "gfapi.log"), 0u);
  // rdma falls back to tcp with QEMU's warning.
  auto rdma = run_netblk({"info", "gluster+rdma://127.0.0.1/gv/disk.img"}, 30s);
  expect_ok(rdma, "rdma");
  EXPECT_NE(rdma.err.find("rdma feature is not supported, falling back to tcp"), std::string::npos) << rdma.err;
  // The node names itself by the URL that opens it again.
  auto info = run_netblk({"info", "--output=json", json_name(gluster_options("gv", "disk.img", Json::array({server_tcp()})))});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(json::parse(info.out)["filename"], s.gd.url("gv", "disk.img"));
  // Without a logfile, gfapi's log stays out of the terminal: stderr is empty.
  auto quiet = run_netblk({"info", s.gd.url("gv", "disk.img")}, 30s);
  EXPECT_EQ(quiet.err, "");
}

TEST(Gluster, ServerListWithDeadFirstEntry) {
  auto& s = shared<Served>();
  TempDir t;
  const std::uint16_t dead = free_port();
  // A tcp server that refuses, then the live one; a unix socket nobody listens on, then the
  // live CLI socket.
  const json tcp_list = gluster_options("gv", "disk.img", Json::array({server_tcp(dead), server_tcp()}));
  const json unix_list = gluster_options(
      "gv", "disk.img", Json::array({{{"type", "unix"}, {"path", t / "nobody.sock"}}, {{"type", "unix"}, {"path", s.gd.socket()}}}));
  for (const auto& o : {tcp_list, unix_list}) {
    const auto start = std::chrono::steady_clock::now();
    expect_same_bytes({json_name(o)}, s.disk());
    std::cout << "[ gluster  ] info + convert with a dead first server: " << seconds_since(start) << " s\n";
  }
  // Every entry dead: one line naming each, at once.
  const auto start = std::chrono::steady_clock::now();
  const json all_dead = gluster_options("gv", "disk.img", Json::array({server_tcp(dead), {{"type", "unix"}, {"path", t / "nobody.sock"}}}));
  expect_failure_with(run_netblk({"info", json_name(all_dead)}, 30s), "every server dead",
                      {"no volfile server answers", "server.0 (127.0.0.1:" + std::to_string(dead) + "): Connection refused",
                       "server.1 (socket " + t / "nobody.sock" + ")"});
  EXPECT_LT(seconds_since(start), 10.0);
}

TEST(Gluster, MissingVolumeFileOrServer) {
  auto& s = shared<Served>();
  struct Case {
    std::string name;
    std::vector<std::string> words;
  };
  const std::uint16_t dead = free_port();
  const std::vector<Case> cases{
      {s.gd.url("nosuch", "disk.img"), {"volume nosuch", "No such file or directory", "server.0 (127.0.0.1:24007)"}},
      {s.gd.url("gv", "no-such.img"), {"Could not open 'no-such.img'", "No such file or directory"}},
      {"gluster://127.0.0.1:" + std::to_string(dead) + "/gv/disk.img", {"no volfile server answers", "Connection refused"}},
      {"gluster+unix:///gv/disk.img?socket=/nonexistent/glusterd.socket", {"socket /nonexistent/glusterd.socket"}},
  };
  for (const auto& c : cases) {
    const auto start = std::chrono::steady_clock::now();
    expect_failure_with(run_netblk({"info", c.name}, 30s), c.name, c.words);
    const double took = seconds_since(start);
    EXPECT_LT(took, 10.0) << c.name;
    std::cout << "[ gluster  ] " << c.name << " failed in " << took << " s\n";
  }
}

// Through the library on a protocol node: block status from SEEK_DATA/SEEK_HOLE, zeroes
// (zerofill), discard (a hole punched on the brick), fast zeroing refused as QEMU does,
// writes past the end growing the file, and every byte in the brick after close.
TEST(Gluster, ZeroesDiscardAndBlockStatus) {
  auto& s = shared<Served>();
  constexpr std::uint64_t kMiB = 1u << 20;
  expect_ok(run_netblk({"create", "-f", "raw", s.gd.url("gv", "ops.raw"), "8M"}, 30s), "create");
  const std::string name = json_name(gluster_options("gv", "ops.raw", Json::array({server_tcp()})));
  std::string want(8 * kMiB, '\0');
  run_sync<void>([&]() -> Task<void> {
    auto node = co_await open_drive(named(name, false));
    EXPECT_EQ(node->driver(), "gluster");
    EXPECT_TRUE(node->caps().has_block_status);
    // A new file is one hole, and reads as zeroes.
    BlockStatus st = co_await node->block_status(0, node->size());
    EXPECT_EQ(st.length, 8 * kMiB);
    EXPECT_EQ(st.flags & (kStatusZero | kStatusData), kStatusZero);
    // 3 MiB of data at 2 MiB: hole, data, hole.
    Buffer data(3 * kMiB);
    for (std::size_t i = 0; i < data.size(); ++i) data.data()[i] = static_cast<std::byte>(i * 7 + 1);
    co_await node->write(2 * kMiB, data.span());
    std::memcpy(want.data() + 2 * kMiB, data.data(), data.size());
    st = co_await node->block_status(0, node->size());
    EXPECT_EQ(st.length, 2 * kMiB);
    EXPECT_TRUE(st.flags & kStatusZero);
    st = co_await node->block_status(2 * kMiB, node->size() - 2 * kMiB);
    EXPECT_EQ(st.length, 3 * kMiB);
    EXPECT_TRUE(st.flags & kStatusData);
    // Zeroes over the first data MiB, a discard over the second.
    co_await node->write_zeroes(2 * kMiB, kMiB);
    std::memset(want.data() + 2 * kMiB, 0, kMiB);
    co_await node->discard(3 * kMiB, kMiB);
    std::memset(want.data() + 3 * kMiB, 0, kMiB);
    int fast = 0;
    try {
      co_await node->write_zeroes(0, kMiB, kZeroFast);
    } catch (const Error& e) {
      fast = e.code();
    }
    EXPECT_EQ(fast, ENOTSUP);
    Buffer back(8 * kMiB);
    co_await node->read(0, back.span());
    EXPECT_TRUE(std::memcmp(back.data(), want.data(), want.size()) == 0);
    // The discarded MiB is a hole again.
    st = co_await node->block_status(3 * kMiB, kMiB);
    EXPECT_TRUE(st.flags & kStatusZero) << st.flags;
    co_await node->flush();
    co_await node->close();
  });
  EXPECT_TRUE(read_file(s.brick_file("ops.raw")) == want);
}

// Block status asked from many coroutines at once on one file (as convert's workers ask):
// glfs_lseek returns its file's offset after the call, so unserialised seeks answered each
// other's questions (a hole reported where data is: 1 copy in 20 of the 6 MiB disk had 2 MiB
// of zeroes). Here 16 askers at a time over 64 islands of data, 50 rounds.
TEST(Gluster, ConcurrentBlockStatusAnswersEachQuestion) {
  auto& s = shared<Served>();
  constexpr std::uint64_t kMiB = 1u << 20;
  constexpr std::uint64_t kIslands = 64;
  expect_ok(run_netblk({"create", "-f", "raw", s.gd.url("gv", "islands.raw"), std::to_string(2 * kIslands) + "M"}, 30s),
            "create");
  const std::string name = s.gd.url("gv", "islands.raw");
  run_sync<void>([&]() -> Task<void> {
    {
      auto node = co_await open_drive(named(name, false));
      Buffer data(kMiB);
      std::memset(data.data(), 0x5a, data.size());
      for (std::uint64_t i = 0; i < kIslands; ++i) co_await node->write(2 * i * kMiB, data.span());
      co_await node->flush();
      co_await node->close();
    }
    auto node = co_await open_drive(named(name, true));
    int wrong = 0;
    for (int round = 0; round < 50; ++round) {
      std::uint64_t next = 0;
      auto ask = [&]() -> Task<void> {
        while (next < 2 * kIslands) {
          // Even MiBs are data up to the next odd one; odd MiBs are holes up to the next even.
          const std::uint64_t mib = next++;
          const BlockStatus st = co_await node->block_status(mib * kMiB, node->size() - mib * kMiB);
          const bool data = mib % 2 == 0;
          if (st.length != kMiB || bool(st.flags & kStatusData) != data || bool(st.flags & kStatusZero) == data) {
            if (wrong++ < 5)
              ADD_FAILURE() << "round " << round << ", MiB " << mib << ": length " << st.length << ", flags " << st.flags;
          }
        }
      };
      co_await run_concurrently(16, ask, [] {});
    }
    EXPECT_EQ(wrong, 0);
    co_await node->close();
  });
}

// Nodes of one process on the same volume and server list share one gfapi connection: a
// second node adds no connection (counted by gfapi's timer threads, one per connection), nor
// does one opened after both closed; the same volume through another server list is a
// connection of its own.
TEST(Gluster, OneConnectionPerVolumeAndServerList) {
  auto& s = shared<Served>();
  // Each connection has one timer thread, named by gfapi (its other threads come and go).
  const auto threads = [] {
    std::size_t n = 0;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/task"))
      n += read_file(e.path().string() + "/comm") == "glfs_timer\n" ? 1 : 0;
    return n;
  };
  const std::string tcp = json_name(gluster_options("rv", "small.img", Json::array({server_tcp()})));
  const std::string via_unix =
      json_name(gluster_options("rv", "small.img", Json::array({{{"type", "unix"}, {"path", s.gd.socket()}}})));
  // On the replica volume: other tests reach it through the CLI, in processes of their own.
  TempDir t;
  write_pattern_file(t / "small.img", 1u << 20, 3);
  Served::put(t / "small.img", s.gd.url("rv", "small.img"));
  run_sync<void>([&]() -> Task<void> {
    const std::size_t before = threads();
    auto first = co_await open_drive(named(tcp));
    const std::size_t with_one = threads();
    EXPECT_EQ(with_one, before + 1);
    auto second = co_await open_drive(named(tcp));
    EXPECT_EQ(threads(), with_one) << "a second node on the same volume made a connection of its own";
    co_await first->close();
    co_await second->close();
    auto third = co_await open_drive(named(tcp));
    EXPECT_EQ(threads(), with_one) << "the connection was not kept for the next node";
    co_await third->close();
    auto other = co_await open_drive(named(via_unix));
    EXPECT_EQ(threads(), with_one + 1) << "another server list shared the connection";
    co_await other->close();
  });
}

// A socket that accepts and never answers (glusterd's own -S socket does that to gfapi):
// glfs_init would wait for ever; the open gives up after its deadline with one line.
TEST(Gluster, ServerThatNeverAnswers) {
  TempDir t;
  const std::string path = t / "silent.sock";
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, path.c_str(), sizeof(sa.sun_path) - 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
  ASSERT_EQ(::listen(fd, 8), 0);
  const auto start = std::chrono::steady_clock::now();
  expect_failure_with(run_netblk({"info", "gluster+unix:///gv/disk.img?socket=" + path}, 60s), "silent server",
                      {"Gluster connection for volume gv did not complete within 10 s"});
  const double took = seconds_since(start);
  EXPECT_LT(took, 20.0);
  std::cout << "[ gluster  ] a server that never answers: failed in " << took << " s\n";
  ::close(fd);
}

TEST(Gluster, CreateRawAndQcow2OnTheVolume) {
  auto& s = shared<Served>();
  TempDir t;
  write_pattern_file(t / "src.img", 5u << 20, 7);
  // raw: created at a size, then written by convert; the brick holds the bytes.
  expect_ok(run_netblk({"create", "-f", "raw", s.gd.url("gv", "made.raw"), "3M"}, 30s), "create raw");
  EXPECT_EQ(std::filesystem::file_size(s.brick_file("made.raw")), 3u << 20);
  expect_ok(run_netblk({"convert", "-O", "raw", t / "src.img", s.gd.url("gv", "made.raw")}, 60s), "convert to raw");
  EXPECT_EQ(file_hash(s.brick_file("made.raw")), file_hash(t / "src.img"));
  expect_same_bytes({s.gd.url("gv", "made.raw")}, t / "src.img");
  // resize: grown, then shrunk back with --shrink; the bytes stay.
  expect_ok(run_netblk({"resize", "-f", "raw", s.gd.url("gv", "made.raw"), "7M"}, 30s), "resize");
  EXPECT_EQ(std::filesystem::file_size(s.brick_file("made.raw")), 7u << 20);
  expect_ok(run_netblk({"resize", "--shrink", "-f", "raw", s.gd.url("gv", "made.raw"), "5M"}, 30s), "shrink");
  EXPECT_EQ(file_hash(s.brick_file("made.raw")), file_hash(t / "src.img"));

  // qcow2: create, then convert into a new one; read back; netblk's and qemu-img's checks.
  expect_ok(run_netblk({"create", "-f", "qcow2", s.gd.url("gv", "empty.qcow2"), "64M"}, 30s), "create qcow2");
  auto info = run_netblk({"info", "--output=json", s.gd.url("gv", "empty.qcow2")}, 30s);
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(json::parse(info.out)["format"], "qcow2");
  EXPECT_EQ(json::parse(info.out)["virtual-size"], 64u << 20);
  expect_ok(run_netblk({"convert", "-O", "qcow2", t / "src.img", s.gd.url("gv", "made.qcow2")}, 60s),
            "convert to qcow2");
  expect_ok(run_netblk({"convert", "-O", "raw", s.gd.url("gv", "made.qcow2"), t / "back.raw"}, 60s), "read qcow2");
  EXPECT_EQ(file_hash(t / "back.raw"), file_hash(t / "src.img"));
  expect_ok(run_netblk({"check", s.gd.url("gv", "made.qcow2")}, 30s), "netblk check");
  // qemu-img reads it over Gluster too (once: ~10 s of glfs_fini).
  auto q = run({"qemu-img", "check", s.gd.url("gv", "made.qcow2")}, 120s);
  EXPECT_EQ(q.exit_code, 0) << q.out << q.err;
  EXPECT_NE(q.out.find("No errors were found on the image."), std::string::npos) << q.out;
}

TEST(Gluster, ReplicaSurvivesABrickKilledMidCopy) {
  auto& s = shared<Served>();
  TempDir t;
  write_pattern_file(t / "big.img", kBigSize, 5);
  Served::put(t / "big.img", s.gd.url("rv", "big.img"));
  // Both bricks hold the bytes.
  for (int i = 0; i < 2; ++i)
    EXPECT_EQ(file_hash(s.gd.brick("rv", i) + "/big.img"), file_hash(t / "big.img")) << "brick " << i;

  // A copy out of the volume; brick 0 killed once a sixth of it has landed.
  std::vector<std::string> argv{netblk_binary(), "convert", "-O", "raw", s.gd.url("rv", "big.img"), t / "out.raw"};
  Process convert(argv, t / "convert.log");
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (allocated(t / "out.raw") < kBigSize / 6 && std::chrono::steady_clock::now() < until && convert.running())
    std::this_thread::sleep_for(1ms);
  const bool mid_copy = convert.running();
  s.gd.kill_brick("rv", 0);
  EXPECT_TRUE(mid_copy) << "the copy ended before the kill: " << read_file(t / "convert.log");
  EXPECT_EQ(convert.wait(60000ms), 0) << read_file(t / "convert.log");
  EXPECT_EQ(file_hash(t / "out.raw"), file_hash(t / "big.img"));
  // And a copy with one brick down from the start.
  expect_same_bytes({s.gd.url("rv", "big.img")}, t / "big.img");
  // The brick back for whatever runs next.
  s.gd.gluster({"volume", "start", "rv", "force"});
}

// A qcow2 overlay on local disk whose backing file is on the volume, exported by serve.
TEST(Gluster, LocalOverlayOverTheVolumeThroughServe) {
  auto& s = shared<Served>();
  TempDir d;
  const std::string overlay = d / "overlay.qcow2";
  expect_ok(run_netblk({"create", "-f", "qcow2", "-b", s.gd.url("gv", "disk.img"), "-F", "raw", overlay}, 30s),
            "create overlay");
  auto info = run_netblk({"info", "--output=json", overlay}, 30s);
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(json::parse(info.out).value("backing-filename", ""), s.gd.url("gv", "disk.img"));
  NetblkServe server({.args = {"-t", "--drive", "file=" + overlay + ",format=qcow2"}});
  expect_ok(run_netblk({"compare", "-f", "raw", "-F", "raw", server.url(), s.disk()}, 60s), "compare via serve");
  // A write through the export stays in the overlay; the volume's file is unchanged.
  write_pattern_file(d / "patch.img", 1u << 20, 99);
  expect_ok(run_netblk({"convert", "-n", "-f", "raw", "-O", "raw", d / "patch.img", server.url()}, 60s),
            "write via serve");
  EXPECT_EQ(file_hash(s.brick_file("disk.img")), file_hash(s.disk()));
}

// Not a pass/fail criterion (speed is never asserted): the time `netblk info` takes on a
// volume, median of three, where qemu-img's takes 10-21 s.
TEST(Gluster, InfoTime) {
  auto& s = shared<Served>();
  std::vector<double> times;
  for (int i = 0; i < 3; ++i) {
    const auto start = std::chrono::steady_clock::now();
    expect_ok(run_netblk({"info", s.gd.url("gv", "disk.img")}, 30s), "info");
    times.push_back(seconds_since(start));
  }
  std::sort(times.begin(), times.end());
  std::cout << "[ gluster  ] netblk info " << s.gd.url("gv", "disk.img") << ": median of 3 " << times[1] << " s\n";
  RecordProperty("netblk_info_median_ms", static_cast<int>(times[1] * 1000));
}
