#include "servers.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dirent.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace netblk::test {
namespace fs = std::filesystem;
using namespace std::chrono;

TempDir::TempDir() : TempDir(std::getenv("TMPDIR") && *std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") {}

TempDir::TempDir(const std::string& base) {
  std::string tmpl = base + "/netblk-test-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed");
  path_ = buf.data();
  chmod(path_.c_str(), 0755);
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

namespace {
std::vector<char*> to_argv(const std::vector<std::string>& argv) {
  std::vector<char*> v;
  for (const auto& a : argv) v.push_back(const_cast<char*>(a.c_str()));
  v.push_back(nullptr);
  return v;
}

int decode_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

void exec_child(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env, int out_fd,
                int err_fd) {
  setpgid(0, 0);
  int devnull = open("/dev/null", O_RDONLY);
  dup2(devnull, 0);
  if (out_fd >= 0) dup2(out_fd, 1);
  if (err_fd >= 0) dup2(err_fd, 2);
  for (const auto& e : extra_env) putenv(const_cast<char*>(e.c_str()));
  auto args = to_argv(argv);
  execvp(args[0], args.data());
  _exit(127);
}
}  // namespace

Process::Process(const std::vector<std::string>& argv, const std::string& log_path,
                 const std::vector<std::string>& extra_env) {
  int log_fd = open(log_path.empty() ? "/dev/null" : log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  pid_ = fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) exec_child(argv, extra_env, log_fd, log_fd);
  if (log_fd >= 0) close(log_fd);
}

Process::Process(Process&& other) noexcept : pid_(other.pid_), status_(other.status_) { other.pid_ = -1; }
Process& Process::operator=(Process&& other) noexcept {
  if (this != &other) {
    stop();
    pid_ = other.pid_;
    status_ = other.status_;
    other.pid_ = -1;
  }
  return *this;
}
Process::~Process() { stop(); }

bool Process::running() {
  if (pid_ < 0) return false;
  int st;
  pid_t r = waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    status_ = st;
    pid_ = -1;
    return false;
  }
  return true;
}

int Process::stop(int signal, milliseconds grace) {
  if (pid_ < 0) return status_;
  kill(pid_, signal);
  auto deadline = steady_clock::now() + grace;
  while (steady_clock::now() < deadline) {
    int st;
    if (waitpid(pid_, &st, WNOHANG) == pid_) {
      status_ = st;
      pid_ = -1;
      return status_;
    }
    std::this_thread::sleep_for(milliseconds(5));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, &status_, 0);
  pid_ = -1;
  return status_;
}

int Process::wait(milliseconds timeout) {
  auto deadline = steady_clock::now() + timeout;
  while (pid_ >= 0 && steady_clock::now() < deadline) {
    if (!running()) return decode_status(status_);
    std::this_thread::sleep_for(milliseconds(5));
  }
  if (pid_ >= 0) {
    stop(SIGKILL);
    return 124;
  }
  return decode_status(status_);
}

RunResult run(const std::vector<std::string>& argv, seconds timeout, const std::vector<std::string>& extra_env) {
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) exec_child(argv, extra_env, out_pipe[1], err_pipe[1]);
  close(out_pipe[1]);
  close(err_pipe[1]);
  RunResult r;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  auto deadline = steady_clock::now() + timeout;
  bool timed_out = false;
  int open_fds = 2;
  while (open_fds > 0) {
    auto left = duration_cast<milliseconds>(deadline - steady_clock::now()).count();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    if (poll(fds, 2, static_cast<int>(std::min<long long>(left, 1000))) < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[65536];
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      } else {
        (i == 0 ? r.out : r.err).append(buf, static_cast<std::size_t>(n));
      }
    }
  }
  for (auto& f : fds)
    if (f.fd >= 0) close(f.fd);
  int st = 0;
  if (timed_out) {
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    r.exit_code = 124;
    return r;
  }
  // Output closed; the child may still be running briefly.
  auto left = deadline - steady_clock::now();
  auto wait_deadline = steady_clock::now() + std::max<steady_clock::duration>(left, seconds(1));
  while (waitpid(pid, &st, WNOHANG) == 0) {
    if (steady_clock::now() > wait_deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      r.exit_code = 124;
      return r;
    }
    std::this_thread::sleep_for(milliseconds(2));
  }
  r.exit_code = decode_status(st);
  return r;
}

