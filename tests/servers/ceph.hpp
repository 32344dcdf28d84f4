// A Ceph cluster for librbd's tests: one monitor and one OSD (memstore) on 127.0.0.1, all
// their state, sockets and logs in a TempDir, with a pool "rbd" ready for RBD I/O before the
// constructor returns (about 3 s without authentication, 10 s with cephx). No manager: RBD
// needs none. The monitor and the OSD are stopped by PID.
//
// With cephx, the client.admin keyring is named by the configuration file's [client]
// section (conf() alone reaches the cluster) and its key is admin_key().
#pragma once
#include <string>
#include <vector>

#include "servers.hpp"

namespace netblk::test {

class CephCluster : public Daemon {
 public:
  enum class Auth { none, cephx };
  explicit CephCluster(Auth auth);
  ~CephCluster();

  Auth auth() const { return auth_; }
  // The configuration file every client may be given (conf=).
  std::string conf() const { return dir_ / "ceph.conf"; }
  // 127.0.0.1:PORT of the monitor's v1 and v2 addresses.
  int mon_port() const { return port_v1_; }
  int mon_port_v2() const { return port_v2_; }
  // cephx: the client.admin keyring and its key (base64, as in the keyring).
  std::string admin_keyring() const { return dir_ / "admin.keyring"; }
  std::string admin_key() const { return admin_key_; }
  // CEPH_CONF=conf(), for ceph, rbd and rados.
  std::vector<std::string> env() const { return {"CEPH_CONF=" + conf()}; }
  // Runs the rbd tool (or `ceph`, `rados` as argv[0]) against the cluster; throws on failure.
  std::string tool(const std::vector<std::string>& argv);
  // Runs it and returns the result, failure or not.
  RunResult try_tool(const std::vector<std::string>& argv);

  Process& osd() { return osd_; }
  Process& mon() { return process_; }

 private:
  Auth auth_;
  int port_v1_ = 0;
  int port_v2_ = 0;
  std::string admin_key_;
  Process osd_;
};

}  // namespace netblk::test
