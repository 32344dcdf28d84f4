// netblk's NBD client against real servers on loopback: qemu-nbd (TCP and unix), nbdkit
// (file and memory plugins, delay/error/rate filters) and nbd-server (simple replies only).
// Every QEMU name form, bytes checked against the served file, writes through convert -n,
// faults that must end in an error (never a hang), and a server restarted in the middle
// of a convert.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "drive_checks.hpp"
#include "nbd_server.hpp"
#include "nbdkit.hpp"
#include "qemu_nbd.hpp"
#include "netblk_serve.hpp"
#include "servers.hpp"

using namespace netblk::test;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

// A sparse image: pattern data, holes, an allocated all-zero range and an odd tail.
void make_mixed(const std::string& path, std::uint64_t size) {
  ASSERT_EQ(run({"truncate", "-s", std::to_string(size), path}).exit_code, 0);
  std::mt19937_64 rng(42);
  std::string block(1 << 20, '\0');
  FILE* f = std::fopen(path.c_str(), "r+b");
  ASSERT_TRUE(f);
  for (std::uint64_t off = 0; off + block.size() <= size; off += 3 * block.size()) {
    for (auto& c : block) c = static_cast<char>(rng());
    std::fseek(f, static_cast<long>(off), SEEK_SET);
    std::fwrite(block.data(), 1, block.size(), f);
  }
  std::string zeros(1 << 20, '\0');
  std::fseek(f, static_cast<long>(size / 2), SEEK_SET);
  std::fwrite(zeros.data(), 1, zeros.size(), f);
  std::fseek(f, static_cast<long>(size - 777), SEEK_SET);
  std::fwrite(block.data(), 1, 777, f);
  std::fclose(f);
  chmod(path.c_str(), 0644);
}

RunResult run_nb(const std::vector<std::string>& args, std::chrono::seconds timeout) {
  return netblk::test::netblk(args, timeout);
}

std::string port_text(std::uint16_t p) { return std::to_string(p); }

void expect_error(const RunResult& r, const std::string& must_contain) {
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_LT(r.exit_code, 124) << "crashed or timed out: " << r.err;
  EXPECT_NE(r.err.find(must_contain), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << r.err;
}

// `netblk convert` of the drive to a raw file equals `expected`, and compare agrees.
void expect_same_bytes(const TempDir& dir, const std::vector<std::string>& source, const std::string& expected) {
  const std::string out = dir / "copy.raw";
  std::filesystem::remove(out);
  std::vector<std::string> args{"convert", "-O", "raw"};
  args.insert(args.end(), source.begin(), source.end());
  args.push_back(out);
  RunResult r = run_nb(args, 120s);
  expect_ok(r, "convert " + source.back());
  EXPECT_EQ(file_hash(out), file_hash(expected)) << "bytes differ for " << source.back();
  std::vector<std::string> cmp{"compare"};
  cmp.insert(cmp.end(), source.begin(), source.end());
  // With --image-opts both names are option lists (as in qemu-img compare).
  const bool opts = std::find(source.begin(), source.end(), "--image-opts") != source.end();
  cmp.push_back(opts ? "driver=raw,file.driver=file,file.filename=" + expected : expected);
  expect_ok(run_nb(cmp, 60s), "compare " + source.back());
}

json info_json(const std::vector<std::string>& source) {
  std::vector<std::string> args{"info", "--output=json"};
  args.insert(args.end(), source.begin(), source.end());
  RunResult r = run_nb(args, 60s);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  try {
    return json::parse(r.out);
  } catch (...) {
    ADD_FAILURE() << "not json: " << r.out;
    return json::object();
  }
}

// Data/zero runs of a `map --output=json` answer, adjacent equal runs merged.
std::vector<std::tuple<std::uint64_t, std::uint64_t, bool, bool>> runs_of(const std::string& text) {
  std::vector<std::tuple<std::uint64_t, std::uint64_t, bool, bool>> runs;
  json j = json::parse(text);
  for (const auto& e : j) {
    std::uint64_t start = e["start"], length = e["length"];
    bool data = e["data"], zero = e["zero"];
    if (!runs.empty()) {
      auto& [s, l, d, z] = runs.back();
      if (s + l == start && d == data && z == zero) {
        l += length;
        continue;
      }
    }
    runs.emplace_back(start, length, data, zero);
  }
  return runs;
}

}  // namespace

