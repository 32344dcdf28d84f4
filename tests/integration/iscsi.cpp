// The iscsi driver against tgtd (tgt's user-space target) on 127.0.0.1: every name form, a
// disk LUN read and written (the drive checks, qemu-img compare agreeing), a read-only LUN,
// a CD-ROM LUN, a thin-provisioned LUN where discard and zeroing free space in the backing
// file, a target restricted to one initiator name, CHAP by URL, by a secret and by the
// environment, a wrong password; tgtd killed and restarted during a 256 MiB convert, and
// killed for good with timeout=3.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/secrets.hpp"
#include "drive_checks.hpp"
#include "netblk_serve.hpp"
#include "netblk/buffer.hpp"
#include "netblk/open.hpp"
#include "servers.hpp"
#include "tgtd.hpp"

using namespace netblk;
using namespace netblk::test;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

const std::string kDisk = "iqn.2026-12.test.netblk:disk";
const std::string kOnly = "iqn.2026-12.test.netblk:only";
const std::string kChap = "iqn.2026-12.test.netblk:chap";
const std::string kClient = "iqn.2026-12.test.netblk:client";
const std::string kChapUser = "netblk-user";
const std::string kChapPassword = "chap-pw-Xq7z";
constexpr std::uint64_t kDiskSize = 8u << 20;
constexpr std::uint64_t kCdSize = 4u << 20;
constexpr std::uint64_t kThinSize = 16u << 20;

// LUN numbers of kDisk.
constexpr int kLunDisk = 1, kLunReadOnly = 2, kLunCd = 3, kLunThin = 4;

std::vector<Tgtd::Target> make_targets(const TempDir& d) {
  write_pattern_file(d / "disk.img", kDiskSize, 1);
  write_pattern_file(d / "ro.img", kDiskSize, 2);
  write_pattern_file(d / "cd.iso", kCdSize, 3);
  write_pattern_file(d / "thin.img", kThinSize, 4);
  write_pattern_file(d / "only.img", 1u << 20, 5);
  write_pattern_file(d / "chap.img", 1u << 20, 6);
  return {
      Tgtd::Target{.iqn = kDisk,
                   .luns = {{.backing = d / "disk.img"},
                            {.backing = d / "ro.img", .readonly = true},
                            {.backing = d / "cd.iso", .cdrom = true},
                            {.backing = d / "thin.img", .thin = true}}},
      Tgtd::Target{.iqn = kOnly, .luns = {{.backing = d / "only.img"}}, .initiator = kClient},
      Tgtd::Target{.iqn = kChap,
                   .luns = {{.backing = d / "chap.img"}},
                   .chap_user = kChapUser,
                   .chap_password = kChapPassword},
  };
}

struct Served {
  TempDir dir;
  Tgtd tgt{make_targets(dir)};
  std::string url(const std::string& iqn, int lun) const { return tgt.url(iqn, lun); }
  json opts(const std::string& iqn, int lun) const {
    return json{{"driver", "iscsi"}, {"transport", "tcp"}, {"portal", tgt.portal()}, {"target", iqn}, {"lun", lun}};
  }
};

json info_of(const std::vector<std::string>& args) {
  std::vector<std::string> a{"info", "--output=json"};
  a.insert(a.end(), args.begin(), args.end());
  auto r = run_netblk(a, 60s);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  try {
    return json::parse(r.out);
  } catch (...) {
    ADD_FAILURE() << "not json: " << r.out << r.err;
    return json::object();
  }
}

