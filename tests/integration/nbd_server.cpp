// `netblk serve` used by real NBD clients on loopback: nbdinfo, nbdcopy, qemu-img, fio's nbd
// engine and nbdkit's nbd plugin; plus a raw-socket hostile client.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <set>
#include <random>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "nbd/protocol.hpp"
#include "netblk/error.hpp"
#include "nbdkit.hpp"
#include "netblk_serve.hpp"
#include "servers.hpp"

using namespace netblk;
using namespace netblk::test;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kImageSize = 64ull << 20;

void require(const std::string& program) {
  ASSERT_TRUE(have_program(program)) << program << " is not installed (scripts/install-deps.sh installs it)";
}

// A sparse image: 64 MiB, pattern data in [1 MiB, 3 MiB) and [40 MiB, 41 MiB), holes elsewhere.
void make_image(const std::string& path) {
  std::string tmp = path + ".pattern";
  write_pattern_file(tmp, 3ull << 20, 7);
  std::string pattern = read_file(tmp);
  ::unlink(tmp.c_str());
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.seekp(1 << 20);
  f.write(pattern.data(), 2 << 20);
  f.seekp(40 << 20);
  f.write(pattern.data() + (2 << 20), 1 << 20);
  f.close();
  ASSERT_EQ(::truncate(path.c_str(), kImageSize), 0);
}

// ---- a raw client for hostile tests ---------------------------------------------------

class RawClient {
 public:
  explicit RawClient(const std::string& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) throw Error(errno, "connect " + path);
  }
  ~RawClient() { ::close(fd_); }

  void send(std::span<const std::byte> b) {
    std::size_t done = 0;
    while (done < b.size()) {
      ssize_t n = ::send(fd_, b.data() + done, b.size() - done, MSG_NOSIGNAL);
      if (n <= 0) throw Error(errno ? errno : EPIPE, "send");
      done += static_cast<std::size_t>(n);
    }
  }
  // Sends without blocking: 1 sent, 0 would block, -1 partial or failed.
  int try_send(std::span<const std::byte> b) {
    ssize_t n = ::send(fd_, b.data(), b.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n == static_cast<ssize_t>(b.size())) return 1;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
    return -1;
  }
  // False on EOF, error or timeout.
  bool recv(std::span<std::byte> b, std::chrono::milliseconds timeout = 10s) {
    std::size_t done = 0;
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (done < b.size()) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
      ssize_t n = ::recv(fd_, b.data() + done, b.size() - done, 0);
      if (n <= 0) return false;
      done += static_cast<std::size_t>(n);
    }
    return true;
  }
  // True when the server closed the connection (within `timeout`).
  bool closed_by_peer(std::chrono::milliseconds timeout = 10s) {
    std::array<std::byte, 4096> sink;
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      ssize_t n = ::recv(fd_, sink.data(), sink.size(), 0);
      if (n <= 0) return true;
    }
    return false;
  }

  // Reads the greeting and answers with fixed newstyle + no zeroes: options may follow.
  void greet() {
    std::array<std::byte, nbd::kServerGreetingSize> g;
    ASSERT_TRUE(recv(g));
    nbd::decode_server_greeting(g);
    std::array<std::byte, 4> flags;
    nbd::encode_client_flags(flags, nbd::kClientFlagFixedNewstyle | nbd::kClientFlagNoZeroes);
    send(flags);
  }

  // Fixed newstyle handshake with NBD_OPT_GO; returns the export size.
  std::uint64_t handshake(const std::string& name, bool structured = false) {
    greet();
    if (structured) {
      send(nbd::encode_option(nbd::kOptStructuredReply));
      EXPECT_EQ(read_option_reply().type, nbd::kRepAck);
    }
    send(nbd::encode_option(nbd::kOptGo, nbd::encode_info_request({name, {}})));
    std::uint64_t size = 0;
    while (true) {
      std::vector<std::byte> payload;
      auto h = read_option_reply(&payload);
      if (h.type == nbd::kRepInfo) {
        auto info = nbd::decode_rep_info(payload);
        if (info.type == nbd::kInfoExport) size = info.export_size;
        continue;
      }
      EXPECT_EQ(h.type, nbd::kRepAck) << nbd::rep_name(h.type);
      break;
    }
    return size;
  }
  nbd::OptionReplyHeader read_option_reply(std::vector<std::byte>* payload = nullptr) {
    std::array<std::byte, nbd::kOptionReplyHeaderSize> h;
    if (!recv(h)) throw Error(EIO, "no option reply");
    auto header = nbd::decode_option_reply_header(h);
    std::vector<std::byte> p(header.length);
    if (!recv(p)) throw Error(EIO, "no option reply payload");
    if (payload) *payload = std::move(p);
    return header;
  }
  void request(std::uint16_t type, std::uint64_t offset, std::uint64_t length, std::uint64_t cookie,
               std::uint16_t flags = 0) {
    std::array<std::byte, nbd::kRequestSize> b;
    nbd::encode_request(b, nbd::Request{flags, type, cookie, offset, length}, false);
    send(b);
  }
  // Reads one simple reply without data, whichever request it answers: its cookie goes to
  // `cookie`; returns its NBD error (or -1 when none came).
  long any_reply(std::uint64_t& cookie) {
    std::array<std::byte, nbd::kSimpleReplySize> b;
    if (!recv(b)) return -1;
    auto h = nbd::decode_reply_header(b);
    cookie = h.cookie;
    return h.error;
  }
  // Reads one simple reply; returns its NBD error (or -1 when none came).
  long simple_reply(std::uint64_t expected_cookie, std::size_t data_bytes = 0) {
    std::array<std::byte, nbd::kSimpleReplySize> b;
    if (!recv(b)) return -1;
    auto h = nbd::decode_reply_header(b);
    EXPECT_EQ(h.cookie, expected_cookie);
    if (h.error == 0 && data_bytes) {
      std::vector<std::byte> data(data_bytes);
      if (!recv(data)) return -1;
    }
    return h.error;
  }

 private:
  int fd_ = -1;
};

