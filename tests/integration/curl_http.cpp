// The http and https drivers against a real nginx on 127.0.0.1 (its own config in a
// TempDir): plain and TLS, cookies, basic auth with a secret, no byte ranges, redirects,
// a stalled body, a slow but moving body, and a server that drops connections (a tiny
// python3 server). Every read is checked against the file's bytes, and qemu-img compare
// agrees with netblk compare on the same URL. A real forward proxy (tinyproxy) with Basic
// credentials from a secret carries HTTP and HTTPS (CONNECT).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>

#include "core/secrets.hpp"
#include "netblk/buffer.hpp"
#include "netblk/open.hpp"
#include "curl_checks.hpp"
#include "nginx.hpp"
#include "servers.hpp"
#include "tinyproxy.hpp"

using namespace netblk;
using namespace netblk::test;
using nlohmann::json;
using namespace curltest;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kDiskSize = (6u << 20) + 12345;  // not a multiple of anything


const char* kDropServer = R"PY(
# Serves one file with HEAD and single byte ranges; cuts every third body short by
# closing the connection halfway through it.
import http.server, os, sys, socketserver
path, port = sys.argv[1], int(sys.argv[2])
data = open(path, 'rb').read()
count = [0]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def log_message(self, *a): pass
    def head(self, code, start, end):
        self.send_response(code)
        self.send_header('Accept-Ranges', 'bytes')
        self.send_header('Content-Length', str(end - start))
        if code == 206:
            self.send_header('Content-Range', 'bytes %d-%d/%d' % (start, end - 1, len(data)))
        self.end_headers()
    def do_HEAD(self):
        self.head(200, 0, len(data))
    def do_GET(self):
        start, end, code = 0, len(data), 200
        r = self.headers.get('Range')
        if r:
            a, b = r.split('=')[1].split('-')
            start, end, code = int(a), min(int(b) + 1, len(data)), 206
        self.head(code, start, end)
        count[0] += 1
        if count[0] % 3 == 1 and end - start > 2:
            self.wfile.write(data[start:start + (end - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            import socket
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(data[start:end])
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
S(('127.0.0.1', port), H).serve_forever()
)PY";


// nginx (HTTP and HTTPS, with the locations the tests use) and the python3 server that
// drops connections, serving the files in www/; one set for the whole binary.
struct Served {
  Served() {
    run({"mkdir", "-p", www});
    write_pattern_file(www + "/disk.img", kDiskSize, 7);
    // A second file with long zero runs, and a small one for the slow location.
    write_pattern_file(www + "/small.img", 1536 * 1024, 9);
    write_sparse_pattern(www + "/sparse.img");
    run({"chmod", "-R", "a+rX", www});
    content = read_all(www + "/disk.img");
    web = std::make_unique<netblk::test::Nginx>(netblk::test::Nginx::Options{
        .root = www,
        .https = true,
        .workers = 2,
        .locations = {netblk::test::Nginx::require_cookie("/cookie/", "session=abc"),
                      netblk::test::Nginx::basic_auth("/auth/", "alice", "s3cret-pw"),
                      netblk::test::Nginx::no_ranges("/noranges/"), netblk::test::Nginx::limit_rate("/slow/", "512k"),
                      netblk::test::Nginx::limit_rate("/trickle/", "10"),
                      netblk::test::Nginx::redirect("/redirect", "/disk.img"),
                      netblk::test::Nginx::redirect("/redirect-file", "file:///etc/passwd"),
                      netblk::test::Nginx::stall("/stall", 60)}});
    http_port = web->port();
    https_port = web->https_port();
    drop_port = free_port();
    write_file(dir / "drop.py", kDropServer);
    dropper = start_server({"python3", dir / "drop.py", www + "/disk.img", std::to_string(drop_port)},
                           dir / "drop.out", [&] { return wait_tcp(drop_port); }, "python3 server");
  }

  std::string http(const std::string& path) const { return web->url(path); }
  std::string https(const std::string& path) const { return web->https_url(path); }
  std::string drop(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(drop_port) + path; }

  TempDir dir;
  std::string www = dir / "www";
  std::unique_ptr<netblk::test::Nginx> web;
  std::uint16_t http_port = 0, https_port = 0, drop_port = 0;
  Process dropper;
  std::string content;
};

Served* server = nullptr;
std::string setup_error;

class CurlHttp : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
#ifdef NETBLK_BINARY
    setenv("NETBLK_BINARY", NETBLK_BINARY, 0);  // the helper library is built without the define
#endif
    try {
      server = &shared<Served>();
    } catch (const std::exception& e) {
      setup_error = e.what();
    }
  }
  void SetUp() override {
    if (!server) GTEST_FAIL() << "the servers did not start: " << setup_error;
  }
};

