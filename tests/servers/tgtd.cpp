#include "tgtd.hpp"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>

namespace netblk::test {

namespace {
// Control port numbers of their own for each instance in this process.
int next_control() {
  static std::atomic<int> instances{0};
  return 100 + (getpid() % 400) * 8 + (instances++ % 8);
}
}  // namespace

Tgtd::Tgtd(std::vector<Target> targets) : targets_(std::move(targets)), port_(free_port()), control_(next_control()) {
  start();
}

Tgtd::~Tgtd() { kill(); }

std::string Tgtd::url(const std::string& iqn, int lun) const {
  return "iscsi://" + portal() + "/" + iqn + "/" + std::to_string(lun);
}

std::string Tgtd::portal() const { return "127.0.0.1:" + std::to_string(port_); }

void Tgtd::kill() {
  if (process_.pid() > 0) process_.stop(SIGKILL);
}

void Tgtd::restart() {
  kill();
  start();
}

void Tgtd::tgtadm(const std::vector<std::string>& args) {
  std::vector<std::string> argv{"tgtadm", "-C", std::to_string(control_), "--lld", "iscsi"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = run(argv, std::chrono::seconds(20), {"TGT_IPC_SOCKET=" + dir_ / "sock"});
  if (r.exit_code != 0) {
    std::string line;
    for (const auto& a : argv) line += a + " ";
    throw std::runtime_error("tgtadm failed: " + line + ": " + r.out + r.err);
  }
}

void Tgtd::start() {
  const std::vector<std::string> env{"TGT_IPC_SOCKET=" + dir_ / "sock"};
  const std::string control = std::to_string(control_);
  auto ready = [&] {
    // The control socket answers first; the portal may take a moment more (a port still
    // held by the killed instance's connections is retried by tgtd).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      auto r = run({"tgtadm", "-C", control, "--lld", "iscsi", "--mode", "sys", "--op", "show"},
                   std::chrono::seconds(5), env);
      if (r.exit_code == 0) return wait_tcp(port_, std::chrono::milliseconds(10000));
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  };
  process_ = start_server({"/usr/sbin/tgtd", "-f", "-C", control, "--iscsi", "portal=" + portal()}, dir_ / "tgtd.log",
                          ready, "tgtd", {}, env);
  int tid = 1;
  for (const auto& t : targets_) {
    const std::string tid_text = std::to_string(tid);
    tgtadm({"--mode", "target", "--op", "new", "--tid", tid_text, "--targetname", t.iqn});
    int lun = 1;
    for (const auto& l : t.luns) {
      const std::string lun_text = std::to_string(lun);
      std::vector<std::string> args{"--mode", "logicalunit", "--op", "new", "--tid", tid_text, "--lun", lun_text,
                                    "--backing-store", l.backing, "--bstype", "rdwr"};
      if (l.cdrom) {
        args.push_back("--device-type");
        args.push_back("cd");
      }
      tgtadm(args);
      if (l.readonly)
        tgtadm({"--mode", "logicalunit", "--op", "update", "--tid", tid_text, "--lun", lun_text, "--params",
                "readonly=1"});
      if (l.thin)
        tgtadm({"--mode", "logicalunit", "--op", "update", "--tid", tid_text, "--lun", lun_text, "--params",
                "thin_provisioning=1"});
      ++lun;
    }
    if (t.initiator.empty())
      tgtadm({"--mode", "target", "--op", "bind", "--tid", tid_text, "--initiator-address", "ALL"});
    else
      tgtadm({"--mode", "target", "--op", "bind", "--tid", tid_text, "--initiator-name", t.initiator});
    if (!t.chap_user.empty()) {
      tgtadm({"--mode", "account", "--op", "new", "--user", t.chap_user, "--password", t.chap_password});
      tgtadm({"--mode", "account", "--op", "bind", "--tid", tid_text, "--user", t.chap_user});
    }
    ++tid;
  }
}

}  // namespace netblk::test
