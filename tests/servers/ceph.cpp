#include "ceph.hpp"

#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <thread>

namespace netblk::test {

namespace {

using namespace std::chrono_literals;

std::string uuid() {
  std::ifstream in("/proc/sys/kernel/random/uuid");
  std::string u;
  std::getline(in, u);
  return u;
}

// Retries `check` every 100 ms until it holds or `limit` passes.
bool poll_until(const std::function<bool()>& check, std::chrono::seconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    if (check()) return true;
    std::this_thread::sleep_for(100ms);
  }
  return false;
}

}  // namespace

RunResult CephCluster::try_tool(const std::vector<std::string>& argv) { return run(argv, 60s, env()); }

std::string CephCluster::tool(const std::vector<std::string>& argv) {
  auto r = try_tool(argv);
  if (r.exit_code != 0) {
    std::string cmd;
    for (const auto& a : argv) cmd += a + " ";
    throw std::runtime_error("ceph cluster: " + cmd + "failed: " + r.err + r.out);
  }
  return r.out;
}

CephCluster::CephCluster(Auth auth) : auth_(auth) {
  const std::string d = dir_.path();
  const std::string mode = auth == Auth::cephx ? "cephx" : "none";
  port_v1_ = free_port();
  port_v2_ = free_port();
  while (port_v2_ == port_v1_) port_v2_ = free_port();
  const std::string fsid = uuid();
  const std::string addrs =
      "[v2:127.0.0.1:" + std::to_string(port_v2_) + ",v1:127.0.0.1:" + std::to_string(port_v1_) + "]";
  std::filesystem::create_directories(d + "/mon");
  std::filesystem::create_directories(d + "/osd/osd.0");
  std::filesystem::create_directories(d + "/run");
  std::string conf = "[global]\nfsid = " + fsid + "\nmon host = " + addrs +
                     "\nmon initial members = a\npublic addr = 127.0.0.1\ncluster addr = 127.0.0.1\n"
                     "ms bind ipv4 = true\nms bind ipv6 = false\n"
                     "auth cluster required = " + mode + "\nauth service required = " + mode +
                     "\nauth client required = " + mode +
                     "\nosd pool default size = 1\nosd pool default min size = 1\nosd crush chooseleaf type = 0\n"
                     "mon allow pool size one = true\nrun dir = " + d + "/run\npid file = " + d +
                     "/run/$name.pid\nadmin socket = " + d + "/run/$name.asok\nlog file = " + d +
                     "/$name.log\nmon data = " + d + "/mon/$name\nosd data = " + d +
                     "/osd/$name\nosd objectstore = memstore\nclient mount timeout = 10\n"
                     "rados mon op timeout = 10\nmon allow pool delete = true\n";
  auto ok = [](const RunResult& r, const std::string& what) {
    if (r.exit_code != 0) throw std::runtime_error("ceph cluster: " + what + " failed: " + r.err + r.out);
  };
  if (auth == Auth::cephx) {
    const std::string mon_kr = d + "/mon.keyring", osd_kr = d + "/osd/osd.0/keyring";
    ok(run({"ceph-authtool", "--create-keyring", mon_kr, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"}),
       "ceph-authtool mon.");
    ok(run({"ceph-authtool", "--create-keyring", admin_keyring(), "--gen-key", "-n", "client.admin", "--cap", "mon",
            "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *"}),
       "ceph-authtool client.admin");
    ok(run({"ceph-authtool", "--create-keyring", osd_kr, "--gen-key", "-n", "osd.0", "--cap", "mon",
            "allow profile osd", "--cap", "osd", "allow *", "--cap", "mgr", "allow profile osd"}),
       "ceph-authtool osd.0");
    ok(run({"ceph-authtool", mon_kr, "--import-keyring", admin_keyring()}), "ceph-authtool import");
    ok(run({"ceph-authtool", mon_kr, "--import-keyring", osd_kr}), "ceph-authtool import");
    auto key = run({"ceph-authtool", admin_keyring(), "-n", "client.admin", "-p"});
    ok(key, "ceph-authtool -p");
    admin_key_ = key.out.substr(0, key.out.find_first_of("\r\n"));
    conf += "[mon]\nkeyring = " + mon_kr + "\n[osd]\nkeyring = " + osd_kr + "\n[client]\nkeyring = " +
            admin_keyring() + "\n";
  }
  write_file(this->conf(), conf);
  const std::vector<std::string> e = env();
  ok(run({"monmaptool", "--create", "--fsid", fsid, "--addv", "a", addrs, d + "/monmap"}, 30s, e), "monmaptool");
  std::vector<std::string> mkfs{"ceph-mon", "-i", "a", "--mkfs", "--monmap", d + "/monmap"};
  if (auth == Auth::cephx) {
    mkfs.push_back("--keyring");
    mkfs.push_back(d + "/mon.keyring");
  }
  ok(run(mkfs, 30s, e), "ceph-mon --mkfs");
  auto mon_ready = [this] { return wait_tcp(static_cast<std::uint16_t>(port_v1_), 20000ms); };
  process_ = start_server({"ceph-mon", "-i", "a", "-f"}, d + "/mon.out", mon_ready, "ceph-mon", {d + "/mon.a.log"}, e);
  if (!poll_until([this] { return try_tool({"ceph", "mon", "stat"}).exit_code == 0; }, 30s))
    throw std::runtime_error("ceph cluster: the monitor does not answer: " + read_file(d + "/mon.a.log"));
  tool({"ceph", "osd", "create"});
  tool({"ceph", "osd", "crush", "add", "osd.0", "1", "root=default"});
  ok(run({"ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", uuid()}, 60s, e), "ceph-osd --mkfs");
  osd_ = Process({"ceph-osd", "-i", "0", "-f"}, d + "/osd.out", e);
  auto osd_up = [this] {
    auto r = try_tool({"ceph", "osd", "dump"});
    return r.exit_code == 0 && r.out.find("\nosd.0 up") != std::string::npos;
  };
  if (!poll_until(osd_up, 60s))
    throw std::runtime_error("ceph cluster: osd.0 does not come up: " + read_file(d + "/osd.out"));
  tool({"ceph", "osd", "pool", "create", "rbd", "8", "8"});
  tool({"rbd", "pool", "init", "rbd"});
  write_file(d + "/probe", "x");
  if (!poll_until([&] { return try_tool({"rados", "-p", "rbd", "put", "probe", d + "/probe"}).exit_code == 0; }, 60s))
    throw std::runtime_error("ceph cluster: pool rbd takes no writes");
}

CephCluster::~CephCluster() {
  osd_.stop(15, 3000ms);
  process_.stop(15, 3000ms);
}

}  // namespace netblk::test
