// tgtd (tgt's user-space iSCSI target) in the foreground on 127.0.0.1, its control socket in
// a TempDir of its own (TGT_IPC_SOCKET), configured with tgtadm: targets with disk or
// CD-ROM LUNs over backing files, read-only or thin-provisioned LUNs, targets bound to all
// initiators or to one initiator name, CHAP accounts. Ready when tgtadm answers and the
// port accepts. tgtd ignores SIGTERM: it is stopped with SIGKILL, by PID, and reaped.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "servers.hpp"

namespace netblk::test {

class Tgtd : public Daemon {
 public:
  struct Lun {
    std::string backing{};  // the backing file (bstype rdwr)
    bool cdrom = false;     // --device-type cd
    bool readonly = false;
    bool thin = false;      // thin_provisioning=1: UNMAP punches holes in the backing file
  };
  struct Target {
    std::string iqn{};
    std::vector<Lun> luns{};      // LUN 1, 2, ... (LUN 0 is the target's controller)
    std::string initiator{};      // only this initiator name may log in; "" = any
    std::string chap_user{}, chap_password{};
  };
  explicit Tgtd(std::vector<Target> targets);
  ~Tgtd();

  std::uint16_t port() const { return port_; }
  // iscsi://127.0.0.1:PORT/IQN/LUN
  std::string url(const std::string& iqn, int lun) const;
  // "127.0.0.1:PORT", for portal=.
  std::string portal() const;
  // SIGKILL, reaped.
  void kill();
  // Starts again on the same port with the same targets (after kill()).
  void restart();

 private:
  void start();
  void tgtadm(const std::vector<std::string>& args);
  std::vector<Target> targets_;
  std::uint16_t port_ = 0;
  int control_ = 0;  // tgtd's -C: its control socket is DIR/sock.N
};

}  // namespace netblk::test
