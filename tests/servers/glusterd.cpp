#include "glusterd.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <thread>

namespace netblk::test {

namespace {

using namespace std::chrono_literals;

constexpr const char* kLockPath = "/run/lock/netblk-glusterd.lock";

// Gone, or a zombie nobody reaps.
bool gone(int pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  const auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] == 'Z';
}

// SIGTERM (or `signal`), SIGKILL after `grace`; reaps it when it is this process's child.
void stop_pid(int pid, int signal, std::chrono::milliseconds grace) {
  if (pid <= 0) return;
  ::kill(pid, signal);
  const auto deadline = std::chrono::steady_clock::now() + grace;
  bool killed = signal == SIGKILL;
  while (true) {
    int status = 0;
    const int r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid || (r < 0 && gone(pid))) return;
    if (!killed && std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      killed = true;
    }
    if (killed && std::chrono::steady_clock::now() > deadline + 10s) return;
    std::this_thread::sleep_for(2ms);
  }
}

int pid_from_file(const std::string& path) {
  std::ifstream in(path);
  int pid = -1;
  if (!(in >> pid)) return -1;
  return pid;
}

// A daemon's unix socket (its -S argument), read from its command line.
std::string socket_of(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  std::string arg;
  bool next = false;
  while (std::getline(in, arg, '\0')) {
    if (next) return arg;
    next = arg == "-S";
  }
  return {};
}

}  // namespace

Glusterd::Glusterd(std::vector<Volume> volumes) : volumes_(std::move(volumes)) {
  // One glusterd per machine: wait for another instance (a test binary, the benchmark).
  lock_fd_ = ::open(kLockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) throw std::runtime_error(std::string("cannot open ") + kLockPath);
  const auto until = std::chrono::steady_clock::now() + 600s;
  while (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    if (std::chrono::steady_clock::now() > until)
      throw std::runtime_error(std::string("another glusterd instance holds ") + kLockPath + " for 600 s");
    std::this_thread::sleep_for(100ms);
  }
  auto held = run({"ss", "-Hltnp", "sport = :" + std::to_string(kPort)}, 10s);
  if (!held.out.empty()) {
    ::close(lock_fd_);
    throw std::runtime_error("port 24007 is taken by a glusterd this test did not start: " + held.out);
  }
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);

  std::filesystem::create_directories(dir_ / "state");
  std::filesystem::create_directories(dir_ / "run");
  std::filesystem::create_directories(dir_ / "bricks");
  write_file(dir_ / "glusterd.vol",
             "volume management\n"
             "    type mgmt/glusterd\n"
             "    option working-directory " + dir_ / "state" + "\n"
             "    option run-directory " + dir_ / "run" + "\n"
             "    option glusterd-sockfile " + socket() + "\n"
             "    option transport-type socket\n"
             "    option transport.socket.bind-address 127.0.0.1\n"
             "    option transport.socket.listen-port 24007\n"
             "    option ping-timeout 0\n"
             "    option event-threads 1\n"
             "end-volume\n");
  auto ready = [this] {
    if (!wait_tcp(kPort, 20000ms) || !wait_unix(socket(), 20000ms)) return false;
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (std::chrono::steady_clock::now() < deadline) {
      auto r = run({"gluster", "--mode=script", "--glusterd-sock=" + socket(), "--log-file=" + dir_ / "cli.log",
                    "volume", "list"},
                   20s);
      if (r.exit_code == 0) return true;
      std::this_thread::sleep_for(20ms);
    }
    return false;
  };
  try {
    process_ = start_server({"/usr/sbin/glusterd", "-N", "-f", dir_ / "glusterd.vol", "-p", dir_ / "run/glusterd.pid",
                             "-l", dir_ / "glusterd.log"},
                            dir_ / "glusterd.out", ready, "glusterd", {dir_ / "glusterd.log"});
    for (const auto& v : volumes_) {
      std::vector<std::string> args{"volume", "create", v.name};
      if (v.replica) {
        args.push_back("replica");
        args.push_back(std::to_string(v.bricks));
      }
      for (int i = 0; i < v.bricks; ++i) {
        std::filesystem::create_directories(brick(v.name, i));
        // The CLI refuses "127.0.0.1" and "localhost" as brick hosts.
        args.push_back("127.1:" + brick(v.name, i));
      }
      args.push_back("force");
      gluster(args);
      gluster({"volume", "start", v.name});
      wait_bricks_online(v.name, v.bricks);
    }
  } catch (...) {
    stop_all();
    throw;
  }
}