RunResult netblk_env(const std::vector<std::string>& args, const std::vector<std::string>& env,
                     std::chrono::seconds timeout = 60s) {
  std::vector<std::string> argv{netblk_binary()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(argv, timeout, env);
}

std::uint64_t allocated(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(stat(path.c_str(), &st), 0);
  return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

DriveCheckParam iscsi_case(std::string label, std::function<DriveCase(Served&)> make) {
  return DriveCheckParam{std::move(label), [make] { return make(shared<Served>()); }};
}

}  // namespace

NETBLK_DRIVE_CHECKS(
    Iscsi, iscsi_case("disk_url", [](Served& s) {
      const std::string base = "iscsi://" + s.tgt.portal() + "/";
      return DriveCase{.name = s.url(kDisk, kLunDisk),
                       .source = s.dir / "disk.img",
                       .writable = true,
                       .bad_names = {s.url(kDisk, 9), base + "iqn.2026-12.test.netblk:nosuch/1", base + kDisk,
                                     "iscsi://127.0.0.1:1/" + kDisk + "/1", "iser://" + s.tgt.portal() + "/x/1x"}};
    }),
    iscsi_case("read_only_json", [](Served& s) {
      json no_lun = s.opts(kDisk, 9), bad_transport = s.opts(kDisk, kLunReadOnly), no_target = bad_transport;
      bad_transport["transport"] = "rdma";
      no_target.erase("target");
      return DriveCase{.name = json_name(s.opts(kDisk, kLunReadOnly)),
                       .source = s.dir / "ro.img",
                       .bad_names = {json_name(no_lun), json_name(bad_transport), json_name(no_target)}};
    }),
    iscsi_case("cdrom", [](Served& s) {
      return DriveCase{.name = s.url(kDisk, kLunCd),
                       .source = s.dir / "cd.iso",
                       .bad_names = {s.url(kDisk, kLunCd) + "x", s.url(kDisk, 70000)}};
    }),
    iscsi_case("chap_secret", [](Served& s) {
      json o = s.opts(kChap, 1);
      o["user"] = kChapUser;
      o["password-secret"] = "chap";
      json wrong = o, missing = o;
      wrong["password-secret"] = "wrong";
      missing.erase("password-secret");
      return DriveCase{.name = json_name(o),
                       .source = s.dir / "chap.img",
                       .writable = true,
                       .bad_names = {json_name(wrong), json_name(missing), s.url(kChap, 1)},
                       .objects = {"secret,id=chap,data=" + kChapPassword, "secret,id=wrong,data=not-it"}};
    }));

// Every spelling names the same LUN: URL, json:, --image-opts, --drive, -f raw.
TEST(Iscsi, NameForms) {
  auto& s = shared<Served>();
  const std::string url = s.url(kDisk, kLunDisk);
  std::string opts = "driver=iscsi,transport=tcp,portal=" + s.tgt.portal() + ",target=" + kDisk + ",lun=1";
  for (const auto& args : std::vector<std::vector<std::string>>{
           {url},
           {"-f", "raw", url},
           {json_name(s.opts(kDisk, kLunDisk))},
           {"--image-opts", opts},
           {"--image-opts", "driver=raw,file.driver=iscsi,file.transport=tcp,file.portal=127.0.0.1:" +
                                std::to_string(s.tgt.port()) + ",file.target=" + kDisk + ",file.lun=1"},
           {"--drive", "file=" + url + ",format=raw"},
           {"iscsi://127.0.0.1:" + std::to_string(s.tgt.port()) + "/" + "iqn.2026-12.test.netblk%3Adisk/1"}}) {
    json j = info_of(args);
    EXPECT_EQ(j.value("virtual-size", 0ull), kDiskSize) << args.back();
  }
  // The URL is its own canonical name.
  EXPECT_EQ(info_of({url}).value("filename", ""), url);
  // Options that a URL already gives are refused, unknown options too, in QEMU's words.
  auto mixed = run_netblk({"info", "--image-opts", "driver=iscsi,filename=" + url + ",lun=2"}, 30s);
  expect_one_line_failure(mixed, "filename with lun");
  EXPECT_NE(mixed.err.find("cannot be used with a file name"), std::string::npos) << mixed.err;
  auto unknown = run_netblk({"info", "--image-opts", opts + ",bogus=1"}, 30s);
  expect_one_line_failure(unknown, "unknown option");
  EXPECT_NE(unknown.err.find("doesn't support the option 'bogus'"), std::string::npos) << unknown.err;
  auto digest = run_netblk({"info", "--image-opts", opts + ",header-digest=md5"}, 30s);
  expect_one_line_failure(digest, "bad digest");
  EXPECT_NE(digest.err.find("Invalid header-digest setting"), std::string::npos) << digest.err;
  // Digests the target accepts.
  expect_ok(run_netblk({"info", "--image-opts", opts + ",header-digest=none"}, 30s), "header-digest=none");
  expect_ok(run_netblk({"info", "--image-opts", opts + ",header-digest=crc32c-none"}, 30s), "header-digest=crc32c-none");
  // iser:// and transport=iser: libiscsi's iSER needs an RDMA device; without one, one line
  // saying so (QEMU: "Failed to start full connect Couldn't connect transport: ...").
  if (!std::filesystem::exists("/sys/class/infiniband")) {
    for (const auto& name : {"iser://" + s.tgt.portal() + "/" + kDisk + "/1",
                             "json:{\"driver\":\"iscsi\",\"transport\":\"iser\",\"portal\":\"" + s.tgt.portal() +
                                 "\",\"target\":\"" + kDisk + "\",\"lun\":1}"}) {
      auto iser = run_netblk({"info", name}, 30s);
      expect_one_line_failure(iser, name);
      EXPECT_NE(iser.err.find("the iser transport is not available here (it needs an RDMA device)"), std::string::npos)
          << iser.err;
    }
  }
}

// The read-only LUN opens read-only; a read-write open fails with one line; nothing changes.
TEST(Iscsi, ReadOnlyLun) {
  auto& s = shared<Served>();
  const auto before = file_hash(s.dir / "ro.img");
  TempDir t;
  write_pattern_file(t / "src.raw", kDiskSize, 77);
  auto r = run_netblk({"convert", "-n", "-O", "raw", t / "src.raw", s.url(kDisk, kLunReadOnly)}, 60s);
  expect_one_line_failure(r, "convert into a read-only LUN");
  EXPECT_NE(r.err.find("write protected"), std::string::npos) << r.err;
  EXPECT_EQ(file_hash(s.dir / "ro.img"), before);
}

// A CD-ROM LUN: 2048-byte blocks, read-only, named with --drive ...,media=cdrom too.
TEST(Iscsi, CdromLun) {
  auto& s = shared<Served>();
  const std::string url = s.url(kDisk, kLunCd);
  json j = info_of({"--drive", "file=" + url + ",format=raw,media=cdrom"});
  EXPECT_EQ(j.value("virtual-size", 0ull), kCdSize);
  TempDir t;
  write_pattern_file(t / "src.raw", kCdSize, 78);
  auto r = run_netblk({"convert", "-n", "-O", "raw", t / "src.raw", url}, 60s);
  expect_one_line_failure(r, "convert into a CD-ROM LUN");
  EXPECT_NE(r.err.find("CD-ROM"), std::string::npos) << r.err;
  // Reads at an odd offset and length go through 2048-byte alignment.
  run_sync<void>([&]() -> Task<void> {
    DriveSpec spec = named(url);
    auto node = co_await open_drive(spec);
    EXPECT_EQ(node->limits().request_alignment, 2048u);
    Buffer b(5000);
    co_await node->read(1234, b.span());
    const std::string want = read_file(s.dir / "cd.iso").substr(1234, 5000);
    EXPECT_EQ(std::memcmp(b.data(), want.data(), 5000), 0);
    co_await node->close();
  });
}

// Thin provisioning: UNMAP and WRITE SAME with UNMAP free space in the backing file; block
// status (GET LBA STATUS) reports the freed range as not data; reads give zeroes.
TEST(Iscsi, ThinLunDiscardFreesSpace) {
  auto& s = shared<Served>();
  const std::string path = s.dir / "thin.img";
  write_pattern_file(path, kThinSize, 4);
  const std::uint64_t before = allocated(path);
  ASSERT_GE(before, kThinSize - (1u << 20));
  run_sync<void>([&]() -> Task<void> {
    DriveSpec spec = named(s.url(kDisk, kLunThin), false);
    spec.format = "raw";
    auto node = co_await open_drive(spec);
    EXPECT_TRUE(node->caps().can_discard);
    co_await node->discard(0, 4u << 20);
    co_await node->write_zeroes(8u << 20, 4u << 20, kZeroMayUnmap);
    co_await node->flush();
    Buffer b(1u << 20);
    co_await node->read(8u << 20, b.span());
    bool zero = true;
    for (std::size_t i = 0; i < b.size(); ++i) zero = zero && b.data()[i] == std::byte{0};
    EXPECT_TRUE(zero);
    BlockStatus st = co_await node->block_status(0, 1u << 20);
    EXPECT_FALSE(st.flags & kStatusData) << "flags " << st.flags;
    co_await node->close();
  });
  const std::uint64_t after = allocated(path);
  EXPECT_LE(after + (7u << 20), before) << "before " << before << " after " << after;
  const std::string bytes = read_file(path);
  EXPECT_EQ(bytes.substr(0, 4u << 20), std::string(4u << 20, '\0'));
  EXPECT_EQ(bytes.substr(8u << 20, 4u << 20), std::string(4u << 20, '\0'));
}

// A target bound to one initiator name: refused without it; accepted with initiator-name=,
// with --iscsi (for every target and for this one by id) and with --readconfig.
TEST(Iscsi, InitiatorName) {
  auto& s = shared<Served>();
  const std::string url = s.url(kOnly, 1);
  expect_one_line_failure(run_netblk({"info", url}, 60s), "default initiator name");
  json o = s.opts(kOnly, 1);
  o["initiator-name"] = kClient;
  expect_ok(run_netblk({"info", json_name(o)}, 60s), "initiator-name option");
  EXPECT_NE(info_of({json_name(o)}).value("filename", "").find(kClient), std::string::npos)
      << "the canonical name keeps the initiator name";
  expect_ok(run_netblk({"--iscsi", "initiator-name=" + kClient, "info", url}, 60s), "--iscsi");
  expect_ok(run_netblk({"--iscsi", "initiator-name=" + kClient + ",id=" + kOnly, "info", url}, 60s), "--iscsi id=");
  // A group for another target does not apply.
  expect_one_line_failure(run_netblk({"--iscsi", "initiator-name=" + kClient + ",id=" + kDisk, "info", url}, 60s),
                          "--iscsi for another target");
  TempDir t;
  write_file(t / "qemu.conf", "# QEMU -readconfig\n[iscsi \"" + kOnly + "\"]\n  initiator-name = \"" + kClient + "\"\n");
  expect_ok(run_netblk({"--readconfig", t / "qemu.conf", "info", url}, 60s), "--readconfig");
  expect_one_line_failure(run_netblk({"--iscsi", "initiator-name=x,bogus=1", "info", url}, 60s), "--iscsi bad key");
}

// CHAP from the URL, from options with a secret (the drive checks), from --iscsi with a
// secret, from the environment; a wrong password fails once, quickly, in one line; the
// password is in no output.
TEST(Iscsi, Chap) {
  auto& s = shared<Served>();
  const std::string plain = s.url(kChap, 1);
  const std::string with_password = "iscsi://" + kChapUser + "%" + kChapPassword + "@" + s.tgt.portal() + "/" + kChap + "/1";
  auto r = run_netblk({"info", "--output=json", with_password}, 60s);
  expect_ok(r, "CHAP in the URL");
  EXPECT_EQ(r.out.find(kChapPassword), std::string::npos) << r.out;
  expect_one_line_failure(run_netblk({"info", plain}, 60s), "no CHAP credentials");
  expect_ok(netblk_env({"info", plain},
                       {"LIBISCSI_CHAP_USERNAME=" + kChapUser, "LIBISCSI_CHAP_PASSWORD=" + kChapPassword}),
            "CHAP from the environment");
  expect_ok(run_netblk({"--iscsi", "user=" + kChapUser + ",password-secret=pw,id=" + kChap, "info", "--object",
                        "secret,id=pw,data=" + kChapPassword, plain},
                   60s),
            "CHAP from --iscsi");
  // A secret's id, never its value, in the canonical name.
  json o = s.opts(kChap, 1);
  o["user"] = kChapUser;
  o["password-secret"] = "pw";
  auto info =
      run_netblk({"info", "--object", "secret,id=pw,data=" + kChapPassword, "--output=json", json_name(o)}, 60s);
  expect_ok(info, "CHAP with a secret");
  EXPECT_EQ(info.out.find(kChapPassword), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("password-secret"), std::string::npos) << info.out;

  const std::string wrong = "iscsi://" + kChapUser + "%wrong-pw@" + s.tgt.portal() + "/" + kChap + "/1";
  const auto start = std::chrono::steady_clock::now();
  auto bad = run_netblk({"info", wrong}, 60s);
  expect_one_line_failure(bad, "wrong CHAP password");
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  EXPECT_EQ(bad.err.find("wrong-pw"), std::string::npos) << bad.err;
  EXPECT_EQ(std::count(bad.err.begin(), bad.err.end(), '\n'), 1) << bad.err;
}

// tgtd killed (SIGKILL) and restarted while a 256 MiB convert runs, both ways: identical
// bytes. Killed for good with timeout=3: a one-line failure, well within a minute. The same
// while `netblk serve` exports the LUN to a reader (netblk's NBD client).
struct BigLun {
  static constexpr std::uint64_t kSize = 256u << 20;
  TempDir dir;
  Tgtd tgt{[this] {
    write_pattern_file(dir / "big.img", kSize, 9);
    return std::vector<Tgtd::Target>{{.iqn = kDisk, .luns = {{.backing = dir / "big.img"}}}};
  }()};
  // The shared LUN, its target started again if a test left it killed.
  static BigLun& get() {
    auto& lun = shared<BigLun>();
    if (!lun.tgt.running()) lun.tgt.restart();
    return lun;
  }
  // The LUN with timeout=3, as json:.
  std::string with_timeout() const {
    return json_name(json{{"driver", "iscsi"}, {"transport", "tcp"}, {"portal", tgt.portal()}, {"target", kDisk},
                          {"lun", 1}, {"timeout", 3}});
  }
};

// Runs `args` (netblk's), kills the target while it copies and restarts it a second later
// (or never); returns the exit code and the copy's output.
RunResult copy_through_a_kill(const std::vector<std::string>& args, Tgtd& tgt, bool restart, const TempDir& t) {
  std::vector<std::string> argv{netblk_binary()};
  argv.insert(argv.end(), args.begin(), args.end());
  std::filesystem::remove(t / "copy.log");  // a log of this copy alone
  Process p(argv, t / "copy.log");
  // Kill the target once the copy has logged in (a slow build may still be opening after
  // a fixed delay, and a target that is down at open is an open error, not this test).
  const std::string established = "( sport = :" + std::to_string(tgt.port()) + " )";
  for (auto until = std::chrono::steady_clock::now() + 20s; std::chrono::steady_clock::now() < until;) {
    if (!run({"ss", "-Htn", "state", "established", established}).out.empty()) break;
    std::this_thread::sleep_for(20ms);
  }
  std::this_thread::sleep_for(150ms);
  EXPECT_TRUE(p.running()) << "the copy ended before the target was killed";
  tgt.kill();
  if (restart) {
    std::this_thread::sleep_for(1s);
    tgt.restart();
  }
  RunResult r;
  r.exit_code = p.wait(90s);
  r.err = read_file(t / "copy.log");
  return r;
}

// A copy whose target went for good: one line, in time (timeout=3).
void expect_gone_in_time(const std::vector<std::string>& args, Tgtd& tgt, const TempDir& t) {
  const auto start = std::chrono::steady_clock::now();
  RunResult r = copy_through_a_kill(args, tgt, false, t);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 30s);
  expect_one_line_failure(r, "the target killed for good");
}

