// The ssh driver against OpenSSH's sshd on 127.0.0.1 (its own config, keys and ssh-agent in
// TempDirs; tests/servers/sshd.*): every name form, each host key check (a pinned hash,
// known_hosts matching, unknown and mismatching, none), authentication by agent, identity
// file and password secret (and none that works), reads, writes and flushes through the
// drive checks (qemu-img compare agrees), create -f raw/qcow2 over SSH, a local qcow2
// overlay on an ssh:// backing file, a missing remote file, key re-exchanges mid-copy, and
// sshd killed mid-copy: restarted (identical bytes) or gone for good (a clear error in
// bounded time).
//
// known_hosts is read from the home directory the password database gives (as QEMU's
// libssh does), which a test must not write. Those tests run netblk in a mount namespace of
// its own (unshare --mount) in which a TempDir is mounted over that home and an empty
// directory over /etc/ssh: the known_hosts netblk sees is then exactly the test's, whatever
// the machine's are.
#include <gtest/gtest.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/secrets.hpp"
#include "drive_checks.hpp"
#include "netblk/buffer.hpp"
#include "netblk/open.hpp"
#include "protocols/ssh/ssh_config.hpp"
#include "servers.hpp"
#include "sshd.hpp"

using namespace netblk;
using namespace netblk::test;
using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kDiskSize = (6u << 20) + 4321;

// The server, an agent holding its client key (SSH_AUTH_SOCK points there for this
// process, netblk and qemu-img alike), and the files it serves; one set per binary.
struct Served {
  TempDir dir;
  Sshd sshd{{}};
  SshAgent agent{{sshd.client_key()}};
  Served() {
    write_pattern_file(dir / "disk.img", kDiskSize, 11);
    setenv("SSH_AUTH_SOCK", agent.socket().c_str(), 1);
  }
  std::string disk() const { return dir / "disk.img"; }
};

// Without the agent: SSH_AUTH_SOCK set but empty.
const std::vector<std::string> kNoAgent{"SSH_AUTH_SOCK="};

RunResult nb(const std::vector<std::string>& args, const std::vector<std::string>& env = {},
             std::chrono::seconds timeout = 120s) {
  std::vector<std::string> argv{netblk_binary()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(argv, timeout, env);
}

json ssh_options(const Sshd& sshd, const std::string& path) {
  return json{{"driver", "ssh"},
              {"server", {{"host", "127.0.0.1"}, {"port", std::to_string(sshd.port())}}},
              {"path", path},
              {"host-key-check", {{"mode", "hash"}, {"type", "sha256"}, {"hash", sshd.host_key_hash("sha256")}}}};
}

// The same with the server's client key as identity file (no agent needed).
json keyed_options(const Sshd& sshd, const std::string& path) {
  json o = ssh_options(sshd, path);
  o["identity-file"] = sshd.client_key();
  return o;
}

// "aabbcc" -> "aa:bb:cc" (QEMU accepts the separators).
std::string with_colons(const std::string& hex) {
  std::string s;
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    if (i) s.push_back(':');
    s.append(hex, i, 2);
  }
  return s;
}

std::string quoted(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') q.append("'\\''");
    else q.push_back(c);
  }
  q.push_back('\'');
  return q;
}

// Runs netblk where the password database's home of this user is `home` and /etc/ssh is
// empty (see the top of the file).
RunResult nb_with_home(const TempDir& home, const std::vector<std::string>& args) {
  const passwd* pw = getpwuid(geteuid());
  const std::string real_home = pw && pw->pw_dir ? pw->pw_dir : "/root";
  std::filesystem::create_directories(home / "etc-ssh");
  std::string cmd = "mount --bind " + quoted(home.path()) + " " + quoted(real_home) + " && mount --bind " +
                    quoted(home / "etc-ssh") + " /etc/ssh && exec " + quoted(netblk_binary());
  for (const auto& a : args) {
    cmd.push_back(' ');
    cmd.append(quoted(a));
  }
  return run({"unshare", "--mount", "sh", "-c", cmd}, 60s);
}

std::uint64_t allocated(const std::string& path) {
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<std::uint64_t>(st.st_blocks) * 512 : 0;
}