// Opens `spec` with the library and reads it in many ways: small sequential reads (the
// readahead path), random reads, large reads, many at once; each checked against `want`.
std::string local_copy(const std::string& name) { return server->dir / ("www/" + name); }

}  // namespace

TEST_F(CurlHttp, PlainHttpReadsTheRightBytes) {
  check_reads(named(server->http("/disk.img")), server->content);
  check_convert({}, server->http("/disk.img"), server->content);
  auto info = nb({"info", "--output=json", server->http("/disk.img")});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  json j = json::parse(info.out);
  EXPECT_EQ(j["virtual-size"], kDiskSize);
  EXPECT_EQ(j["format"], "raw");
  EXPECT_EQ(j["filename"], server->http("/disk.img"));
}

TEST_F(CurlHttp, EveryNameOpensTheSameImage) {
  std::string url = server->http("/disk.img");
  std::vector<std::vector<std::string>> forms = {
      {"info", "--output=json", url},
      {"info", "--output=json", "json:{\"file.driver\":\"http\",\"file.url\":\"" + url +
                                     "\",\"file.readahead\":\"64k\",\"file.timeout\":10}"},
      {"info", "--output=json", "--image-opts", "driver=raw,file.driver=http,file.url=" + url + ",file.sslverify=off"},
      {"info", "--output=json", "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"http\",\"url\":\"" + url +
                                     "\",\"force-range\":true}}"},
  };
  for (const auto& f : forms) {
    auto r = nb(f);
    ASSERT_EQ(r.exit_code, 0) << f.back() << ": " << r.err;
    EXPECT_EQ(json::parse(r.out)["virtual-size"], kDiskSize) << f.back();
  }
  // A readahead that is not a multiple of 512, a too large timeout, an unknown option.
  auto bad = nb({"info", "json:{\"file.driver\":\"http\",\"file.url\":\"" + url + "\",\"file.readahead\":1000}"});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("not a multiple of 512"), std::string::npos) << bad.err;
  bad = nb({"info", "json:{\"file.driver\":\"http\",\"file.url\":\"" + url + "\",\"file.timeout\":20000}"});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("timeout"), std::string::npos) << bad.err;
  bad = nb({"info", "json:{\"file.driver\":\"http\",\"file.url\":\"" + url + "\",\"file.bogus\":1}"});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("bogus"), std::string::npos) << bad.err;
  // The driver and the URL scheme must agree.
  bad = nb({"info", "json:{\"file.driver\":\"ftp\",\"file.url\":\"" + url + "\"}"});
  EXPECT_NE(bad.exit_code, 0);
  bad = nb({"info", server->http("/no-such-file")});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("404"), std::string::npos) << bad.err;
}

TEST_F(CurlHttp, WritesAreRefused) {
  run_sync<void>([&]() -> Task<void> {
    DriveSpec spec = named(server->http("/disk.img"));
    spec.read_only = false;  // as QEMU's auto-read-only: opens, read-only
    auto node = co_await open_drive(spec);
    EXPECT_TRUE(node->read_only());
    Buffer b(512);
    std::memset(b.data(), 1, 512);
    bool refused = false;
    try {
      co_await node->write(0, b.span());
    } catch (const Error& e) {
      refused = e.code() == EPERM || e.code() == EROFS;
    }
    EXPECT_TRUE(refused);
    co_await node->close();
  });
}

TEST_F(CurlHttp, HttpsVerifiesCertificatesUnlessSslverifyOff) {
  std::string url = server->https("/disk.img");
  auto verified = nb({"info", url}, 60s);
  EXPECT_NE(verified.exit_code, 0);
  EXPECT_NE(verified.err.find("certificate"), std::string::npos) << verified.err;
  std::string spec = "json:{\"file.driver\":\"https\",\"file.url\":\"" + url + "\",\"file.sslverify\":\"off\"}";
  check_reads(named(spec), server->content);
  check_convert({}, spec, server->content);
  // qemu-img and netblk agree on the same URL.
  auto ours = nb({"compare", spec, local_copy("disk.img")}, 60s);
  EXPECT_EQ(ours.exit_code, 0) << ours.out << ours.err;
  auto theirs = run({"timeout", "60", "qemu-img", "compare", spec, local_copy("disk.img")}, 90s);
  EXPECT_EQ(theirs.exit_code, 0) << theirs.out << theirs.err;
}