TEST(IscsiFaults, RestartDuringConvert) {
  BigLun& lun = BigLun::get();
  TempDir t;
  const std::string url = lun.tgt.url(kDisk, 1);
  auto from = copy_through_a_kill({"convert", "-O", "raw", url, t / "out.raw"}, lun.tgt, true, t);
  EXPECT_EQ(from.exit_code, 0) << from.err;
  EXPECT_EQ(file_hash(t / "out.raw"), file_hash(lun.dir / "big.img"));
  write_pattern_file(t / "in.raw", BigLun::kSize, 10);
  auto into = copy_through_a_kill({"convert", "-n", "-O", "raw", t / "in.raw", url}, lun.tgt, true, t);
  EXPECT_EQ(into.exit_code, 0) << into.err;
  EXPECT_EQ(file_hash(t / "in.raw"), file_hash(lun.dir / "big.img"));
}

TEST(IscsiFaults, GoneForGoodWithTimeout) {
  BigLun& lun = BigLun::get();
  TempDir t;
  expect_gone_in_time({"convert", "-O", "raw", lun.with_timeout(), t / "out.raw"}, lun.tgt, t);
  // Writes in flight time out too; their buffers stay with the session, not the caller.
  lun.tgt.restart();
  write_pattern_file(t / "in.raw", BigLun::kSize, 11);
  expect_gone_in_time({"convert", "-n", "--target-image-opts", t / "in.raw",
                       "driver=iscsi,transport=tcp,portal=" + lun.tgt.portal() + ",target=" + kDisk + ",lun=1,timeout=3"},
                      lun.tgt, t);
}