// Starts `convert` of a 128 MiB image in `dir` and kills sshd (all of it) once a sixth of
// the copy has landed. Returns the running convert.
Process convert_and_kill(Sshd& sshd, const std::vector<std::string>& args, const std::string& out,
                         const std::string& log) {
  std::vector<std::string> argv{netblk_binary()};
  argv.insert(argv.end(), args.begin(), args.end());
  Process convert(argv, log);
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (allocated(out) < (128u << 20) / 6 && std::chrono::steady_clock::now() < until && convert.running())
    std::this_thread::sleep_for(2ms);
  EXPECT_TRUE(convert.running()) << "the copy ended before the kill: " << read_file(log);
  sshd.kill_all();
  return convert;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Names and options (no server)

TEST(SshNames, UrlsAndOptions) {
  using netblk::ssh::options_from_url;
  const Json u = options_from_url("ssh://alice@example.org:2222/srv/a%20b.img?host_key_check=no&x=1");
  EXPECT_EQ(u["user"], "alice");
  EXPECT_EQ(u["server"]["host"], "example.org");
  EXPECT_EQ(u["server"]["port"], "2222");
  EXPECT_EQ(u["path"], "/srv/a b.img");
  EXPECT_EQ(u["host_key_check"], "no");
  EXPECT_EQ(options_from_url("ssh://h/p")["server"]["port"], "22");
  for (const auto& [bad, words] : std::vector<std::pair<std::string, std::string>>{
           {"http://h/p", "URI scheme must be 'ssh'"},
           {"ssh:///p", "missing hostname in URI"},
           {"ssh://h", "missing remote path in URI"},
           {"ssh://u:secret@h/p", "password-secret"}}) {
    try {
      options_from_url(bad);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find("secret@"), std::string::npos) << e.what();
    }
  }
  using netblk::ssh::HostKeyCheck;
  auto h = netblk::ssh::parse_legacy_host_key_check("md5:" + with_colons(std::string(32, 'a')));
  EXPECT_EQ(h.mode, HostKeyCheck::Mode::hash);
  EXPECT_EQ(h.type, "md5");
  EXPECT_EQ(netblk::ssh::parse_legacy_host_key_check("yes").mode, HostKeyCheck::Mode::known_hosts);
  EXPECT_THROW(netblk::ssh::parse_legacy_host_key_check("maybe"), Error);
  EXPECT_THROW(netblk::ssh::parse_legacy_host_key_check("sha256:abcd"), Error);
}

TEST(SshNames, OptionErrorsAreQemus) {
  struct Case {
    Json options;
    std::string words;
  };
  const std::vector<Case> cases{
      {{{"filename", "ssh://h/p"}, {"server", {{"host", "x"}}}}, "Option 'server.host' cannot be used with a file name"},
      {{{"filename", "ssh://h/p"}, {"path", "/q"}}, "Option 'path' cannot be used with a file name"},
      {{{"port", "22"}, {"path", "/p"}}, "port may not be used without host"},
      {{{"path", "/p"}}, "Parameter 'server.host' is missing"},
      {{{"server", {{"host", "h"}, {"port", "22"}}}}, "Parameter 'path' is missing"},
      {{{"server", {{"host", "h"}, {"port", "x2"}}}, {"path", "/p"}}, "Use only numeric port value"},
      {{{"server", {{"host", "h"}, {"port", "22"}, {"type", "inet"}}}, {"path", "/p"}},
       "Parameter 'server.type' is unexpected"},
      {{{"server", {{"host", "h"}, {"port", "22"}}}, {"path", "/p"}, {"bogus", "1"}},
       "Block protocol 'ssh' doesn't support the option 'bogus'"},
      {{{"host", "h"}, {"path", "/p"}, {"host-key-check", {{"mode", "fingers"}}}},
       "Parameter 'host-key-check.mode' does not accept value 'fingers'"},
      {{{"host", "h"}, {"path", "/p"}, {"host-key-check", {{"mode", "hash"}, {"hash", "00"}}}},
       "Parameter 'host-key-check.type' is missing"},
      {{{"host", "h"}, {"path", "/p"}, {"host-key-check", {{"mode", "hash"}, {"type", "sha1"}, {"hash", "00"}}}},
       "Parameter 'host-key-check.hash' expects the 20 bytes of a sha1 digest in hex"},
      {{{"host", "h"}, {"path", "/p"}, {"host_key_check", "no"}, {"host-key-check", {{"mode", "none"}}}},
       "host_key_check cannot be used with host-key-check"},
      {{{"host", "h"}, {"path", "/p"}, {"host_key_check", "perhaps"}}, "unknown host_key_check setting (perhaps)"},
  };
  for (const auto& c : cases) {
    spec::Options o(c.options, spec::Options::Kind::protocol, "ssh");
    try {
      netblk::ssh::config_from_options(o);
      ADD_FAILURE() << c.options.dump() << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.words), std::string::npos) << c.options.dump() << ": " << e.what();
    }
  }
}