TEST_F(CurlHttp, QemuImgAgrees) {
  std::string url = server->http("/disk.img");
  auto ours = nb({"compare", url, local_copy("disk.img")}, 60s);
  EXPECT_EQ(ours.exit_code, 0) << ours.out << ours.err;
  auto theirs = run({"timeout", "60", "qemu-img", "compare", url, local_copy("disk.img")}, 90s);
  EXPECT_EQ(theirs.exit_code, 0) << theirs.out << theirs.err;
  // Different images: both say so.
  ours = nb({"compare", url, local_copy("small.img")}, 60s);
  theirs = run({"timeout", "60", "qemu-img", "compare", url, local_copy("small.img")}, 90s);
  EXPECT_EQ(ours.exit_code, 1) << ours.err;
  EXPECT_EQ(theirs.exit_code, 1) << theirs.err;
  // qemu-img's own copy of the URL is the same bytes as ours.
  TempDir out;
  auto q = run({"timeout", "60", "qemu-img", "convert", "-m", "1", "-O", "raw", url, out / "q.raw"}, 90s);
  ASSERT_EQ(q.exit_code, 0) << q.err;
  // qemu-img rounds the copy up to whole sectors; the padding is zeroes.
  std::string theirs_copy = read_all(out / "q.raw");
  ASSERT_GE(theirs_copy.size(), server->content.size());
  EXPECT_TRUE(theirs_copy.compare(0, server->content.size(), server->content) == 0);
  EXPECT_EQ(theirs_copy.find_first_not_of('\0', server->content.size()), std::string::npos);
}

TEST_F(CurlHttp, CookieProtectedLocation) {
  std::string url = server->http("/cookie/disk.img");
  auto refused = nb({"info", url});
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.err.find("403"), std::string::npos) << refused.err;
  std::string with_cookie = "json:{\"file.driver\":\"http\",\"file.url\":\"" + url + "\",\"file.cookie\":\"a=1; session=abc\"}";
  check_reads(named(with_cookie), server->content);
  // The cookie never shows in info.
  auto info = nb({"info", "--output=json", with_cookie});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(info.out.find("session=abc"), std::string::npos) << info.out;
  // From a secret, with the CLI.
  TempDir t;
  write_file(t / "cookie", "session=abc");
  check_convert({"--object", "secret,id=c0,file=" + (t / "cookie")},
                "json:{\"file.driver\":\"http\",\"file.url\":\"" + url + "\",\"file.cookie-secret\":\"c0\"}",
                server->content);
  // Against qemu-img with the same cookie.
  auto theirs = run({"timeout", "60", "qemu-img", "compare", with_cookie, local_copy("disk.img")}, 90s);
  EXPECT_EQ(theirs.exit_code, 0) << theirs.err;
}

TEST_F(CurlHttp, BasicAuthWithPasswordSecret) {
  std::string url = server->http("/auth/disk.img");
  auto refused = nb({"info", url});
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.err.find("401"), std::string::npos) << refused.err;
  std::string spec = "json:{\"file.driver\":\"http\",\"file.url\":\"" + url +
                     "\",\"file.username\":\"alice\",\"file.password-secret\":\"pw\"}";
  check_convert({"--object", "secret,id=pw,data=s3cret-pw"}, spec, server->content);
  auto wrong = nb({"info", "--object", "secret,id=pw,data=wrong", spec});
  EXPECT_NE(wrong.exit_code, 0);
  EXPECT_EQ(wrong.err.find("wrong"), std::string::npos) << wrong.err;
  auto missing = nb({"info", spec});
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.err.find("pw"), std::string::npos) << missing.err;
  // With the library.
  secrets::define(Json{{"qom-type", "secret"}, {"id", "pw2"}, {"data", "s3cret-pw"}});
  DriveSpec lib;
  lib.read_only = true;
  lib.options = Json{{"driver", "raw"},
                     {"file", {{"driver", "http"}, {"url", url}, {"username", "alice"}, {"password-secret", "pw2"}}}};
  check_reads(lib, server->content);
  // A password in the URL works and never shows in info, human or JSON.
  std::string with_password = "http://alice:s3cret-pw@127.0.0.1:" + std::to_string(server->http_port) + "/auth/disk.img";
  for (const char* output : {"--output=human", "--output=json"}) {
    auto info = nb({"info", output, with_password});
    ASSERT_EQ(info.exit_code, 0) << info.err;
    EXPECT_EQ(info.out.find("s3cret"), std::string::npos) << info.out;
    EXPECT_NE(info.out.find("alice@127.0.0.1"), std::string::npos) << info.out;
  }
  auto bad = nb({"info", "http://alice:wrong-pw@127.0.0.1:" + std::to_string(server->http_port) + "/auth/disk.img"});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_EQ(bad.err.find("wrong-pw"), std::string::npos) << bad.err;
  // qemu-img with the same secret.
  auto theirs = run({"timeout", "60", "qemu-img", "compare", "--object", "secret,id=pw,data=s3cret-pw", spec,
                     local_copy("disk.img")},
                    90s);
  EXPECT_EQ(theirs.exit_code, 0) << theirs.err;
}