std::string netblk_binary() {
  if (const char* p = std::getenv("NETBLK_BINARY")) return p;
#ifdef NETBLK_BINARY
  return NETBLK_BINARY;
#else
  return "netblk";
#endif
}

RunResult netblk(const std::vector<std::string>& args, seconds timeout) {
  std::vector<std::string> argv{netblk_binary()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(argv, timeout);
}

std::uint16_t free_port() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    throw std::runtime_error("bind failed");
  }
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

bool wait_tcp(std::uint16_t port, milliseconds timeout) {
  auto deadline = steady_clock::now() + timeout;
  while (steady_clock::now() < deadline) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    close(fd);
    if (ok) return true;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return false;
}

bool wait_unix(const std::string& path, milliseconds timeout) {
  auto deadline = steady_clock::now() + timeout;
  while (steady_clock::now() < deadline) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    close(fd);
    if (ok) return true;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return false;
}

bool wait_udp(std::uint16_t port, milliseconds timeout) {
  char hex[8];
  std::snprintf(hex, sizeof hex, ":%04X", port);
  auto deadline = steady_clock::now() + timeout;
  while (steady_clock::now() < deadline) {
    std::ifstream in("/proc/net/udp");
    std::string line;
    while (std::getline(in, line)) {
      // local_address is "0100007F:PORT"
      std::istringstream ls(line);
      std::string sl, local;
      ls >> sl >> local;
      if (local.size() > 5 && local.substr(local.size() - 5) == hex) return true;
    }
    std::this_thread::sleep_for(milliseconds(10));
  }
  return false;
}

bool have_program(const std::string& program) {
  if (program.find('/') != std::string::npos) return access(program.c_str(), X_OK) == 0;
  const char* path = std::getenv("PATH");
  std::string p = path ? path : "/usr/bin:/bin";
  p += ":/usr/sbin:/sbin";
  std::istringstream ss(p);
  std::string dir;
  while (std::getline(ss, dir, ':'))
    if (access((dir + "/" + program).c_str(), X_OK) == 0) return true;
  return false;
}

void write_pattern_file(const std::string& path, std::uint64_t size, std::uint32_t seed) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  std::mt19937_64 rng(seed);
  std::vector<std::uint64_t> block(8192);
  std::uint64_t left = size;
  while (left) {
    for (auto& w : block) w = rng();
    std::uint64_t n = std::min<std::uint64_t>(left, block.size() * 8);
    out.write(reinterpret_cast<const char*>(block.data()), static_cast<std::streamsize>(n));
    left -= n;
  }
  chmod(path.c_str(), 0644);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
}

std::uint64_t file_hash(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::uint64_t h = 1469598103934665603ull;
  char buf[1 << 16];
  while (in) {
    in.read(buf, sizeof buf);
    for (std::streamsize i = 0; i < in.gcount(); ++i) h = (h ^ static_cast<unsigned char>(buf[i])) * 1099511628211ull;
  }
  return h;
}

Process start_server(const std::vector<std::string>& argv, const std::string& log_path,
                     const std::function<bool()>& ready, const std::string& what,
                     const std::vector<std::string>& more_logs, const std::vector<std::string>& extra_env) {
  Process p(argv, log_path, extra_env);
  if (!ready()) {
    p.stop();
    std::string text = what + " did not start: " + read_file(log_path);
    for (const auto& log : more_logs) text += read_file(log);
    throw std::runtime_error(text);
  }
  return p;
}

void make_self_signed_cert(const std::string& cert_path, const std::string& key_path) {
  auto r = run({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key_path, "-out", cert_path});
  if (r.exit_code != 0) throw std::runtime_error("openssl req failed: " + r.err);
  chmod(cert_path.c_str(), 0644);
  chmod(key_path.c_str(), 0644);
}