TEST(SshNames, CanonicalNames) {
  Json legacy{{"host", "::1"}, {"port", 2222}, {"path", "/d/x y"}, {"user", "bob"}, {"host_key_check", "sha1:" +
                                                                                       std::string(40, 'f')}};
  spec::Options o(legacy, spec::Options::Kind::protocol, "ssh");
  const auto c = netblk::ssh::config_from_options(o);
  EXPECT_EQ(netblk::ssh::plain_filename(c), "ssh://bob@[::1]:2222/d/x%20y?host_key_check=sha1:" + std::string(40, 'f'));
  const json tree = json::parse(netblk::ssh::canonical_options(c).dump());
  EXPECT_EQ(tree["server"], (json{{"host", "::1"}, {"port", "2222"}}));
  EXPECT_EQ(tree["host-key-check"]["type"], "sha1");
  // A password is named by its secret's id only, and makes the name json:.
  secrets::define(Json{{"qom-type", "secret"}, {"id", "sshpw-canon"}, {"data", "not-in-any-name"}});
  Json with_pw{{"host", "h"}, {"path", "/p"}, {"password-secret", "sshpw-canon"}, {"identity-file", {"/k1", "/k2"}}};
  spec::Options p(with_pw, spec::Options::Kind::protocol, "ssh");
  const auto cp = netblk::ssh::config_from_options(p);
  EXPECT_EQ(netblk::ssh::plain_filename(cp), "");
  const std::string text = netblk::ssh::canonical_options(cp).dump();
  EXPECT_EQ(text.find("not-in-any-name"), std::string::npos) << text;
  EXPECT_NE(text.find("\"password-secret\":\"sshpw-canon\""), std::string::npos) << text;
  EXPECT_NE(text.find("\"identity-file\":[\"/k1\",\"/k2\"]"), std::string::npos) << text;
}

// ---------------------------------------------------------------------------------------
// Against sshd

NETBLK_DRIVE_CHECKS(Ssh, DriveCheckParam{"sftp", [] {
                      auto& s = shared<Served>();
                      return DriveCase{.name = s.sshd.url(s.disk()),
                                       .source = s.disk(),
                                       .writable = true,
                                       .bad_names = {s.sshd.url(s.dir / "missing.img"),
                                                     "ssh://127.0.0.1:1/x?host_key_check=no", "ssh://127.0.0.1",
                                                     "ssh:///x"}};
                    }});

TEST(Ssh, EveryNameForm) {
  auto& s = shared<Served>();
  const std::string p = std::to_string(s.sshd.port());
  const std::string path = s.disk();
  const std::vector<std::vector<std::string>> forms{
      {s.sshd.url(path)},
      {s.sshd.bare_url(path) + "?host_key_check=md5:" + with_colons(s.sshd.host_key_hash("md5"))},
      {s.sshd.bare_url(path) + "?host_key_check=sha1:" + s.sshd.host_key_hash("sha1")},
      {s.sshd.bare_url(path) + "?host_key_check=no"},
      {"-f", "raw", s.sshd.url(path)},
      {json_name(ssh_options(s.sshd, path))},
      {json_name({{"driver", "ssh"}, {"host", "127.0.0.1"}, {"port", s.sshd.port()}, {"path", path}, {"user", "root"},
                  {"host_key_check", "sha256:" + s.sshd.host_key_hash("sha256")}})},
      {json_name({{"driver", "raw"},
                  {"file", {{"driver", "ssh"}, {"server.host", "127.0.0.1"}, {"server.port", p}, {"path", path},
                            {"host-key-check.mode", "none"}}}})},
      {json_name({{"driver", "ssh"}, {"filename", s.sshd.url(path)}})},
      {"--image-opts", "driver=ssh,server.host=127.0.0.1,server.port=" + p + ",path=" + path +
                           ",host-key-check.mode=hash,host-key-check.type=sha1,host-key-check.hash=" +
                           s.sshd.host_key_hash("sha1")},
      {"--image-opts",
       "driver=raw,file.driver=ssh,file.host=127.0.0.1,file.port=" + p + ",file.path=" + path +
           ",file.host_key_check=no"},
  };
  for (const auto& f : forms) {
    SCOPED_TRACE(f.back());
    expect_same_bytes(f, path);
  }
  // The node names itself by the URL that opens it again, host key check included.
  auto info = nb({"info", "--output=json", json_name(ssh_options(s.sshd, path))});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(json::parse(info.out)["filename"], s.sshd.url(path));
}