TEST(IscsiFaults, RestartWhileServing) {
  BigLun& lun = BigLun::get();
  TempDir t;
  NetblkServe server({.args = {"-t", "-f", "raw", lun.tgt.url(kDisk, 1)}});
  auto r = copy_through_a_kill({"convert", "-O", "raw", server.url(), t / "out.raw"}, lun.tgt, true, t);
  EXPECT_EQ(r.exit_code, 0) << r.err << server.log();
  EXPECT_EQ(file_hash(t / "out.raw"), file_hash(lun.dir / "big.img"));
}

TEST(IscsiFaults, GoneForGoodWhileServing) {
  BigLun& lun = BigLun::get();
  TempDir t;
  NetblkServe server({.args = {"-t", lun.with_timeout()}});
  expect_gone_in_time({"convert", "-O", "raw", server.url(), t / "out.raw"}, lun.tgt, t);
  EXPECT_TRUE(server.running()) << "the server must outlive its target";
}
// A target that hangs (SIGSTOP: its connection stays open, nothing answers) during a copy.
// Without a timeout, the NOP-Out keepalive finds it (QEMU: 3 NOP-Outs, 5 s apart, unanswered)
// and reconnects; when the target answers again the copy completes with identical bytes.
// With timeout=3 the commands fail in bounded time, the target still hung.
TEST(IscsiFaults, HungTarget) {
  BigLun& lun = BigLun::get();
  TempDir t;
  auto hang_during = [&](const std::string& source) {
    std::filesystem::remove(t / "copy.log");
    Process p({netblk_binary(), "convert", "-O", "raw", source, t / "out.raw"}, t / "copy.log", {"NETBLK_LOG=debug"});
    const std::string established = "( sport = :" + std::to_string(lun.tgt.port()) + " )";
    for (auto until = std::chrono::steady_clock::now() + 20s; std::chrono::steady_clock::now() < until;) {
      if (!run({"ss", "-Htn", "state", "established", established}).out.empty()) break;
      std::this_thread::sleep_for(20ms);
    }
    std::this_thread::sleep_for(150ms);
    EXPECT_TRUE(p.running()) << "the copy ended before the target hung";
    ::kill(lun.tgt.process().pid(), SIGSTOP);
    return p;
  };

  const auto start = std::chrono::steady_clock::now();
  Process p = hang_during(lun.tgt.url(kDisk, 1));
  bool noticed = false;
  while (!noticed && std::chrono::steady_clock::now() - start < 40s) {
    std::this_thread::sleep_for(200ms);
    noticed = read_file(t / "copy.log").find("NOP timeout; reconnecting") != std::string::npos;
  }
  ::kill(lun.tgt.process().pid(), SIGCONT);
  EXPECT_TRUE(noticed) << read_file(t / "copy.log");
  EXPECT_EQ(p.wait(60s), 0) << read_file(t / "copy.log");
  EXPECT_EQ(file_hash(t / "out.raw"), file_hash(lun.dir / "big.img"));

  const auto again = std::chrono::steady_clock::now();
  Process q = hang_during(lun.with_timeout());
  RunResult r;
  r.exit_code = q.wait(60s);
  r.err = read_file(t / "copy.log");
  EXPECT_LT(std::chrono::steady_clock::now() - again, 30s);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("timed out"), std::string::npos) << r.err;
  lun.tgt.kill();  // still stopped: SIGKILL ends it; the next test starts it again
}