// A field of /proc/PID/status in KiB (VmRSS; RssAnon: memory not backed by a file).
long status_kib(int pid, const std::string& field = "VmRSS") {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(field + ":", 0) == 0) return std::stol(line.substr(field.size() + 1));
  return -1;
}
long rss_kib(int pid) { return status_kib(pid); }

}  // namespace

TEST(NbdServer, NbdinfoJsonMapAndList) {
  require("nbdinfo");
  TempDir dir;
  make_image(dir / "disk.raw");
  NetblkServe s({.args = {"-t", "-e", "0", "-f", "raw", "-D", "test disk", dir / "disk.raw"}, .unix_socket = true});

  auto info = run({"nbdinfo", "--json", s.url()}, 30s);
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_NE(info.out.find("\"export-size\": 67108864"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("\"description\": \"test disk\""), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("\"structured\": true"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("\"base:allocation\""), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("\"is_read_only\": false"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("\"can_multi_conn\": true"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("\"block_size_maximum\": 33554432"), std::string::npos) << info.out;

  auto map = run({"nbdinfo", "--map", s.url()}, 30s);
  ASSERT_EQ(map.exit_code, 0) << map.err;
  // Holes and data exactly where the file has them.
  EXPECT_NE(map.out.find("         0     1048576    3  hole,zero"), std::string::npos) << map.out;
  EXPECT_NE(map.out.find("   1048576     2097152    0  data"), std::string::npos) << map.out;
  EXPECT_NE(map.out.find("  41943040     1048576    0  data"), std::string::npos) << map.out;

  auto list = run({"nbdinfo", "--list", "nbd+unix:///?socket=" + s.socket()}, 30s);
  ASSERT_EQ(list.exit_code, 0) << list.err;
  EXPECT_NE(list.out.find("export=\"disk\""), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("description: test disk"), std::string::npos) << list.out;

  // An unknown export name is refused, and the server keeps serving.
  auto wrong = run({"nbdinfo", "nbd+unix:///nope?socket=" + s.socket()}, 30s);
  EXPECT_NE(wrong.exit_code, 0);
  EXPECT_EQ(run({"nbdinfo", "--size", s.url()}, 30s).out, "67108864\n");

  // SIGTERM: clean exit 0.
  int status = s.stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

TEST(NbdServer, QemuImgOverTcpAndUnix) {
  require("qemu-img");
  TempDir dir;
  make_image(dir / "disk.raw");
  for (bool unix_socket : {false, true}) {
    SCOPED_TRACE(unix_socket ? "unix" : "tcp");
    NetblkServe s({.args = {"-t", "-e", "0", "-f", "raw", "-r", dir / "disk.raw"}, .unix_socket = unix_socket});
    auto info = run({"qemu-img", "info", "--output=json", s.url()}, 60s);
    ASSERT_EQ(info.exit_code, 0) << info.err;
    EXPECT_NE(info.out.find("\"virtual-size\": 67108864"), std::string::npos) << info.out;
    std::string out = dir / "copy.raw";
    auto convert = run({"qemu-img", "convert", "-m", "1", "-f", "raw", "-O", "raw", s.url(), out}, 120s);
    ASSERT_EQ(convert.exit_code, 0) << convert.err;
    EXPECT_EQ(file_hash(out), file_hash(dir / "disk.raw"));
    auto compare = run({"qemu-img", "compare", "-f", "raw", "-F", "raw", dir / "disk.raw", s.url()}, 120s);
    EXPECT_EQ(compare.exit_code, 0) << compare.out << compare.err;
    ::unlink(out.c_str());
    int status = s.stop(SIGTERM);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  }
}

TEST(NbdServer, ExitsAfterLastClientWithoutPersistent) {
  require("qemu-img");
  TempDir dir;
  make_image(dir / "disk.raw");
  NetblkServe s({.args = {"-f", "raw", dir / "disk.raw"}});
  auto info = run({"qemu-img", "info", s.url()}, 60s);
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(s.process().wait(15s), 0) << "qemu-nbd exits once its only client has gone; so must we";
  // (The readiness probe, which connected and sent nothing, did not end the server.)
}

TEST(NbdServer, NbdcopyBothDirections) {
  require("nbdcopy");
  TempDir dir;
  make_image(dir / "disk.raw");
  NetblkServe s({.args = {"-t", "-e", "0", "-f", "raw", dir / "disk.raw"}});
  // Export -> file.
  auto out = run({"nbdcopy", s.url(), dir / "out.raw"}, 120s);
  ASSERT_EQ(out.exit_code, 0) << out.err;
  EXPECT_EQ(file_hash(dir / "out.raw"), file_hash(dir / "disk.raw"));
  s.stop();

  // File -> export (an empty image of the same size), over a unix socket.
  write_pattern_file(dir / "src.raw", kImageSize, 99);
  ASSERT_EQ(run({"truncate", "-s", std::to_string(kImageSize), dir / "empty.raw"}).exit_code, 0);
  NetblkServe t({.args = {"-t", "-e", "0", "-f", "raw", dir / "empty.raw"}, .unix_socket = true});
  auto in = run({"nbdcopy", dir / "src.raw", t.url()}, 120s);
  ASSERT_EQ(in.exit_code, 0) << in.err;
  int status = t.stop(SIGTERM);  // flushes and closes the image
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(file_hash(dir / "empty.raw"), file_hash(dir / "src.raw"));
}

TEST(NbdServer, FioVerify) {
  require("fio");
  TempDir dir;
  ASSERT_EQ(run({"truncate", "-s", "32M", dir / "fio.raw"}).exit_code, 0);
  for (bool unix_socket : {false, true}) {
    SCOPED_TRACE(unix_socket ? "unix" : "tcp");
    NetblkServe s({.args = {"-t", "-e", "0", "-f", "raw", dir / "fio.raw"}, .unix_socket = unix_socket});
    auto r = run({"fio", "--name=verify", "--ioengine=nbd", "--uri=" + s.url(), "--rw=randwrite", "--bs=4k",
                  "--iodepth=16", "--size=32M", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
                  "--verify_state_save=0"},
                 180s);
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    EXPECT_EQ(r.err.find("verify:"), std::string::npos) << r.err;
    s.stop();
  }
}

// An image on tmpfs: the server sends reads from a mapping of the file and, over a unix
// socket, copies writes into it. Reads must not allocate the image's holes, and a write the
// mapping cannot take (the file was truncated by someone else: SIGBUS) still succeeds.
TEST(NbdServer, ImageOnTmpfs) {
  require("fio");
  require("nbdcopy");
  require("qemu-io");
  TempDir dir("/dev/shm");
  const std::string image = dir / "disk.raw";
  make_image(image);
  auto allocated = [&] {
    struct stat st {};
    EXPECT_EQ(::stat(image.c_str(), &st), 0);
    return static_cast<std::int64_t>(st.st_blocks) * 512;
  };
  const std::int64_t allocated_before = allocated();
  for (bool unix_socket : {false, true}) {
    SCOPED_TRACE(unix_socket ? "unix" : "tcp");
    NetblkServe s({.args = {"-t", "-e", "0", "-f", "raw", image}, .unix_socket = unix_socket});
    auto copy = run({"nbdcopy", s.url(), dir / "copy.raw"}, 120s);
    ASSERT_EQ(copy.exit_code, 0) << copy.err;
    EXPECT_EQ(file_hash(dir / "copy.raw"), file_hash(image));
    ::unlink((dir / "copy.raw").c_str());
    EXPECT_EQ(allocated(), allocated_before) << "reading the export allocated its holes";
    s.stop();
  }

  // Random writes with verification, into the holes and the data.
  for (bool unix_socket : {false, true}) {
    SCOPED_TRACE(unix_socket ? "unix" : "tcp");
    NetblkServe s({.args = {"-t", "-e", "0", "-f", "raw", image}, .unix_socket = unix_socket});
    auto r = run({"fio", "--name=verify", "--ioengine=nbd", "--uri=" + s.url(), "--rw=randwrite", "--bs=4k",
                  "--iodepth=16", "--size=64M", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
                  "--verify_state_save=0"},
                 180s);
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    s.stop();
  }

  // Format probed as raw: a write that would make the first sector probe as qcow2 is
  // refused on the in-place path too.
  {
    NetblkServe p({.args = {"-t", "-e", "0", image}, .unix_socket = true});
    std::string header(4096, '\0');
    header.replace(0, 4, "QFI\xfb");
    const std::string head = dir / "head.bin";
    write_file(head, header);
    auto w = run({"qemu-io", "-f", "raw", "-t", "writeback", "-c", "write -s " + head + " 0 4k", p.url()}, 60s);
    EXPECT_NE(w.out.find("Operation not permitted"), std::string::npos) << w.out << w.err;
    EXPECT_NE(read_file(image).substr(0, 4), "QFI\xfb");
    p.stop();
  }

  // The file shrinks under the server; writes past the new end still land (as pwrite
  // would put them) and the server keeps serving.
  NetblkServe s({.args = {"-t", "-e", "0", "-f", "raw", image}, .unix_socket = true});
  ASSERT_EQ(::truncate(image.c_str(), 1 << 20), 0);
  // (4k without FUA: the payload arrives with its header, so the server tries the mapping.)
  auto w = run({"qemu-io", "-f", "raw", "-t", "writeback", "-c", "write -P 0x5a 8M 4k", "-c",
                "write -P 0x5a 8196k 60k", "-c", "read -P 0x5a 8M 64k", s.url()},
               60s);
  EXPECT_EQ(w.exit_code, 0) << w.out << w.err;
  EXPECT_EQ(w.out.find("error"), std::string::npos) << w.out;
  EXPECT_EQ(w.out.find("Pattern verification failed"), std::string::npos) << w.out;
  EXPECT_TRUE(s.process().running());
  std::string bytes = read_file(image);
  ASSERT_GE(bytes.size(), (8u << 20) + (64u << 10));
  EXPECT_EQ(bytes.substr(8u << 20, 64u << 10), std::string(64u << 10, '\x5a'));
  s.stop();
}

TEST(NbdServer, ThroughNbdkitNbdPlugin) {
  require("nbdkit");
  require("nbdcopy");
  TempDir dir;
  make_image(dir / "disk.raw");
  NetblkServe s({.args = {"-t", "-e", "0", "-f", "raw", "-r", dir / "disk.raw"}, .export_name = "x"});
  std::string sock = dir / "kit.sock";
  Nbdkit kit({.args = {"nbd", "uri=" + s.url()}, .socket = sock, .log = dir / "nbdkit.log"});
  std::string uri = "nbd+unix:///?socket=" + sock;
  auto size = run({"nbdinfo", "--size", uri}, 30s);
  EXPECT_EQ(size.out, "67108864\n") << size.err;
  auto copy = run({"nbdcopy", uri, dir / "out.raw"}, 120s);
  ASSERT_EQ(copy.exit_code, 0) << copy.err;
  EXPECT_EQ(file_hash(dir / "out.raw"), file_hash(dir / "disk.raw"));
  kit.stop();
}

TEST(NbdServer, ReadOnlyExportRejectsWrites) {
  require("nbdinfo");
  TempDir dir;
  make_image(dir / "disk.raw");
  std::uint64_t before = file_hash(dir / "disk.raw");
  NetblkServe s({.args = {"-t", "-e", "0", "-f", "raw", "-r", dir / "disk.raw"}, .unix_socket = true});
  auto info = run({"nbdinfo", "--json", s.url()}, 30s);
  EXPECT_NE(info.out.find("\"is_read_only\": true"), std::string::npos) << info.out;

  RawClient c(s.socket());
  ASSERT_EQ(c.handshake("disk"), kImageSize);
  std::vector<std::byte> data(4096, std::byte{0x55});
  c.request(nbd::kCmdWrite, 0, data.size(), 1);
  c.send(data);
  EXPECT_EQ(c.simple_reply(1), long{nbd::kEperm});
  c.request(nbd::kCmdWriteZeroes, 0, 4096, 2);
  EXPECT_EQ(c.simple_reply(2), long{nbd::kEperm});
  c.request(nbd::kCmdTrim, 0, 4096, 3);
  EXPECT_EQ(c.simple_reply(3), long{nbd::kEperm});
  // Reads still work on the same connection.
  c.request(nbd::kCmdRead, 1 << 20, 4096, 4);
  EXPECT_EQ(c.simple_reply(4, 4096), 0);
  s.stop();
  EXPECT_EQ(file_hash(dir / "disk.raw"), before);
}

TEST(NbdServer, HostileClients) {
  require("nbdinfo");
  TempDir dir;
  make_image(dir / "disk.raw");
  NetblkServe s({.args = {"-t", "-e", "0", "-f", "raw", dir / "disk.raw"}, .unix_socket = true});

  {  // Garbage instead of client flags + option: disconnected.
    RawClient c(s.socket());
    std::array<std::byte, nbd::kServerGreetingSize> g;
    ASSERT_TRUE(c.recv(g));
    std::vector<std::byte> junk(64, std::byte{0xee});
    c.send(junk);
    EXPECT_TRUE(c.closed_by_peer());
  }
  {  // Bad option magic after valid flags.
    RawClient c(s.socket());
    std::array<std::byte, nbd::kServerGreetingSize> g;
    ASSERT_TRUE(c.recv(g));
    std::array<std::byte, 4> flags;
    nbd::encode_client_flags(flags, nbd::kClientFlagFixedNewstyle);
    c.send(flags);
    std::vector<std::byte> junk(16, std::byte{0x41});
    c.send(junk);
    EXPECT_TRUE(c.closed_by_peer());
  }
  {  // Unknown option: an error reply, and the handshake goes on.
    RawClient c(s.socket());
    c.greet();
    c.send(nbd::encode_option(4242));
    EXPECT_EQ(c.read_option_reply().type, nbd::kRepErrUnsup);
    // A huge option length is refused without the server reading it all into memory.
    std::array<std::byte, nbd::kOptionHeaderSize> big;
    nbd::encode_option_header(big, nbd::kOptGo, 0xfffffff0u);
    c.send(big);
    EXPECT_TRUE(c.closed_by_peer());
  }
  {  // Bad requests: errors, and the connection stays usable.
    RawClient c(s.socket());
    ASSERT_EQ(c.handshake("disk"), kImageSize);
    c.request(nbd::kCmdRead, kImageSize - 512, 4096, 1);  // past the end
    EXPECT_EQ(c.simple_reply(1), long{nbd::kEinval});
    c.request(nbd::kCmdRead, 0, 64u << 20, 2);  // over the 32 MiB maximum
    EXPECT_EQ(c.simple_reply(2), long{nbd::kEoverflow});
    c.request(99, 0, 4096, 3);  // unknown command
    EXPECT_EQ(c.simple_reply(3), long{nbd::kEinval});
    c.request(nbd::kCmdRead, 0, 4096, 4, 0x4000);  // unknown flag
    EXPECT_EQ(c.simple_reply(4), long{nbd::kEinval});
    std::vector<std::byte> data(4096);
    c.request(nbd::kCmdWrite, kImageSize, data.size(), 5);  // write past the end: payload skipped
    c.send(data);
    EXPECT_EQ(c.simple_reply(5), long{nbd::kEnospc});
    c.request(nbd::kCmdBlockStatus, 0, 4096, 6);  // no meta context negotiated
    EXPECT_EQ(c.simple_reply(6), long{nbd::kEinval});
    c.request(nbd::kCmdRead, 1 << 20, 4096, 7);
    EXPECT_EQ(c.simple_reply(7, 4096), 0);
    // A bad request magic is a hard disconnect.
    std::vector<std::byte> junk(nbd::kRequestSize, std::byte{0x13});
    c.send(junk);
    EXPECT_TRUE(c.closed_by_peer());
  }
  {  // A client that sends many large reads and never reads the replies: memory stays bounded.
    RawClient c(s.socket());
    ASSERT_EQ(c.handshake("disk"), kImageSize);
    // The server stops reading at its in-flight bound, so our sends stop going through.
    int sent = 0;
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (sent < 100000 && std::chrono::steady_clock::now() < deadline) {
      std::array<std::byte, nbd::kRequestSize> b;
      nbd::encode_request(b, nbd::Request{0, nbd::kCmdRead, static_cast<std::uint64_t>(sent), 0, 32u << 20}, false);
      int r = c.try_send(b);
      if (r < 0) break;  // partial send: the stream is out of step; stop here
      if (r == 1) ++sent;
      else std::this_thread::sleep_for(10ms);
    }
    EXPECT_LT(sent, 100000) << "the server kept reading requests without bound";
    std::this_thread::sleep_for(2s);
    long rss = rss_kib(s.process().pid());
    EXPECT_GT(rss, 0);
    EXPECT_LT(rss, 1024 * 1024) << "server RSS " << rss << " KiB";
  }
  // The server survived all that and serves the next client.
  auto size = run({"nbdinfo", "--size", s.url()}, 30s);
  EXPECT_EQ(size.exit_code, 0) << size.err;
  EXPECT_EQ(size.out, "67108864\n");
  EXPECT_TRUE(s.process().running());
}

// Memory under many clients. Connections that never finish their handshake cost little
// each (the input buffer grows only once a handshake is done); eight clients that pipeline
// 32 MiB reads and never read the replies stay within the server-wide budget
// (kServerBytesInFlight, 512 MiB), not eight times the per-connection one (256 MiB).
TEST(NbdServer, MemoryBoundedOverClients) {
  TempDir dir;
  // Data everywhere, in qcow2 (never sent from the file itself), so that every read needs a
  // buffer of its own.
  write_pattern_file(dir / "disk.raw", kImageSize, 3);
  ASSERT_EQ(run({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", dir / "disk.raw", dir / "disk.qcow2"}, 60s).exit_code,
            0);
  NetblkServe s({.args = {"-t", "-e", "0", "-f", "qcow2", dir / "disk.qcow2"}, .unix_socket = true});
  const int pid = s.process().pid();

  const long idle_before = status_kib(pid, "RssAnon");
  {
    std::vector<std::unique_ptr<RawClient>> idle;
    for (int i = 0; i < 400; ++i) {
      idle.push_back(std::make_unique<RawClient>(s.socket()));
      std::array<std::byte, nbd::kServerGreetingSize> g;
      ASSERT_TRUE(idle.back()->recv(g));  // accepted and greeted; no client flags sent
    }
    const long idle_after = status_kib(pid, "RssAnon");
    EXPECT_LT(idle_after - idle_before, 400 * 32) << "400 idle connections took " << (idle_after - idle_before)
                                                   << " KiB";
  }

  std::vector<std::unique_ptr<RawClient>> greedy;
  for (int c = 0; c < 8; ++c) {
    greedy.push_back(std::make_unique<RawClient>(s.socket()));
    ASSERT_EQ(greedy.back()->handshake("disk"), kImageSize);
  }
  // Each sends 32 MiB reads until the server stops reading its requests.
  auto deadline = std::chrono::steady_clock::now() + 10s;
  std::vector<int> sent(greedy.size(), 0);
  for (bool more = true; more && std::chrono::steady_clock::now() < deadline;) {
    more = false;
    for (std::size_t c = 0; c < greedy.size(); ++c) {
      if (sent[c] >= 64) continue;
      std::array<std::byte, nbd::kRequestSize> b;
      nbd::encode_request(b, nbd::Request{0, nbd::kCmdRead, static_cast<std::uint64_t>(sent[c]), 0, 32u << 20}, false);
      const int r = greedy[c]->try_send(b);
      if (r == 1) ++sent[c];
      if (r >= 0) more = true;
    }
    std::this_thread::sleep_for(5ms);
  }
  std::this_thread::sleep_for(2s);
  const long anon = status_kib(pid, "RssAnon");
  EXPECT_GT(anon, 0);
  EXPECT_LT(anon, 700 * 1024) << "server anonymous memory " << anon << " KiB with 8 greedy clients";
  greedy.clear();
  // The budget comes back: the server serves the next client.
  auto size = run({"nbdinfo", "--size", s.url()}, 30s);
  EXPECT_EQ(size.exit_code, 0) << size.err;
  EXPECT_EQ(size.out, "67108864\n");
}

// `netblk serve` of an image killed (SIGKILL) at 50 random moments while a client writes
// batches of 4 KiB-aligned blocks and flushes after each batch: after every kill
// `qemu-img check` finds no corruption in a qcow2 (leaks allowed), and every block holds
// its last flushed value or a value written after that flush, whole (a kill in the middle
// of a store tears a block, which a disk never does). The client is raw (the codec over a
// unix socket), so that it knows exactly which writes a completed flush covered. A qcow2
// image on disk has its writes on the loop go through the file's mapping; a raw image on
// tmpfs (`on_tmpfs`) has them land in place.
static void check_killed_while_writing(const std::string& format, bool on_tmpfs) {
  constexpr std::uint64_t kSize = 16u << 20, kBlock = 4096, kBlocks = kSize / kBlock;
  TempDir dir = on_tmpfs ? TempDir("/dev/shm") : TempDir();
  const std::string image = dir / ("disk." + format), raw = dir / "read.raw";
  ASSERT_EQ(run({"qemu-img", "create", "-q", "-f", format, "-o",
                 format == "qcow2" ? "cluster_size=64k" : "preallocation=off", image, "16M"})
                .exit_code,
            0);
  // Per block: the value a completed flush covered, and the values written since.
  std::vector<std::uint8_t> durable(kBlocks, 0);
  std::vector<std::vector<std::uint8_t>> pending(kBlocks);
  std::mt19937 rng(20261204);
  std::uint8_t next_value = 1;
  int flushed_batches = 0;
  for (int round = 0; round < 50; ++round) {
    auto server = std::make_unique<NetblkServe>(
        NetblkServe::Options{.args = {"-t", "-f", format, image}, .unix_socket = true});
    const auto pause = std::chrono::milliseconds(30 + rng() % 250);  // rng is the writer's from here
    std::atomic<bool> stop{false};
    std::thread writer([&] {
      try {
        RawClient c(server->socket());
        if (c.handshake("disk") != kSize) return;
        std::uint64_t cookie = 1;
        while (!stop) {
          std::vector<std::pair<std::uint64_t, std::uint64_t>> batch;  // first block, blocks
          std::set<std::uint64_t> used;
          for (int i = 0; i < 8; ++i) {
            const std::uint64_t blocks = 1 + rng() % 16, first = rng() % (kBlocks - blocks);
            bool overlaps = false;
            for (std::uint64_t b = first; b < first + blocks; ++b) overlaps = overlaps || used.count(b);
            if (overlaps) continue;
            for (std::uint64_t b = first; b < first + blocks; ++b) used.insert(b);
            const std::uint8_t value = next_value;
            next_value = next_value == 255 ? 1 : next_value + 1;
            for (std::uint64_t b = first; b < first + blocks; ++b) pending[b].push_back(value);
            std::vector<std::byte> data(blocks * kBlock, std::byte{value});
            c.request(nbd::kCmdWrite, first * kBlock, data.size(), cookie++);
            c.send(data);
            batch.emplace_back(first, blocks);
          }
          // Replies come in any order; every write of the batch must succeed.
          std::set<std::uint64_t> answered;
          for (std::size_t i = 0; i < batch.size(); ++i) {
            std::uint64_t got = 0;
            if (c.any_reply(got) != 0) return;
            answered.insert(got);
          }
          if (answered.size() != batch.size() || *answered.begin() != cookie - batch.size()) return;
          c.request(nbd::kCmdFlush, 0, 0, cookie);
          if (c.simple_reply(cookie++) != 0) return;
          // The flush covered the batch: its values are durable, nothing else is pending.
          for (auto [first, blocks] : batch)
            for (std::uint64_t b = first; b < first + blocks; ++b) {
              durable[b] = pending[b].back();
              pending[b].clear();
            }
          ++flushed_batches;
        }
      } catch (const std::exception&) {
        // The server was killed under the client.
      }
    });
    std::this_thread::sleep_for(pause);
    server->stop(SIGKILL);
    stop = true;
    writer.join();
    server.reset();

    if (format == "qcow2") {
      RunResult check = run({"qemu-img", "check", image}, 60s);
      ASSERT_TRUE(check.exit_code == 0 || check.exit_code == 3) << "round " << round << "\n" << check.out << check.err;
    }
    ASSERT_EQ(run({"qemu-img", "convert", "-f", format, "-O", "raw", image, raw}, 60s).exit_code, 0);
    const std::string bytes = read_file(raw);
    ASSERT_EQ(bytes.size(), kSize);
    for (std::uint64_t b = 0; b < kBlocks; ++b) {
      const auto got = static_cast<std::uint8_t>(bytes[b * kBlock]);
      const bool whole = bytes.find_first_not_of(static_cast<char>(got), b * kBlock) >= (b + 1) * kBlock;
      const bool allowed = got == durable[b] || std::count(pending[b].begin(), pending[b].end(), got) > 0;
      ASSERT_TRUE(whole && allowed) << "round " << round << ", block " << b << ": read " << int(got) << ", flushed "
                                    << int(durable[b]);
      // What the image holds now is the next round's baseline.
      durable[b] = got;
      pending[b].clear();
    }
  }
  std::printf("serve of %s killed 50 times: %d batches flushed, no corruption, nothing flushed lost\n", format.c_str(),
              flushed_batches);
  EXPECT_GT(flushed_batches, 50);
}

TEST(NbdServer, KilledWhileWritingQcow2LosesNothingFlushed) { check_killed_while_writing("qcow2", false); }

TEST(NbdServer, KilledWhileWritingRawOnTmpfsLosesNothingFlushed) { check_killed_while_writing("raw", true); }

// No peer installed here speaks extended headers yet (QEMU 8.2+, libnbd 1.18+): check them,
// with base:allocation and structured replies, using a raw client built on the codec.
TEST(NbdServer, ExtendedHeadersAndBlockStatus) {
  TempDir dir;
  make_image(dir / "disk.raw");
  NetblkServe s({.args = {"-t", "-e", "0", "-f", "raw", dir / "disk.raw"}, .unix_socket = true});
  RawClient c(s.socket());
  std::array<std::byte, nbd::kServerGreetingSize> g;
  ASSERT_TRUE(c.recv(g));
  std::array<std::byte, 4> flags;
  nbd::encode_client_flags(flags, nbd::kClientFlagFixedNewstyle | nbd::kClientFlagNoZeroes);
  c.send(flags);
  c.send(nbd::encode_option(nbd::kOptExtendedHeaders));
  ASSERT_EQ(c.read_option_reply().type, nbd::kRepAck);
  c.send(nbd::encode_option(nbd::kOptSetMetaContext,
                            nbd::encode_meta_context_request({"disk", {"base:allocation", "qemu:nope"}})));
  std::vector<std::byte> payload;
  auto h = c.read_option_reply(&payload);
  ASSERT_EQ(h.type, nbd::kRepMetaContext);
  auto ctx = nbd::decode_rep_meta_context(payload);
  EXPECT_EQ(ctx.name, "base:allocation");
  ASSERT_EQ(c.read_option_reply().type, nbd::kRepAck);
  c.send(nbd::encode_option(nbd::kOptGo, nbd::encode_info_request({"disk", {nbd::kInfoBlockSize}})));
  bool saw_block_size = false;
  while (true) {
    auto r = c.read_option_reply(&payload);
    if (r.type == nbd::kRepAck) break;
    ASSERT_EQ(r.type, nbd::kRepInfo);
    auto info = nbd::decode_rep_info(payload);
    if (info.type == nbd::kInfoBlockSize) {
      saw_block_size = true;
      EXPECT_EQ(info.block_sizes.maximum, nbd::kMaxBlockSize);
    }
  }
  EXPECT_TRUE(saw_block_size);

  auto send_ext = [&](std::uint16_t type, std::uint64_t offset, std::uint64_t length, std::uint64_t cookie) {
    std::array<std::byte, nbd::kExtendedRequestSize> b;
    nbd::encode_request(b, nbd::Request{0, type, cookie, offset, length}, true);
    c.send(b);
  };
  auto read_chunk = [&](std::vector<std::byte>& body) {
    std::array<std::byte, nbd::kExtendedReplySize> hb;
    EXPECT_TRUE(c.recv(hb));
    auto rh = nbd::decode_reply_header(hb);
    EXPECT_EQ(rh.kind, nbd::ReplyKind::extended);
    body.resize(rh.length);
    EXPECT_TRUE(c.recv(body));
    return rh;
  };

  // Block status over the whole image: hole, data, hole, data, hole.
  send_ext(nbd::kCmdBlockStatus, 0, kImageSize, 1);
  std::vector<std::byte> body;
  auto rh = read_chunk(body);
  EXPECT_EQ(rh.cookie, 1u);
  EXPECT_EQ(rh.type, nbd::kReplyTypeBlockStatusExt);
  EXPECT_TRUE(rh.flags & nbd::kReplyFlagDone);
  auto bs = nbd::decode_block_status(body, rh.type);
  EXPECT_EQ(bs.context_id, ctx.id);
  ASSERT_EQ(bs.extents.size(), 5u);
  EXPECT_EQ(bs.extents[0].length, 1u << 20);
  EXPECT_EQ(bs.extents[0].flags, nbd::kStateHole | nbd::kStateZero);
  EXPECT_EQ(bs.extents[1].length, 2u << 20);
  EXPECT_EQ(bs.extents[1].flags, 0u);

  // A read of data, then a read of a hole.
  send_ext(nbd::kCmdRead, 1 << 20, 4096, 2);
  rh = read_chunk(body);
  EXPECT_EQ(rh.type, nbd::kReplyTypeOffsetData);
  auto d = nbd::decode_offset_data(body);
  EXPECT_EQ(d.offset, 1u << 20);
  EXPECT_EQ(d.data.size(), 4096u);
  send_ext(nbd::kCmdRead, 8 << 20, 1 << 20, 3);
  rh = read_chunk(body);
  EXPECT_EQ(rh.type, nbd::kReplyTypeOffsetHole);
  EXPECT_EQ(nbd::decode_offset_hole(body).length, 1u << 20);

  // Errors come as error chunks with a message.
  send_ext(nbd::kCmdRead, kImageSize, 4096, 4);
  rh = read_chunk(body);
  EXPECT_EQ(rh.type, nbd::kReplyTypeError);
  auto err = nbd::decode_error_chunk(body, rh.type);
  EXPECT_EQ(err.error, nbd::kEinval);
  EXPECT_NE(err.message.find("past the end"), std::string::npos) << err.message;

  // Write then flush: plain NONE chunks.
  std::vector<std::byte> data(4096, std::byte{0x5a});
  send_ext(nbd::kCmdWrite, 0, data.size(), 5);
  c.send(data);
  rh = read_chunk(body);
  EXPECT_EQ(rh.type, nbd::kReplyTypeNone);
  EXPECT_EQ(rh.cookie, 5u);
  send_ext(nbd::kCmdFlush, 0, 0, 6);
  rh = read_chunk(body);
  EXPECT_EQ(rh.type, nbd::kReplyTypeNone);
  send_ext(nbd::kCmdDisc, 0, 0, 7);
  EXPECT_TRUE(c.closed_by_peer());
  s.stop();
  EXPECT_EQ(read_file(dir / "disk.raw").substr(0, 4096), std::string(4096, '\x5a'));
}

// ---- TLS (qemu-nbd's --object tls-creds-* plus --tls-creds) -----------------------------

TEST(NbdServer, TlsX509WithQemuImgNbdinfoNbdcopyAndOurClient) {
  require("qemu-img");
  require("nbdinfo");
  require("nbdcopy");
  require("certtool");
  TempDir dir;
  make_image(dir / "disk.raw");
  const std::string sdir = dir / "server", cdir = dir / "client", other_s = dir / "other-server",
                    other_c = dir / "other-client", nocert = dir / "no-client-cert";
  make_tls_certs(dir, sdir, cdir, "a");
  make_tls_certs(dir, other_s, other_c, "b");
  std::filesystem::create_directories(nocert);
  std::filesystem::copy_file(cdir + "/ca-cert.pem", nocert + "/ca-cert.pem");

  NetblkServe s({.args = {"-t", "-e", "0", "-f", "raw", "--object", "tls-creds-x509,id=tls0,endpoint=server,dir=" + sdir, "--tls-creds", "tls0", dir / "disk.raw"}});
  const std::string port = std::to_string(s.port());
  const std::string client_creds = "tls-creds-x509,id=tls0,endpoint=client,dir=" + cdir;
  const std::string nbds = "nbds://127.0.0.1:" + port + "/disk?tls-certificates=" + cdir;

  // qemu-img reads the export through TLS.
  auto convert = run({"qemu-img", "convert", "-m", "1", "-O", "raw", "--object", client_creds, "--image-opts",
                      "driver=nbd,host=127.0.0.1,port=" + port + ",export=disk,tls-creds=tls0", dir / "q.raw"},
                     120s);
  ASSERT_EQ(convert.exit_code, 0) << convert.err;
  EXPECT_EQ(file_hash(dir / "q.raw"), file_hash(dir / "disk.raw"));

  // nbdinfo sees TLS; nbdcopy writes through it and reads back.
  auto info = run({"nbdinfo", "--json", nbds}, 30s);
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_NE(info.out.find("\"TLS\": true"), std::string::npos) << info.out;
  write_pattern_file(dir / "src.raw", kImageSize, 11);
  auto in = run({"nbdcopy", dir / "src.raw", nbds}, 120s);
  ASSERT_EQ(in.exit_code, 0) << in.err;
  auto out = run({"nbdcopy", nbds, dir / "back.raw"}, 120s);
  ASSERT_EQ(out.exit_code, 0) << out.err;
  EXPECT_EQ(file_hash(dir / "back.raw"), file_hash(dir / "src.raw"));

  // Our own client, by json: name.
  auto compare = run_netblk({"compare", "--object", client_creds,
                             "json:{\"driver\":\"nbd\",\"server\":{\"type\":\"inet\",\"host\":\"127.0.0.1\",\"port\":\"" +
                                 port + "\"},\"export\":\"disk\",\"tls-creds\":\"tls0\"}",
                             dir / "src.raw"},
                            120s);
  EXPECT_EQ(compare.exit_code, 0) << compare.out << compare.err;

  // Refused: a client without TLS (told TLS is required), one that trusts another CA, and,
  // with verify-peer on (the default), one that has no client certificate.
  auto plain = run({"qemu-img", "info", "nbd://127.0.0.1:" + port + "/disk"}, 30s);
  EXPECT_NE(plain.exit_code, 0);
  EXPECT_NE(plain.err.find("TLS"), std::string::npos) << plain.err;
  EXPECT_NE(run({"nbdinfo", "nbd://127.0.0.1:" + port + "/disk"}, 30s).exit_code, 0);
  EXPECT_NE(run({"nbdinfo", "nbds://127.0.0.1:" + port + "/disk?tls-certificates=" + other_c}, 30s).exit_code, 0);
  EXPECT_NE(run({"nbdinfo", "nbds://127.0.0.1:" + port + "/disk?tls-certificates=" + nocert}, 30s).exit_code, 0);
  // The server goes on serving after the refusals.
  EXPECT_EQ(run({"nbdinfo", "--size", nbds}, 30s).out, "67108864\n");
  int status = s.stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

TEST(NbdServer, TlsPskOverUnix) {
  require("nbdcopy");
  require("qemu-img");
  TempDir dir;
  make_image(dir / "disk.raw");
  const std::string kdir = dir / "psk";
  std::filesystem::create_directories(kdir);
  const std::string key = "9a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
  write_file(kdir + "/keys.psk", "qemu:" + key + "\n");
  write_file(dir / "wrong.psk", "qemu:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n");
  NetblkServe s({.args = {"-t", "-e", "0", "-f", "raw", "--object", "tls-creds-psk,id=tls0,endpoint=server,dir=" + kdir, "--tls-creds", "tls0", dir / "disk.raw"}, .unix_socket = true});
  // libnbd takes the PSK user from the URI's authority.
  const std::string uri = "nbds+unix://qemu@/disk?socket=" + s.socket() + "&tls-psk-file=" + kdir + "/keys.psk";
  auto copy = run({"nbdcopy", uri, dir / "out.raw"}, 120s);
  ASSERT_EQ(copy.exit_code, 0) << copy.err;
  EXPECT_EQ(file_hash(dir / "out.raw"), file_hash(dir / "disk.raw"));
  auto compare = run({"qemu-img", "compare", "-f", "raw", "--object",
                      "tls-creds-psk,id=tls0,endpoint=client,dir=" + kdir + ",username=qemu", dir / "disk.raw",
                      "json:{\"driver\":\"nbd\",\"path\":\"" + s.socket() + "\",\"export\":\"disk\",\"tls-creds\":\"tls0\"}"},
                     120s);
  EXPECT_EQ(compare.exit_code, 0) << compare.out << compare.err;
  const std::string wrong = "nbds+unix://qemu@/disk?socket=" + s.socket() + "&tls-psk-file=" + std::string(dir / "wrong.psk");
  EXPECT_NE(run({"nbdinfo", wrong}, 30s).exit_code, 0);
  {  // In the clear: NBD_OPT_GO is answered "TLS required", STARTTLS with data is invalid,
     // and NBD_OPT_EXPORT_NAME (which has no error reply) ends the connection.
    RawClient c(s.socket());
    c.greet();
    c.send(nbd::encode_option(nbd::kOptGo, nbd::encode_info_request({"disk", {}})));
    EXPECT_EQ(c.read_option_reply().type, nbd::kRepErrTlsReqd);
    std::vector<std::byte> junk(4, std::byte{1});
    c.send(nbd::encode_option(nbd::kOptStartTls, junk));
    EXPECT_EQ(c.read_option_reply().type, nbd::kRepErrInvalid);
    std::string name = "disk";
    c.send(nbd::encode_option(nbd::kOptExportName, std::as_bytes(std::span(name))));
    EXPECT_TRUE(c.closed_by_peer());
  }
  EXPECT_EQ(run({"nbdinfo", "--size", uri}, 30s).out, "67108864\n");
  s.stop();
}

TEST(NbdServer, TlsCredentialErrorsAtStart) {
  TempDir dir;
  make_image(dir / "disk.raw");
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--object", "tls-creds-x509,id=t,endpoint=server,dir=" + std::string(dir / "missing"), "--tls-creds", "t"},
       "server-cert.pem"},
      {{"--object", "tls-creds-psk,id=t,endpoint=client,dir=" + dir.path(), "--tls-creds", "t"},
       "Expecting TLS credentials with a server endpoint"},
      {{"--tls-creds", "nope"}, "No TLS credentials with id 'nope'"},
  };
  for (const auto& [flags, message] : cases) {
    std::vector<std::string> args{"serve", "-f", "raw", "-k", dir / "x.sock"};
    args.insert(args.end(), flags.begin(), flags.end());
    args.push_back(dir / "disk.raw");
    auto r = run_netblk(args, 30s);
    EXPECT_EQ(r.exit_code, 1) << message;
    EXPECT_NE(r.err.find(message), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
}