TEST(Ssh, HostKeyChecks) {
  auto& s = shared<Served>();
  const std::string path = s.disk();
  // A pinned hash that is not the server's: one line, with the server's key.
  const std::string wrong = s.sshd.bare_url(path) + "?host_key_check=sha256:" + std::string(64, '0');
  expect_failure_with(nb({"info", wrong}), "wrong pinned key",
                      {"does not match host_key_check", "ssh-ed25519 key SHA256:",
                       "host_key_check=sha256:" + s.sshd.host_key_hash("sha256")});

  // known_hosts (the default): matching, hashed, unknown, mismatching.
  TempDir home;
  std::filesystem::create_directories(home / ".ssh");
  const std::string kh = home / ".ssh/known_hosts";
  const std::string bare = s.sshd.bare_url(path);
  write_file(kh, "# netblk test\n" + s.sshd.known_hosts_line() + "\n");
  auto ok = nb_with_home(home, {"info", "--output=json", bare});
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(json::parse(ok.out)["virtual-size"], kDiskSize);
  ASSERT_EQ(run({"ssh-keygen", "-H", "-f", kh}).exit_code, 0);
  expect_ok(nb_with_home(home, {"info", bare}), "a hashed known_hosts entry");
  write_file(kh, "");
  expect_failure_with(nb_with_home(home, {"info", bare}), "unknown host",
                      {"no host key was found in known_hosts", "SHA256:", "host_key_check=sha256:"});
  const std::string stranger = read_file(s.sshd.stranger_key() + ".pub");
  write_file(kh, "[127.0.0.1]:" + std::to_string(s.sshd.port()) + " " + stranger.substr(0, stranger.rfind(' ')) + "\n");
  expect_failure_with(nb_with_home(home, {"info", bare}), "changed host key",
                      {"does not match the one in", "ssh-ed25519 key SHA256:", "possible attack"});
}

TEST(Ssh, Authentication) {
  auto& s = shared<Served>();
  const std::string path = s.disk();
  json o = ssh_options(s.sshd, path);
  // The identity file alone (no agent); the first of two refused, the second taken.
  o["identity-file"] = s.sshd.client_key();
  expect_same_bytes({json_name(o)}, path, kNoAgent);
  o["identity-file"] = json::array({s.sshd.stranger_key(), s.sshd.client_key()});
  expect_ok(nb({"info", json_name(o)}, kNoAgent), "second identity file");
  // Nothing that works: one line naming what was tried.
  o["identity-file"] = s.sshd.stranger_key();
  expect_failure_with(nb({"info", json_name(o)}, kNoAgent), "no credentials",
                      {"authentication as 'root' failed", "ssh-agent (SSH_AUTH_SOCK is not set)",
                       "identity file " + s.sshd.stranger_key() + " (refused)"});
  o["identity-file"] = s.dir / "no-such-key";
  expect_failure_with(nb({"info", json_name(o)}, kNoAgent), "unreadable identity file", {"cannot read it"});

  // A password from a secret, against an sshd that takes root's password.
  const std::string password = "pw-Zq8!never-shown";
  Sshd with_password({.password = password});
  TempDir files;
  write_pattern_file(files / "p.img", 1 << 20, 3);
  json p = ssh_options(with_password, files / "p.img");
  p["password-secret"] = "sshpw";
  const std::string object = "secret,id=sshpw,data=" + password;
  expect_same_bytes({"--object", object, json_name(p)}, files / "p.img", kNoAgent);
  auto info = run({netblk_binary(), "info", "--object", object, "--output=json", json_name(p)}, 60s,
                  {"SSH_AUTH_SOCK=", "NETBLK_LOG=debug"});
  EXPECT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(info.out.find(password), std::string::npos) << info.out;
  EXPECT_EQ(info.err.find(password), std::string::npos) << info.err;
  // The wrong password: refused, and neither password is printed.
  const std::string wrong = "pw-wrong-Kx7";
  auto bad = nb({"info", "--object", "secret,id=sshpw,data=" + wrong, json_name(p)}, kNoAgent);
  expect_failure_with(bad, "wrong password", {"password from secret 'sshpw' (refused)"});
  EXPECT_EQ(bad.err.find(wrong), std::string::npos) << bad.err;
  EXPECT_EQ(bad.err.find(password), std::string::npos) << bad.err;
}