TEST_F(CurlHttp, ServerWithoutRangesIsStreamed) {
  std::string url = server->http("/noranges/disk.img");
  check_reads(named(url), server->content);
  check_convert({}, url, server->content);
  auto ours = nb({"compare", url, local_copy("disk.img")}, 60s);
  EXPECT_EQ(ours.exit_code, 0) << ours.err;
  // force-range on such a server: the one-byte probe gets the whole file, and it still works.
  check_reads(named("json:{\"file.driver\":\"http\",\"file.url\":\"" + url + "\",\"file.force-range\":true}"),
              server->content);
}

// Into a raw file in tmpfs, convert has the HTTP(S) client write the bodies straight into
// the target (Node::read_to_file), from one stream, finding zero blocks on the way: the
// bytes are the file's, allocation is what qemu-img leaves for the same URL (-S 4k, 64k)
// and -S 0 allocates everything. A dropped connection (the stream and its range requests
// resume) and a server without ranges (its one stream) give the same bytes, and a target
// that takes no more fails with one line naming it.
TEST_F(CurlHttp, ConvertWritesBodiesIntoRawTarget) {
  TempDir out("/dev/shm");
  const std::string want = read_all(local_copy("sparse.img"));
  for (const std::string& url :
       {server->http("/sparse.img"),
        "json:{\"file.driver\":\"https\",\"file.url\":\"" + server->https("/sparse.img") + "\",\"file.sslverify\":\"off\"}"}) {
    for (const std::string sparse : {"4k", "64k", "0"}) {
      const std::string ours = out / "ours.raw", theirs = out / "theirs.raw";
      std::filesystem::remove(ours);
      std::filesystem::remove(theirs);
      auto r = nb({"convert", "-S", sparse, "-O", "raw", url, ours}, 120s);
      ASSERT_EQ(r.exit_code, 0) << url << ": " << r.err;
      EXPECT_TRUE(read_all(ours) == want) << "converted bytes differ for " << url << " -S " << sparse;
      auto q = run({"timeout", "60", "qemu-img", "convert", "-m", "1", "-S", sparse, "-O", "raw", url, theirs}, 90s);
      ASSERT_EQ(q.exit_code, 0) << q.err;
      EXPECT_EQ(allocated_bytes(ours), allocated_bytes(theirs)) << url << " -S " << sparse;
    }
  }
  EXPECT_GE(allocated_bytes(out / "ours.raw"), want.size());  // the last one was -S 0
  for (const std::string& url : {server->drop("/disk.img"), server->http("/noranges/disk.img")}) {
    std::filesystem::remove(out / "ours.raw");
    auto r = nb({"convert", "-O", "raw", url, out / "ours.raw"}, 120s);
    ASSERT_EQ(r.exit_code, 0) << url << ": " << r.err;
    EXPECT_TRUE(read_all(out / "ours.raw") == server->content) << "converted bytes differ for " << url;
  }
  check_convert_into_tmpfs(server->http("/sparse.img"), want);
}

TEST_F(CurlHttp, RedirectsAreFollowedOnceAndOnlyToHttp) {
  std::string url = server->http("/redirect");
  check_reads(named(url), server->content);
  check_convert({}, url, server->content);
  auto file = nb({"info", server->http("/redirect-file")});
  EXPECT_NE(file.exit_code, 0);
  EXPECT_EQ(file.out.find("root:"), std::string::npos);
}