TEST(NbdClient, QemuNbdTcpEveryNameForm) {
  TempDir dir;
  const std::string img = dir / "disk.raw";
  make_mixed(img, 24 << 20);
  QemuNbd server({.file = img});
  const std::string p = port_text(server.port());
  const std::string url = "nbd://127.0.0.1:" + p + "/disk";
  std::vector<std::vector<std::string>> forms = {
      {url},
      {"nbd+tcp://127.0.0.1:" + p + "/disk"},
      {"nbd:127.0.0.1:" + p + ":exportname=disk"},
      {"-f", "raw", url},
      {"json:{\"driver\":\"nbd\",\"server\":{\"type\":\"inet\",\"host\":\"127.0.0.1\",\"port\":\"" + p +
       "\"},\"export\":\"disk\"}"},
      {"json:{\"driver\":\"nbd\",\"host\":\"127.0.0.1\",\"port\":" + p + ",\"export\":\"disk\"}"},
      {"json:{\"driver\":\"raw\",\"file\":{\"driver\":\"nbd\",\"server.type\":\"inet\",\"server.host\":\"127.0.0.1\","
       "\"server.port\":\"" + p + "\",\"export\":\"disk\"}}"},
      {"--image-opts", "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=" + p + ",export=disk"},
      {"--image-opts", "driver=raw,file.driver=nbd,file.host=127.0.0.1,file.port=" + p + ",file.export=disk"},
  };
  for (const auto& f : forms) {
    SCOPED_TRACE(f.back());
    json info = info_json(f);
    EXPECT_EQ(info["virtual-size"], 24 << 20);
    expect_same_bytes(dir, f, img);
  }
  // The node names itself as QEMU does.
  json info = info_json({"nbd:127.0.0.1:" + p + ":exportname=disk"});
  EXPECT_EQ(info["filename"], url);
  RunResult q = run({"qemu-img", "info", "--output=json", url});
  EXPECT_EQ(json::parse(q.out)["filename"], info["filename"]);
}

TEST(NbdClient, QemuNbdUnixEveryNameForm) {
  TempDir dir;
  const std::string img = dir / "disk.raw";
  make_mixed(img, 8 << 20);
  const std::string sock = dir / "nbd.sock";
  QemuNbd server({.file = img, .socket = sock});
  const std::string url = "nbd+unix:///disk?socket=" + sock;
  std::vector<std::vector<std::string>> forms = {
      {url},
      {"nbd:unix:" + sock + ":exportname=disk"},
      {"json:{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\",\"path\":\"" + sock + "\"},\"export\":\"disk\"}"},
      {"--image-opts", "driver=nbd,path=" + sock + ",export=disk"},
      {"--image-opts", "driver=nbd,server.type=unix,server.path=" + sock + ",export=disk"},
  };
  for (const auto& f : forms) {
    SCOPED_TRACE(f.back());
    expect_same_bytes(dir, f, img);
  }
  EXPECT_EQ(info_json({"nbd:unix:" + sock + ":exportname=disk"})["filename"], url);
}

TEST(NbdClient, MapAgreesWithQemuImg) {
  TempDir dir;
  const std::string img = dir / "disk.raw";
  make_mixed(img, 16 << 20);
  QemuNbd server({.file = img, .read_only = true});
  const std::string url = server.url();
  RunResult ours = run_nb({"map", "--output=json", url}, 60s);
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  RunResult theirs = run({"qemu-img", "map", "--output=json", url}, 60s);
  ASSERT_EQ(theirs.exit_code, 0) << theirs.err;
  auto a = runs_of(ours.out), b = runs_of(theirs.out);
  EXPECT_EQ(a, b) << "netblk:\n" << ours.out << "\nqemu-img:\n" << theirs.out;
  EXPECT_GT(a.size(), 4u);  // holes and data were both seen
}