TEST(Ssh, MissingRemoteFile) {
  auto& s = shared<Served>();
  expect_failure_with(nb({"info", s.sshd.url(s.dir / "nothing-here.img")}), "missing file",
                      {"failed to open remote file", "No such file"});
}

TEST(Ssh, FlushRefusedFailsLoudlyUnlessUnsafe) {
  TempDir files;
  write_pattern_file(files / "f.img", 1 << 20, 4);
  // -P fsync: the server refuses fsync@openssh.com requests.
  Sshd sshd({.sftp_flags = "-P fsync"});
  json o = keyed_options(sshd, files / "f.img");
  run_sync<void>([&]() -> Task<void> {
    auto node = co_await open_drive(named(json_name(o), false));
    Buffer b(4096);
    std::memset(b.data(), 7, b.size());
    co_await node->write(0, b.span());
    int code = 0;
    std::string message;
    try {
      co_await node->flush();
    } catch (const Error& e) {
      code = e.code();
      message = e.what();
    }
    EXPECT_NE(code, 0) << "a flush the server refused succeeded";
    EXPECT_NE(message.find("flush failed"), std::string::npos) << message;
    try {
      co_await node->close();  // flushes, and fails the same way
    } catch (const Error&) {
    }
  });
  // cache.no-flush=on (cache=unsafe): the user accepts writes that are not made durable.
  o["cache"] = {{"no-flush", true}};
  run_sync<void>([&]() -> Task<void> {
    auto node = co_await open_drive(named(json_name(o), false));
    Buffer b(4096);
    std::memset(b.data(), 8, b.size());
    co_await node->write(4096, b.span());
    co_await node->flush();
    co_await node->close();
  });
  EXPECT_EQ(read_file(files / "f.img").substr(4096, 4096), std::string(4096, '\x08'));
}

TEST(Ssh, CreateRawAndQcow2) {
  auto& s = shared<Served>();
  TempDir files;
  const std::string raw = files / "new.raw", q = files / "new.qcow2";
  expect_ok(nb({"create", "-f", "raw", s.sshd.url(raw), "10M"}), "create raw");
  EXPECT_EQ(std::filesystem::file_size(raw), 10u << 20);
  // Created again: truncated to the new size.
  expect_ok(nb({"create", "-f", "raw", s.sshd.url(raw), "3M"}), "create raw again");
  EXPECT_EQ(std::filesystem::file_size(raw), 3u << 20);
  expect_ok(nb({"create", "-f", "qcow2", s.sshd.url(q), "64M"}), "create qcow2");
  expect_ok(run({"qemu-img", "check", q}), "qemu-img check");
  auto qi = run({"qemu-img", "info", "--output=json", q});
  EXPECT_EQ(json::parse(qi.out)["virtual-size"], 64u << 20) << qi.out;
  // A whole qcow2 image written over SSH.
  const std::string conv = files / "conv.qcow2";
  expect_ok(nb({"convert", "-O", "qcow2", s.disk(), s.sshd.url(conv)}), "convert to qcow2 over ssh");
  expect_ok(run({"qemu-img", "check", conv}), "qemu-img check of the converted image");
  expect_ok(run({"qemu-img", "compare", "-f", "raw", "-F", "qcow2", s.disk(), conv}), "qemu-img compare");
}

TEST(Ssh, LocalOverlayOnSshBacking) {
  auto& s = shared<Served>();
  TempDir files;
  const std::string base = files / "base.img", overlay = files / "top.qcow2";
  write_pattern_file(base, 4u << 20, 12);
  const std::string backing = s.sshd.url(base);
  expect_ok(nb({"create", "-f", "qcow2", "-b", backing, "-F", "raw", overlay}), "create overlay");
  auto info = nb({"info", "--output=json", overlay});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(json::parse(info.out)["backing-filename"], backing);
  expect_same_bytes({overlay}, base);
  expect_ok(run({"timeout", "60", "qemu-img", "compare", overlay, base}), "qemu-img compare of the overlay");
}

