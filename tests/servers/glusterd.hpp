// glusterd (GlusterFS 10) in the foreground on 127.0.0.1:24007 with a volfile of its own that
// puts its working directory, run directory and CLI socket in its TempDir; volumes made of
// brick directories in that TempDir (`force`: bricks on the root filesystem), started and
// ready (every brick online) before the constructor returns.
//
// Only one glusterd can run on a machine (the port is fixed): an instance holds an exclusive
// lock (/run/lock/netblk-glusterd.lock, also taken by bench/gluster.sh) for its lifetime, so
// a second one waits for the first to stop instead of failing. If something else holds the
// port, the constructor throws naming it.
//
// glusterd starts the brick and self-heal daemons itself; they daemonize. This process
// becomes a child subreaper (prctl) so that they are its children: they are stopped by the
// PIDs in their pid files, and reaped, when the instance goes (or kill_brick()).
#pragma once
#include <string>
#include <vector>

#include "servers.hpp"

namespace netblk::test {

class Glusterd : public Daemon {
 public:
  struct Volume {
    std::string name{};
    int bricks = 1;
    bool replica = false;  // replica N (N = bricks), else distribute
  };
  explicit Glusterd(std::vector<Volume> volumes);
  ~Glusterd();

  static constexpr int kPort = 24007;
  // gluster://127.0.0.1:24007/VOLUME/PATH
  std::string url(const std::string& volume, const std::string& path) const;
  // glusterd's CLI socket (for gluster+unix://).
  std::string socket() const { return dir_ / "run/glusterd.socket"; }
  // The brick directory that holds a distribute volume's files as they are.
  std::string brick(const std::string& volume, int index) const;
  // The PID of a brick's daemon (from its pid file); -1 if none.
  int brick_pid(const std::string& volume, int index) const;
  // SIGKILL to one brick's daemon, reaped.
  void kill_brick(const std::string& volume, int index);
  // Runs the gluster CLI against this glusterd; throws on failure. Returns stdout.
  std::string gluster(const std::vector<std::string>& args);

 private:
  void wait_bricks_online(const std::string& volume, int bricks);
  void stop_all();
  std::vector<Volume> volumes_;
  int lock_fd_ = -1;
};

}  // namespace netblk::test