TEST_F(CurlHttp, StalledBodyFailsAfterTheTimeout) {
  auto start = std::chrono::steady_clock::now();
  auto r = nb({"info", "json:{\"file.driver\":\"http\",\"file.url\":\"" + server->http("/stall") +
                               "\",\"file.timeout\":2}"},
                  60s);
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.exit_code, 124) << "hung";
  EXPECT_NE(r.err.find("progress"), std::string::npos) << r.err;
  EXPECT_GE(took, 1900ms);
  EXPECT_LT(took, 15s);
}

TEST_F(CurlHttp, SlowButMovingBodyIsNotKilled) {
  // 1.5 MiB at 512 KiB/s takes about 3 s, longer than the 1 s timeout.
  std::string spec = "json:{\"file.driver\":\"http\",\"file.url\":\"" + server->http("/slow/small.img") +
                     "\",\"file.timeout\":1}";
  check_convert({"-m", "1"}, spec, read_all(local_copy("small.img")));
}

TEST_F(CurlHttp, TricklingBodyIsGivenUpInBoundedTime) {
  // A valid 206 whose body comes at 10 bytes/s: retried, then a one-line error.
  std::string spec = "json:{\"file.driver\":\"http\",\"file.url\":\"" + server->http("/trickle/small.img") +
                     "\",\"file.timeout\":2}";
  auto start = std::chrono::steady_clock::now();
  TempDir out;
  auto r = nb({"convert", "-O", "raw", spec, out / "trickle.raw"}, 120s);
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.exit_code, 124) << "hung";
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find("under 1024 bytes/s, for 2 s"), std::string::npos) << r.err;
  EXPECT_LT(took, 60s);
}

TEST_F(CurlHttp, DroppedConnectionsAreRetried) {
  std::string url = server->drop("/disk.img");
  check_reads(named(url), server->content);
  check_convert({}, url, server->content);
}

TEST_F(CurlHttp, NothingListeningFailsQuickly) {
  auto start = std::chrono::steady_clock::now();
  auto r = nb({"info", "http://127.0.0.1:" + std::to_string(free_port()) + "/disk.img"}, 60s);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);
}

namespace {

std::string proxied_spec(const std::string& driver, const std::string& url) {
  return "json:{\"file.driver\":\"" + driver + "\",\"file.url\":\"" + url +
         "\",\"file.sslverify\":\"off\",\"file.proxy-username\":\"alice\",\"file.proxy-password-secret\":\"proxypw\"}";
}

}  // namespace

TEST_F(CurlHttp, ProxyWithCredentialsFromASecret) {
  Tinyproxy proxy({.user = "alice", .password = "proxy-pw"});
  TempDir t;
  write_file(t / "right", "proxy-pw");
  write_file(t / "wrong", "not-the-proxy-pw");
  const std::string bin = netblk_binary();
  for (const auto& [driver, url] : {std::pair<std::string, std::string>{"http", server->http("/disk.img")},
                                    std::pair<std::string, std::string>{"https", server->https("/disk.img")}}) {
    SCOPED_TRACE(url);
    std::string spec = proxied_spec(driver, url);
    // The right password: the bytes arrive through the proxy.
    auto r = run({bin, "convert", "-O", "raw", "--object", "secret,id=proxypw,file=" + (t / "right"), spec,
                  t / "out.raw"},
                 120s, proxy.env());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(read_all(t / "out.raw") == server->content) << "converted bytes differ";
    std::string port = std::to_string(driver == "http" ? server->http_port : server->https_port);
    std::string through = driver == "http" ? "GET " + url : "CONNECT 127.0.0.1:" + port;
    EXPECT_NE(proxy.log().find(through), std::string::npos) << "the proxy did not carry it:\n" << proxy.log();
    // A wrong password: one line that names the URL and never shows the password.
    auto start = std::chrono::steady_clock::now();
    auto wrong = run({bin, "info", "--object", "secret,id=proxypw,file=" + (t / "wrong"), spec}, 60s, proxy.env());
    EXPECT_NE(wrong.exit_code, 0);
    EXPECT_NE(wrong.exit_code, 124) << "hung";
    EXPECT_LT(std::chrono::steady_clock::now() - start, 3s) << "a refusal is not retried";
    EXPECT_NE(wrong.err.find(url), std::string::npos) << wrong.err;
    EXPECT_NE(wrong.err.find("401"), std::string::npos) << wrong.err;
    EXPECT_EQ(wrong.err.find("not-the-proxy-pw"), std::string::npos) << wrong.err;
    EXPECT_EQ(wrong.err.find("proxy-pw"), std::string::npos) << wrong.err;
    EXPECT_EQ(std::count(wrong.err.begin(), wrong.err.end(), '\n'), 1) << wrong.err;
    // No credentials at all: the proxy refuses too.
    auto none = run({bin, "info", url.starts_with("https") ? "json:{\"file.driver\":\"https\",\"file.url\":\"" + url +
                                                                 "\",\"file.sslverify\":\"off\"}"
                                                           : url},
                    60s, proxy.env());
    EXPECT_NE(none.exit_code, 0);
  }
  // QEMU reads the same URL through the same proxy with the same options.
  std::string spec = proxied_spec("http", server->http("/disk.img"));
  auto theirs = run({"timeout", "60", "qemu-img", "compare", "--object", "secret,id=proxypw,file=" + (t / "right"),
                     spec, local_copy("disk.img")},
                    90s, proxy.env());
  EXPECT_EQ(theirs.exit_code, 0) << theirs.err;
  // The proxy is stopped by its PID.
  EXPECT_TRUE(proxy.running());
  proxy.stop();
  EXPECT_FALSE(proxy.running());
}