void make_tls_certs(const TempDir& dir, const std::string& server_dir, const std::string& client_dir,
                    const std::string& tag) {
  std::filesystem::create_directories(server_dir);
  std::filesystem::create_directories(client_dir);
  const std::string ca_key = dir / (tag + "ca-key.pem"), ca_cert = dir / (tag + "ca-cert.pem");
  auto ok = [](const RunResult& r) {
    if (r.exit_code != 0) throw std::runtime_error("certtool failed: " + r.err);
  };
  write_file(dir / (tag + "ca.info"), "cn = netblk test CA " + tag + "\nca\ncert_signing_key\nexpiration_days = 3\n");
  write_file(dir / (tag + "server.info"),
             "cn = 127.0.0.1\nip_address = 127.0.0.1\ndns_name = localhost\ntls_www_server\nencryption_key\n"
             "signing_key\nexpiration_days = 3\n");
  write_file(dir / (tag + "client.info"),
             "cn = netblk client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 3\n");
  ok(run({"certtool", "--generate-privkey", "--outfile", ca_key}));
  ok(run({"certtool", "--generate-self-signed", "--load-privkey", ca_key, "--template", dir / (tag + "ca.info"),
          "--outfile", ca_cert}));
  for (const std::string side : {"server", "client"}) {
    const std::string d = side == "server" ? server_dir : client_dir;
    ok(run({"certtool", "--generate-privkey", "--outfile", d + "/" + side + "-key.pem"}));
    ok(run({"certtool", "--generate-certificate", "--load-privkey", d + "/" + side + "-key.pem",
            "--load-ca-certificate", ca_cert, "--load-ca-privkey", ca_key, "--template",
            dir / (tag + side + ".info"), "--outfile", d + "/" + side + "-cert.pem"}));
    std::filesystem::copy_file(ca_cert, d + "/ca-cert.pem", std::filesystem::copy_options::overwrite_existing);
  }
}
namespace {

// Every process below `root` (its children, theirs, ...), from /proc.
std::vector<int> descendants(int root) {
  std::multimap<int, int> children;
  if (DIR* d = opendir("/proc")) {
    while (dirent* e = readdir(d)) {
      const int pid = std::atoi(e->d_name);
      if (pid <= 0) continue;
      const std::string stat = read_file("/proc/" + std::string(e->d_name) + "/stat");
      const auto close = stat.rfind(')');
      if (close == std::string::npos) continue;
      std::istringstream rest(stat.substr(close + 2));
      char state;
      int ppid = 0;
      rest >> state >> ppid;
      children.emplace(ppid, pid);
    }
    closedir(d);
  }
  std::vector<int> out, todo{root};
  while (!todo.empty()) {
    const int p = todo.back();
    todo.pop_back();
    auto [lo, hi] = children.equal_range(p);
    for (auto it = lo; it != hi; ++it) {
      out.push_back(it->second);
      todo.push_back(it->second);
    }
  }
  return out;
}

// The state letter of a process in /proc ('T' when stopped), or 0 when it is gone.
char process_state(int pid) {
  const std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  const auto close = stat.rfind(')');
  return close == std::string::npos || close + 2 >= stat.size() ? 0 : stat[close + 2];
}

// Sends SIGSTOP and waits (up to 1 s) until it took effect: a signal acts when the process
// next runs, and a process still running may fork meanwhile.
void stop_process(int pid) {
  ::kill(pid, SIGSTOP);
  for (int i = 0; i < 1000; ++i) {
    const char state = process_state(pid);
    if (state == 'T' || state == 't' || state == 0) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

}  // namespace

void Daemon::kill_tree() {
  if (!running()) return;
  const int pid = process_.pid();
  // Everything stopped first (no new children while we look, and no parent that respawns
  // a worker it saw die), then killed while still stopped: a client that reconnects at
  // once is refused, never served by a child started after the look.
  stop_process(pid);
  for (int p : descendants(pid)) stop_process(p);
  std::vector<int> tree = descendants(pid);  // children forked before their parent stopped
  for (int p : tree) stop_process(p);
  tree = descendants(pid);
  ::kill(pid, SIGKILL);
  for (int p : tree) ::kill(p, SIGKILL);
  process_.stop(SIGKILL);
}

}  // namespace netblk::test