// A qcow2 overlay whose backing file is a LUN, named by json:, read through serve with
// copy-on-read: the bytes are the LUN's, and once read they no longer need the target.
TEST(Iscsi, OverlayWithCopyOnRead) {
  TempDir d;
  write_pattern_file(d / "base.img", 4u << 20, 21);
  Tgtd tgt({{.iqn = kDisk, .luns = {{.backing = d / "base.img"}}}});
  json o{{"driver", "iscsi"}, {"transport", "tcp"}, {"portal", tgt.portal()}, {"target", kDisk}, {"lun", 1},
         {"initiator-name", kClient}};
  const std::string overlay = d / "overlay.qcow2";
  expect_ok(run_netblk({"create", "-f", "qcow2", "-b", json_name(o), "-F", "raw", overlay}, 60s), "create overlay");
  auto info = info_of({overlay});
  EXPECT_EQ(info.value("backing-filename", "").rfind("json:", 0), 0u) << info.dump();
  {
    NetblkServe server({.args = {"-t", "--drive", "file=" + overlay + ",format=qcow2,copy-on-read=on"}});
    expect_ok(run_netblk({"compare", "-f", "raw", "-F", "raw", server.url(), d / "base.img"}, 60s), "compare via serve");
    tgt.kill();  // everything was read and copied up
    expect_ok(run_netblk({"compare", "-f", "raw", "-F", "raw", server.url(), d / "base.img"}, 60s),
              "compare after the target went");
  }
}