namespace {

std::string http_spec(const std::string& driver, const std::string& url, const std::string& more = "") {
  return "json:{\"file.driver\":\"" + driver + "\",\"file.url\":\"" + url + "\"" + more + "}";
}

}  // namespace

NETBLK_DRIVE_CHECKS(CurlHttp,
                    DriveCheckParam{"http",
                                    [] {
                                      auto& s = shared<Served>();
                                      const std::string url = s.http("/disk.img");
                                      return DriveCase{
                                          .name = url,
                                          .source = s.www + "/disk.img",
                                          .bad_names = bad_curl_names(
                                              "http", url,
                                              {s.http("/no-such.img"), "json:{\"file.driver\":\"http\"}",
                                               http_spec("http", url, ",\"file.readahead\":\"lots\"")})};
                                    }},
                    DriveCheckParam{"https", [] {
                                      auto& s = shared<Served>();
                                      const std::string url = s.https("/disk.img");
                                      return DriveCase{
                                          .name = http_spec("https", url, ",\"file.sslverify\":\"off\""),
                                          .source = s.www + "/disk.img",
                                          .bad_names = bad_curl_names(
                                              "https", url,
                                              {url, http_spec("https", s.https("/no-such.img"), ",\"file.sslverify\":\"off\""),
                                               http_spec("https", url, ",\"file.sslverify\":\"maybe\"")})};
                                    }},
                    // Basic auth with the password from a secret object.
                    DriveCheckParam{"http_basic_auth", [] {
                                      auto& s = shared<Served>();
                                      const std::string url = s.http("/auth/disk.img");
                                      const std::string user = ",\"file.username\":\"alice\"";
                                      return DriveCase{
                                          .name = http_spec("http", url, user + ",\"file.password-secret\":\"pw\""),
                                          .source = s.www + "/disk.img",
                                          .bad_names = bad_curl_names(
                                              "http", url,
                                              {url, http_spec("http", url, user + ",\"file.password-secret\":\"no\""),
                                               http_spec("http", url, ",\"file.username\":\"bob\",\"file.password-secret\":\"pw\"")}),
                                          .objects = {"secret,id=pw,data=s3cret-pw"}};
                                    }});

// nginx killed (SIGKILL) during a copy and started again a second later on the same port:
// the copy completes with identical bytes. Killed for good: a one-line error in bounded time.
TEST_F(CurlHttp, ServerCrashDuringCopy) {
  TempDir d;
  const std::string www = d / "www";
  run({"mkdir", "-p", www});
  write_pattern_file(www + "/big.img", 32u << 20, 31);
  run({"chmod", "-R", "a+rX", www});
  check_server_crashes<Nginx>({.root = www, .locations = {Nginx::limit_rate("/slow/", "1m")}},
                              [](const Nginx& web) { return web.url("/slow/big.img"); }, www + "/big.img", 1s);
}