Glusterd::~Glusterd() { stop_all(); }

void Glusterd::stop_all() {
  // Bricks and self-heal daemons first (their pid files are under the run directory),
  // then glusterd; each brick's socket in /var/run/gluster goes with it.
  std::vector<std::pair<int, std::string>> daemons;
  std::error_code ec;
  if (std::filesystem::exists(dir_ / "run", ec)) {
    for (const auto& e : std::filesystem::recursive_directory_iterator(dir_ / "run", ec)) {
      if (e.path().extension() != ".pid" || e.path().filename() == "glusterd.pid") continue;
      const int pid = pid_from_file(e.path());
      if (pid > 0 && !gone(pid)) daemons.emplace_back(pid, socket_of(pid));
    }
  }
  for (const auto& [pid, sock] : daemons) ::kill(pid, SIGKILL);
  for (const auto& [pid, sock] : daemons) {
    stop_pid(pid, SIGKILL, 0ms);
    if (!sock.empty()) std::filesystem::remove(sock, ec);
  }
  if (process_.pid() > 0) process_.stop(SIGTERM, 3000ms);
  if (lock_fd_ >= 0) {
    ::close(lock_fd_);
    lock_fd_ = -1;
  }
}

std::string Glusterd::url(const std::string& volume, const std::string& path) const {
  return "gluster://127.0.0.1:24007/" + volume + "/" + path;
}

std::string Glusterd::brick(const std::string& volume, int index) const {
  return dir_ / ("bricks/" + volume + "-" + std::to_string(index));
}

int Glusterd::brick_pid(const std::string& volume, int index) const {
  // run/vols/VOLUME/127.1-BRICK_PATH_WITH_DASHES.pid
  std::string name = brick(volume, index);
  for (auto& ch : name)
    if (ch == '/') ch = '-';
  return pid_from_file(dir_ / ("run/vols/" + volume + "/127.1" + name + ".pid"));
}

void Glusterd::kill_brick(const std::string& volume, int index) {
  const int pid = brick_pid(volume, index);
  if (pid <= 0) throw std::runtime_error("no pid file for brick " + std::to_string(index) + " of " + volume);
  const std::string sock = socket_of(pid);
  stop_pid(pid, SIGKILL, 0ms);
  std::error_code ec;
  if (!sock.empty()) std::filesystem::remove(sock, ec);
}

std::string Glusterd::gluster(const std::vector<std::string>& args) {
  std::vector<std::string> argv{"gluster", "--mode=script", "--glusterd-sock=" + socket(),
                                "--log-file=" + dir_ / "cli.log"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = run(argv, 60s);
  if (r.exit_code != 0) {
    std::string line;
    for (const auto& a : argv) line += a + " ";
    throw std::runtime_error("gluster CLI failed: " + line + ": " + r.out + r.err);
  }
  return r.out;
}

void Glusterd::wait_bricks_online(const std::string& volume, int bricks) {
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (std::chrono::steady_clock::now() < deadline) {
    int online = 0;
    for (int i = 0; i < bricks; ++i) {
      const int pid = brick_pid(volume, i);
      if (pid > 0 && !gone(pid)) ++online;
    }
    if (online == bricks) {
      auto r = run({"gluster", "--mode=script", "--glusterd-sock=" + socket(), "--log-file=" + dir_ / "cli.log",
                    "volume", "status", volume},
                   20s);
      int ys = 0;
      for (std::size_t at = 0; (at = r.out.find(" Y ", at)) != std::string::npos; ++at) ++ys;
      if (r.exit_code == 0 && ys >= bricks) return;
    }
    std::this_thread::sleep_for(20ms);
  }
  throw std::runtime_error("the bricks of volume " + volume + " did not come online: " + read_file(dir_ / "glusterd.log"));
}

}  // namespace netblk::test