TEST(Ssh, KeyReexchangeMidCopy) {
  // sshd renews the session keys after every MiB: reads and writes go on through the key
  // exchanges, and a stall fails the copy (no reconnect to hide it).
  Sshd sshd({.extra_config = "RekeyLimit 1M"});
  TempDir dir;
  const std::string img = dir / "src.img", out = dir / "out.raw", target = dir / "target.img";
  write_pattern_file(img, 16u << 20, 13);
  json o = keyed_options(sshd, img);
  o["x-reconnect-delay"] = 0;
  o["x-io-timeout"] = 5;
  expect_ok(nb({"convert", "-O", "raw", json_name(o), out}, kNoAgent, 60s), "read");
  EXPECT_EQ(file_hash(out), file_hash(img));
  ASSERT_EQ(run({"truncate", "-s", "16M", target}).exit_code, 0);
  o["path"] = target;
  const json raw_target{{"driver", "raw"}, {"file", o}};
  expect_ok(nb({"convert", "-n", "-O", "raw", img, json_name(raw_target)}, kNoAgent, 60s), "write");
  EXPECT_EQ(file_hash(target), file_hash(img));
}

// Copies `from` to `to` with netblk convert (`extra` before them), kills sshd a sixth of the
// way, restarts it 0.7 s later, and checks that the copy ends well with `expect`'s bytes in
// `landing` (the local file the copy writes).
void copy_through_restart(Sshd& sshd, const std::vector<std::string>& extra, const std::string& from,
                          const std::string& to, const std::string& landing, const std::string& expect,
                          const std::string& log) {
  std::vector<std::string> args{"convert"};
  args.insert(args.end(), extra.begin(), extra.end());
  args.insert(args.end(), {"-O", "raw", from, to});
  Process convert = convert_and_kill(sshd, args, landing, log);
  std::this_thread::sleep_for(700ms);  // down for a while: the client must wait, not fail
  sshd.restart();
  ASSERT_EQ(convert.wait(120s), 0) << read_file(log);
  EXPECT_NE(read_file(log).find("reconnected"), std::string::npos) << read_file(log);
  EXPECT_EQ(file_hash(landing), file_hash(expect));
}

TEST(Ssh, SshdKilledAndRestartedMidCopy) {
  Sshd sshd({});
  TempDir dir;
  const std::string img = dir / "big.img", out = dir / "out.raw", target = dir / "target.img";
  write_pattern_file(img, 128u << 20, 9);
  // Reads in flight are sent again...
  copy_through_restart(sshd, {}, json_name(keyed_options(sshd, img)), out, out, img, dir / "read.log");
  // ...and so are writes.
  ASSERT_EQ(run({"truncate", "-s", "128M", target}).exit_code, 0);
  const json raw_target{{"driver", "raw"}, {"file", keyed_options(sshd, target)}};
  copy_through_restart(sshd, {"-n"}, img, json_name(raw_target), target, img, dir / "write.log");
}

TEST(Ssh, ServerGoneForGoodFailsInBoundedTime) {
  Sshd sshd({});
  TempDir dir;
  const std::string img = dir / "big.img", out = dir / "out.raw", log = dir / "convert.log";
  write_pattern_file(img, 128u << 20, 10);
  json o = keyed_options(sshd, img);
  o["x-reconnect-delay"] = 3;
  const auto start = std::chrono::steady_clock::now();
  Process convert = convert_and_kill(sshd, {"convert", "-O", "raw", json_name(o), out}, out, log);
  const int code = convert.wait(60s);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_NE(code, 0);
  EXPECT_LT(code, 124) << read_file(log);
  EXPECT_LT(took, 20s);
  const std::string text = read_file(log);
  const auto last = text.rfind("netblk: ", text.size() - 2);
  ASSERT_NE(last, std::string::npos) << text;
  const std::string line = text.substr(last);
  EXPECT_NE(line.find("not re-established within 3 s"), std::string::npos) << text;
  EXPECT_NE(line.find("Connection refused"), std::string::npos) << text;
}
