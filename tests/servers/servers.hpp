// Helpers for integration tests: temporary directories, child processes stopped by PID,
// free loopback ports, readiness probes, and running the netblk CLI or a reference tool.
// Every server a test starts listens on 127.0.0.1 or a unix socket in its own TempDir.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace netblk::test {

// A fresh directory under $TMPDIR (world-readable, so daemons that drop privileges can
// read files in it), removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  // Under `base` instead of $TMPDIR or /tmp (for example /dev/shm, for tmpfs).
  explicit TempDir(const std::string& base);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A child process started with execvp (no shell), stopped by its PID.
class Process {
 public:
  Process() = default;
  // Starts argv[0] with `argv`; stdout and stderr go to `log_path` (or /dev/null if empty).
  Process(const std::vector<std::string>& argv, const std::string& log_path = {},
          const std::vector<std::string>& extra_env = {});
  Process(Process&& other) noexcept;
  Process& operator=(Process&& other) noexcept;
  ~Process();  // stop()

  int pid() const { return pid_; }
  bool running();
  // Sends `signal` (SIGTERM by default, SIGKILL after `grace`) and reaps the child.
  // Returns the wait status.
  int stop(int signal = 15, std::chrono::milliseconds grace = std::chrono::milliseconds(5000));
  // Waits for the child to exit by itself (up to `timeout`, then kills it); returns the
  // exit code, or 128+signal.
  int wait(std::chrono::milliseconds timeout);

 private:
  int pid_ = -1;
  int status_ = 0;
};

struct RunResult {
  int exit_code = -1;  // 128+signal when killed, 124 on timeout
  std::string out;     // stdout
  std::string err;     // stderr
};

// Runs a command to completion (no shell) with a timeout; captures stdout and stderr.
RunResult run(const std::vector<std::string>& argv, std::chrono::seconds timeout = std::chrono::seconds(120),
              const std::vector<std::string>& extra_env = {});
// Runs the netblk CLI under test. (run_netblk: the same, and unambiguous next to
// `using namespace netblk::test`.)
RunResult netblk(const std::vector<std::string>& args, std::chrono::seconds timeout = std::chrono::seconds(120));
inline RunResult run_netblk(const std::vector<std::string>& args,
                            std::chrono::seconds timeout = std::chrono::seconds(120)) {
  return netblk(args, timeout);
}
// The path of the netblk binary under test.
std::string netblk_binary();

// A TCP port on 127.0.0.1 that is free right now (bind to port 0, read, close).
std::uint16_t free_port();
// Waits until something accepts TCP connections on 127.0.0.1:port (false on timeout).
bool wait_tcp(std::uint16_t port, std::chrono::milliseconds timeout = std::chrono::milliseconds(20000));
// Waits until a unix socket accepts connections.
bool wait_unix(const std::string& path, std::chrono::milliseconds timeout = std::chrono::milliseconds(20000));
// Waits until a UDP port on 127.0.0.1 is bound (via /proc/net/udp).
bool wait_udp(std::uint16_t port, std::chrono::milliseconds timeout = std::chrono::milliseconds(20000));

// Starts a server (`argv`, its output in `log_path`) and waits until `ready()` says it serves,
// probing (no sleeps); if it never does, stops it and throws std::runtime_error naming
// `what`, with `log_path`'s text and that of `more_logs`.
Process start_server(const std::vector<std::string>& argv, const std::string& log_path,
                     const std::function<bool()>& ready, const std::string& what,
                     const std::vector<std::string>& more_logs = {}, const std::vector<std::string>& extra_env = {});

// What every server launcher has: a TempDir of its own for its config, logs, pid file and
// sockets, and the server's process, stopped by PID (at the latest on destruction, before
// the directory goes).
class Daemon {
 public:
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;
  const TempDir& dir() const { return dir_; }
  Process& process() { return process_; }
  bool running() { return process_.running(); }
  // Process::stop: the signal, SIGKILL after a grace period; returns the wait status.
  int stop(int signal = 15) { return process_.stop(signal); }
  // A crash: SIGKILL to the server and every process below it (servers that fork a
  // process per connection keep serving through those otherwise).
  void kill_tree();

 protected:
  Daemon() = default;
  ~Daemon() = default;
  TempDir dir_;
  Process process_;
};

// True when `program` is on PATH (or an absolute path that exists).
bool have_program(const std::string& program);

// Writes `size` bytes of deterministic pseudo-random data (seeded) to `path`.
void write_pattern_file(const std::string& path, std::uint64_t size, std::uint32_t seed = 1);
std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& content);
// A CA plus server and client certificates for 127.0.0.1 (certtool), in QEMU's
// tls-creds-x509 layout: `server_dir` gets ca-cert.pem + server-{cert,key}.pem, `client_dir`
// ca-cert.pem + client-{cert,key}.pem. `tag` keeps several CAs in one `dir` apart.
// Throws std::runtime_error if certtool fails.
void make_tls_certs(const TempDir& dir, const std::string& server_dir, const std::string& client_dir,
                    const std::string& tag);
// A self-signed certificate for IP 127.0.0.1 (openssl req) and its key, both readable by
// daemons that drop privileges. Throws std::runtime_error if openssl fails.
void make_self_signed_cert(const std::string& cert_path, const std::string& key_path);
// SHA-256-free content fingerprint (FNV-1a 64) of a file's bytes, for quick equality.
std::uint64_t file_hash(const std::string& path);

// One T (a server launcher, or a set of servers and the files they serve) for the whole test
// binary: made by the first test that asks for it, destroyed at exit (which stops its
// processes by PID). If T's constructor throws, the exception reaches that test and the
// next caller tries again.
template <class T>
T& shared() {
  static T instance;
  return instance;
}

}  // namespace netblk::test