TEST(NbdClient, WritesThroughConvertToQemuNbd) {
  TempDir dir;
  const std::string src = dir / "src.raw";
  make_mixed(src, 12 << 20);
  const std::string target = dir / "target.raw";
  write_pattern_file(target, 12 << 20, 7);  // old bytes that must all be replaced
  QemuNbd server({.file = target, .export_name = "t"});
  const std::string url = server.url();
  expect_ok(run_nb({"convert", "-n", "-O", "raw", src, url}, 120s), "convert -n");
  EXPECT_EQ(file_hash(target), file_hash(src));
  // A writable export without multi-conn: one connection.
  RunResult r = run({netblk_binary(), "info", url}, 30s, {"NETBLK_LOG=debug"});
  EXPECT_NE(r.err.find("1 connection(s)"), std::string::npos) << r.err;
  // Read-only exports refuse writes with EPERM.
  QemuNbd ro({.file = target, .export_name = "t", .read_only = true});
  expect_error(run_nb({"convert", "-n", "-O", "raw", src, ro.url()}, 60s),
               "read-only");
}

TEST(NbdClient, NbdkitFileTcpAndUnixWithMultiConn) {
  TempDir dir;
  const std::string img = dir / "disk.raw";
  make_mixed(img, 32 << 20);
  Nbdkit tcp({.args = {"file", img}});
  const std::uint16_t port = tcp.port();
  const std::string url = tcp.url();
  expect_same_bytes(dir, {url}, img);
  // Several connections (asked for: the default depends on the CPUs), spread reads.
  const std::string four = "driver=nbd,host=127.0.0.1,port=" + port_text(port) + ",x-connections=4";
  expect_same_bytes(dir, {"--image-opts", four}, img);
  RunResult r = run({netblk_binary(), "info", "--image-opts", four}, 30s, {"NETBLK_LOG=debug"});
  EXPECT_NE(r.err.find("4 connection(s)"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("structured true"), std::string::npos) << r.err;
  const std::string sock = dir / "kit.sock";
  Nbdkit unix_server({.args = {"file", img}, .socket = sock});
  expect_same_bytes(dir, {"nbd+unix://?socket=" + sock}, img);
  expect_same_bytes(dir, {"nbd+unix:///anyname?socket=" + sock}, img);
  // Map from nbdkit's extents agrees with the file's own map.
  RunResult ours = run_nb({"map", "--output=json", url}, 60s);
  RunResult local = run_nb({"map", "--output=json", img}, 60s);
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  ASSERT_EQ(local.exit_code, 0) << local.err;
  EXPECT_EQ(runs_of(ours.out), runs_of(local.out));
}

// Bytes of `path` that hold storage.
std::uint64_t allocated_bytes(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
  return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

// Into a raw file in tmpfs, convert has the NBD client splice each reply's payload into the
// target (Node::read_to_file); allocation there is exact. The same bytes over TCP
// and a unix socket, with structured and simple replies, from nbdkit and qemu-nbd; zero
// blocks inside data are left unallocated as qemu-img leaves them (-S 4k), and -S 0
// allocates everything.
TEST(NbdClient, ConvertSplicesIntoRawTarget) {
  TempDir dir("/dev/shm");
  const std::string img = dir / "disk.raw";
  make_mixed(img, 32 << 20);
  Nbdkit tcp({.args = {"file", img}});
  const std::string kit_sock = dir / "kit.sock", simple_sock = dir / "simple.sock", qemu_sock = dir / "qemu.sock";
  Nbdkit kit_unix({.args = {"file", img}, .socket = kit_sock});
  Nbdkit simple_unix({.args = {"--no-sr", "file", img}, .socket = simple_sock});
  QemuNbd qemu_unix({.file = img, .export_name = "e", .socket = qemu_sock});
  const std::string by_qemu_img = dir / "qemu-img.raw";
  const std::string kit_url = "nbd+unix:///?socket=" + kit_sock;
  ASSERT_EQ(run({"qemu-img", "convert", "-O", "raw", kit_url, by_qemu_img}, 120s).exit_code, 0);
  for (const std::string& url : {tcp.url(), kit_url, "nbd+unix:///?socket=" + simple_sock,
                                 "nbd+unix:///e?socket=" + qemu_sock}) {
    expect_same_bytes(dir, {url}, img);
    EXPECT_EQ(allocated_bytes(dir / "copy.raw"), allocated_bytes(by_qemu_img)) << url;
  }
  const std::string full = dir / "full.raw";
  expect_ok(run_nb({"convert", "-S", "0", "-O", "raw", kit_url, full}, 120s), "convert -S 0");
  EXPECT_EQ(file_hash(full), file_hash(img));
  EXPECT_GE(allocated_bytes(full), std::uint64_t{32} << 20);
  // A target that cannot take the data fails the copy with one line naming the target
  // (here writes past 8 MiB fail with EFBIG), as a failed write() does.
  const std::string small = dir / "small.raw";
  ASSERT_EQ(run({"truncate", "-s", "32M", small}).exit_code, 0);
  RunResult r = run({"bash", "-c",
                     "trap '' XFSZ; ulimit -f 8192; exec " + netblk_binary() + " convert -n -O raw '" + kit_url +
                         "' " + small},
                    60s);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(r.err, "netblk: " + small + ": write failed: File too large\n");
  // Over TLS payloads go through buffers (TLS records cannot be spliced): the TLS tests
  // below.
}

TEST(NbdClient, NbdkitMemoryWriteAndReadBack) {
  TempDir dir;
  const std::string src = dir / "src.raw";
  make_mixed(src, 16 << 20);
  Nbdkit server({.args = {"memory", "16M"}});
  const std::string url = server.url();
  expect_ok(run_nb({"convert", "-n", "-O", "raw", src, url}, 120s), "convert -n into memory");
  expect_same_bytes(dir, {url}, src);
}

TEST(NbdClient, NbdServerSimpleReplies) {
  TempDir dir;
  const std::string img = dir / "disk.raw";
  make_mixed(img, 8 << 20);
  NbdServer server({.file = img});
  const std::uint16_t port = server.port();
  const std::string url = server.url();
  RunResult r = run({netblk_binary(), "info", url}, 30s, {"NETBLK_LOG=debug"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("structured false"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("8 MiB"), std::string::npos) << r.out;
  expect_same_bytes(dir, {url}, img);
  expect_same_bytes(dir, {"nbd:127.0.0.1:" + port_text(port) + ":exportname=disk"}, img);
  // Writes go through too.
  const std::string src = dir / "src.raw";
  write_pattern_file(src, 8 << 20, 9);
  expect_ok(run_nb({"convert", "-n", "-O", "raw", src, url}, 120s), "convert -n to nbd-server");
  EXPECT_EQ(file_hash(img), file_hash(src));
}

TEST(NbdClient, ErrorsAreOneLineAndQuick) {
  TempDir dir;
  const std::string img = dir / "disk.raw";
  make_mixed(img, 4 << 20);
  QemuNbd server({.file = img});
  const std::string p = port_text(server.port());
  expect_error(run_nb({"info", "nbd://127.0.0.1:" + p + "/nope"}, 30s), "server refused export 'nope'");
  const std::uint16_t closed = free_port();
  expect_error(run_nb({"info", "nbd://127.0.0.1:" + port_text(closed) + "/x"}, 30s), "Failed to connect");
  expect_error(run_nb({"info", "nbd+unix:///x"}, 30s), "No valid URL specified");
  expect_error(run_nb({"info", "nbd://127.0.0.1:" + p + "/disk?socket=/x"}, 30s), "No valid URL specified");
  expect_error(run_nb({"info", "nbd+unix://127.0.0.1/disk?socket=/x"}, 30s), "No valid URL specified");
  expect_error(run_nb({"info", "--image-opts", "driver=nbd,filename=nbd://127.0.0.1:" + p + "/disk,export=y"}, 30s),
               "Option 'export' cannot be used with a file name");
  expect_error(run_nb({"info", "--image-opts", "driver=nbd,host=127.0.0.1,server.type=inet"}, 30s),
               "Cannot use 'server' and path/host/port at the same time");
  expect_error(run_nb({"info", "--image-opts", "driver=nbd,host=127.0.0.1,port=" + p + ",export=disk,queue-size=3"},
                      30s),
               "doesn't support the option 'queue-size'");
  // Nothing listening: one attempt by default, retries until open-timeout when given.
  auto t0 = std::chrono::steady_clock::now();
  expect_error(run_nb({"info", "--image-opts", "driver=nbd,host=127.0.0.1,port=" + port_text(closed) + ",open-timeout=2"},
                      30s),
               "Failed to connect");
  auto waited = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(waited, 1500ms);
  EXPECT_LT(waited, 15s);
}

TEST(NbdClient, SilentServerTimesOut) {
  // A listener that never speaks: the handshake is bounded by open-timeout.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(listen(fd, 8), 0);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  const std::string p = std::to_string(ntohs(a.sin_port));
  auto t0 = std::chrono::steady_clock::now();
  expect_error(run_nb({"info", "--image-opts", "driver=nbd,host=127.0.0.1,port=" + p + ",open-timeout=2"}, 60s),
               "timed out");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 20s);
  close(fd);
}

TEST(NbdClient, ServerErrorsFailTheCopy) {
  TempDir dir;
  const std::string img = dir / "disk.raw";
  write_pattern_file(img, 8 << 20);
  Nbdkit server({.args = {"--filter=error", "file", img, "error-pread=EIO", "error-pread-rate=100%"}});
  RunResult r = run_nb({"convert", "-O", "raw", server.url(), dir / "out.raw"}, 60s);
  expect_error(r, "read failed");
  EXPECT_NE(r.err.find("Input/output error"), std::string::npos) << r.err;
}

TEST(NbdClient, StalledServerIsDetected) {
  TempDir dir;
  const std::string img = dir / "disk.raw";
  write_pattern_file(img, 4 << 20);
  Nbdkit server({.args = {"--filter=delay", "file", img, "delay-read=30"}});
  const std::uint16_t port = server.port();
  auto t0 = std::chrono::steady_clock::now();
  RunResult r = run_nb({"convert", "-O", "raw", "--image-opts",
                        "driver=nbd,host=127.0.0.1,port=" + port_text(port) + ",x-io-timeout=1,reconnect-delay=2",
                        dir / "out.raw"},
                       60s);
  expect_error(r, "nbd://127.0.0.1:" + port_text(port));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 30s);
  // A slow but answering server is fine.
  Nbdkit slow({.args = {"--filter=delay", "file", img, "delay-read=50ms"}});
  expect_same_bytes(dir, {slow.url()}, img);
}

TEST(NbdClient, ServerRestartDuringConvertLosesNothing) {
  // Into a file on disk the data goes through buffers; into tmpfs it is spliced, and over a
  // unix socket every other read goes through a second connection on a thread of its own:
  // both connections must come back.
  struct Case {
    bool tmpfs, unix_socket;
  };
  for (const Case c : {Case{false, false}, Case{true, false}, Case{true, true}}) {
    const std::string what = std::string(c.tmpfs ? "tmpfs" : "disk") + (c.unix_socket ? ", unix socket" : ", TCP");
    auto dir = c.tmpfs ? std::make_unique<TempDir>("/dev/shm") : std::make_unique<TempDir>();
    const std::string img = *dir / "big.raw";
    write_pattern_file(img, 256 << 20, 3);
    const std::uint16_t port = free_port();
    const std::string sock = *dir / "nbd.sock";
    auto start = [&](const std::vector<std::string>& args) {
      return c.unix_socket ? std::make_unique<Nbdkit>(Nbdkit::Options{.args = args, .socket = sock})
                           : std::make_unique<Nbdkit>(Nbdkit::Options{.args = args, .port = port});
    };
    const std::string url = c.unix_socket ? "nbd+unix:///?socket=" + sock : "nbd://127.0.0.1:" + port_text(port);
    const std::string out = *dir / "out.raw";
    // Throttled so that the kill lands in the middle of the copy.
    auto server = start({"--filter=rate", "file", img, "rate=64M"});
    Process convert({netblk_binary(), "convert", "-O", "raw", url, out}, *dir / "convert.log");
    std::this_thread::sleep_for(1500ms);
    ASSERT_TRUE(convert.running()) << what << ": " << read_file(*dir / "convert.log");
    server->stop(SIGKILL);
    server.reset();
    std::filesystem::remove(sock);
    std::this_thread::sleep_for(700ms);  // down for a while: the client must wait, not fail
    auto restarted = start({"file", img});
    const int code = convert.wait(180s);
    const std::string log = read_file(*dir / "convert.log");
    ASSERT_EQ(code, 0) << what << ": " << log;
    EXPECT_NE(log.find("reconnected"), std::string::npos) << what << ": " << log;
    EXPECT_EQ(file_hash(out), file_hash(img)) << what;
  }
}

// The server killed for good during a copy: with reconnect-delay=2 the copy gives up in
// bounded time with one error line (after the warning that it was reconnecting).
TEST(NbdClient, ServerGoneForGoodFailsInBoundedTime) {
  TempDir dir;
  const std::string img = dir / "big.raw";
  write_pattern_file(img, 64 << 20, 4);
  Nbdkit server({.args = {"--filter=rate", "file", img, "rate=16M"}});
  const auto start = std::chrono::steady_clock::now();
  Process convert({netblk_binary(), "convert", "-O", "raw", "--image-opts",
                   "driver=nbd,host=127.0.0.1,port=" + port_text(server.port()) + ",reconnect-delay=2",
                   dir / "out.raw"},
                  dir / "convert.log");
  std::this_thread::sleep_for(1s);
  ASSERT_TRUE(convert.running()) << read_file(dir / "convert.log");
  server.stop(SIGKILL);
  const int code = convert.wait(60s);
  const std::string log = read_file(dir / "convert.log");
  EXPECT_NE(code, 0) << log;
  EXPECT_LT(code, 124) << log;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);
  const auto last = log.substr(log.rfind('\n', log.size() - 2) + 1);
  EXPECT_TRUE(last.starts_with("netblk: nbd://127.0.0.1:")) << log;
  EXPECT_NE(last.find("the connection to the server was lost"), std::string::npos) << log;
}

TEST(NbdClient, NetblkServeWithExtendedHeaders) {
  // qemu-nbd 7.2 and nbdkit 1.32 predate extended headers; netblk's own server has them.
  TempDir dir;
  const std::string img = dir / "disk.raw";
  make_mixed(img, 16 << 20);
  NetblkServe server({.args = {"-t", "-f", "raw", img}});
  const std::string url = server.url();
  RunResult r = run({netblk_binary(), "info", url}, 30s, {"NETBLK_LOG=debug"});
  EXPECT_NE(r.err.find("extended true"), std::string::npos) << r.err;
  expect_same_bytes(dir, {url}, img);
  RunResult ours = run_nb({"map", "--output=json", url}, 60s);
  RunResult local = run_nb({"map", "--output=json", img}, 60s);
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  EXPECT_EQ(runs_of(ours.out), runs_of(local.out));
  const std::string src = dir / "src.raw";
  write_pattern_file(src, 16 << 20, 5);
  expect_ok(run_nb({"convert", "-n", "-O", "raw", src, url}, 120s), "convert -n to netblk serve");
  expect_same_bytes(dir, {url}, src);
}

TEST(NbdClient, TlsX509WithQemuNbd) {
  TempDir dir;
  const std::string img = dir / "disk.raw";
  make_mixed(img, 8 << 20);
  const std::string sdir = dir / "server", cdir = dir / "client";
  make_tls_certs(dir, sdir, cdir, "a");
  QemuNbd server({.file = img,
                  .extra = {"--object", "tls-creds-x509,id=tls0,endpoint=server,dir=" + sdir, "--tls-creds", "tls0"}});
  const std::string p = port_text(server.port());
  const std::string creds = "tls-creds-x509,id=tls0,endpoint=client,dir=" + cdir;
  expect_same_bytes(dir, {"--object", creds, "--image-opts",
                          "driver=nbd,host=127.0.0.1,port=" + p + ",export=disk,tls-creds=tls0"},
                    img);
  expect_same_bytes(dir, {"--object", creds, "json:{\"driver\":\"nbd\",\"server\":{\"type\":\"inet\",\"host\":\"127.0.0.1\","
                          "\"port\":\"" + p + "\"},\"export\":\"disk\",\"tls-creds\":\"tls0\"}"},
                    img);
  // The canonical name keeps tls-creds (by id), so it is json:, not a URL.
  json info = info_json({"--object", creds, "--image-opts",
                         "driver=nbd,host=127.0.0.1,port=" + p + ",export=disk,tls-creds=tls0"});
  EXPECT_NE(info["filename"].get<std::string>().find("\"tls-creds\":\"tls0\""), std::string::npos) << info.dump();
  // Without TLS the server says no; with another CA or the wrong host name, we say no.
  expect_error(run_nb({"info", "nbd://127.0.0.1:" + p + "/disk"}, 30s), "TLS");
  const std::string other_s = dir / "other-server", other_c = dir / "other-client";
  make_tls_certs(dir, other_s, other_c, "b");
  expect_error(run_nb({"info", "--object", "tls-creds-x509,id=tls0,endpoint=client,dir=" + other_c, "--image-opts",
                       "driver=nbd,host=127.0.0.1,port=" + p + ",export=disk,tls-creds=tls0"},
                      30s),
               "TLS handshake failed");
  expect_error(run_nb({"info", "--object", creds, "--image-opts",
                       "driver=nbd,host=127.0.0.1,port=" + p + ",export=disk,tls-creds=tls0,tls-hostname=wrong.example"},
                      30s),
               "TLS handshake failed");
  expect_error(run_nb({"info", "--image-opts", "driver=nbd,host=127.0.0.1,port=" + p + ",export=disk,tls-creds=nope"},
                      30s),
               "No TLS credentials with id 'nope'");
}

TEST(NbdClient, TlsPskOverUnixWithQemuNbd) {
  TempDir dir;
  const std::string img = dir / "disk.raw";
  make_mixed(img, 8 << 20);
  const std::string kdir = dir / "psk";
  std::filesystem::create_directories(kdir);
  write_file(kdir + "/keys.psk", "qemu:9a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9\n");
  const std::string sock = dir / "tls.sock";
  QemuNbd server({.file = img,
                  .socket = sock,
                  .extra = {"--object", "tls-creds-psk,id=tls0,endpoint=server,dir=" + kdir, "--tls-creds", "tls0"}});
  expect_same_bytes(dir, {"--object", "tls-creds-psk,id=tls0,endpoint=client,dir=" + kdir + ",username=qemu",
                          "--image-opts", "driver=nbd,path=" + sock + ",export=disk,tls-creds=tls0"},
                    img);
}

namespace {

constexpr std::uint64_t kCheckedSize = (10u << 20) + 1536;  // whole sectors, not a power of two

// The servers the drive checks read and write, by the label of their case: qemu-nbd and
// nbdkit over TCP and unix sockets, each on an image of its own (writes land in it and are
// undone), and a read-only qemu-nbd. One set for the whole binary.
struct Served {
  Served() {
    for (const char* label : {"qemu_nbd_tcp", "qemu_nbd_unix", "qemu_nbd_read_only", "nbdkit_tcp", "nbdkit_unix"})
      make_mixed(image(label), kCheckedSize);
    servers["qemu_nbd_tcp"] = std::make_unique<QemuNbd>(QemuNbd::Options{.file = image("qemu_nbd_tcp")});
    servers["qemu_nbd_unix"] =
        std::make_unique<QemuNbd>(QemuNbd::Options{.file = image("qemu_nbd_unix"), .socket = dir / "qemu.sock"});
    servers["qemu_nbd_read_only"] =
        std::make_unique<QemuNbd>(QemuNbd::Options{.file = image("qemu_nbd_read_only"), .read_only = true});
    servers["nbdkit_tcp"] = std::make_unique<Nbdkit>(Nbdkit::Options{.args = {"file", image("nbdkit_tcp")}});
    servers["nbdkit_unix"] =
        std::make_unique<Nbdkit>(Nbdkit::Options{.args = {"file", image("nbdkit_unix")}, .socket = dir / "kit.sock"});
  }
  std::string image(const std::string& label) const { return dir / (label + ".raw"); }

  TempDir dir;
  std::map<std::string, std::unique_ptr<NbdDaemon>> servers;
};

// Names no server answers as asked: over TCP, or over a unix socket.
std::vector<std::string> bad_nbd_names(const NbdDaemon& server) {
  if (!server.socket().empty()) {
    const std::string sock = server.socket();
    return {"nbd+unix:///disk", "nbd+unix:///disk?socket=" + sock + ".missing",
            "nbd+unix:///disk?socket=" + sock + "&socket=" + sock,
            "json:{\"driver\":\"nbd\",\"server\":{\"type\":\"unix\"},\"export\":\"disk\"}"};
  }
  const std::string p = port_text(server.port());
  return {"nbd://127.0.0.1:" + port_text(free_port()) + "/disk",
          "nbd://127.0.0.1:" + p + "/disk?socket=/x",
          "nbd+unix://127.0.0.1/disk?socket=/x",
          "nbd:127.0.0.1:" + p + ":exportname",
          "json:{\"driver\":\"nbd\",\"server\":{\"type\":\"inet\",\"host\":\"127.0.0.1\"},\"export\":\"disk\"}",
          "json:{\"driver\":\"nbd\",\"host\":\"127.0.0.1\",\"port\":" + p + ",\"queue-size\":3}"};
}

// The drive checks on Served's server `label`. qemu-nbd serves named exports only: an
// unknown one is a bad name too.
DriveCheckParam nbd_case(const std::string& label, bool writable, bool named_exports) {
  return {label, [=] {
            auto& s = shared<Served>();
            const NbdDaemon& server = *s.servers.at(label);
            auto bad = bad_nbd_names(server);
            if (named_exports)
              bad.push_back(server.socket().empty() ? "nbd://127.0.0.1:" + port_text(server.port()) + "/nope"
                                                    : "nbd+unix:///nope?socket=" + server.socket());
            return DriveCase{.name = server.url(), .source = s.image(label), .writable = writable, .bad_names = bad};
          }};
}

}  // namespace

NETBLK_DRIVE_CHECKS(NbdClient, nbd_case("qemu_nbd_tcp", true, true), nbd_case("qemu_nbd_unix", true, true),
                    nbd_case("qemu_nbd_read_only", false, true), nbd_case("nbdkit_tcp", true, false),
                    nbd_case("nbdkit_unix", true, false));
