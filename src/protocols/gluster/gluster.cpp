// The GlusterFS protocol driver: gluster[+tcp|+unix|+rdma]:// URLs or driver=gluster with
// QEMU's options, through libgfapi.
//
// Every node of the process that names the same volume and server list shares one gfapi
// connection (a glfs_t, with its ~10 threads and 10-20 MB). It is made once, by glfs_init on
// a thread of its own with a deadline (glfs_init can wait for ever), after the volfile
// servers were tried in turn so that a dead one neither costs gfapi's 3 s failover nor
// goes unnamed in an error. Reads, writes, flushes, zeroes and discards are gfapi's async
// calls: gfapi calls back on its own threads, and the completion is posted to the
// executor of the coroutine that waits (never resumed there). Opening, closing and
// SEEK_DATA/SEEK_HOLE are blocking calls, offloaded with a deadline.
//
// Closing a node fsyncs what it wrote (unless cache.no-flush says not to) and closes its
// file, which waits for whatever gfapi's write-behind still holds (flush-behind is off on
// every connection); the connection itself is never finished with glfs_fini, which spends
// ~10 s polling for frames that cannot exist once every file is closed: it ends with the
// process (docs/decisions.md, "GlusterFS connections end with the process").
#include <fcntl.h>
#include <glusterfs/api/glfs.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <asio/post.hpp>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "block/driver.hpp"
#include "core/deadline.hpp"
#include "core/library_call.hpp"
#include "core/log.hpp"
#include "core/shared_connection.hpp"
#include "protocols/gluster/gluster_config.hpp"

namespace netblk::gluster {
namespace {

using namespace std::chrono_literals;

// glfs_init, which can wait for ever (a socket that is not glusterd's CLI socket). It
// takes 5-250 ms; gfapi's failover between volfile servers is 3 s, and the servers that do
// not answer were put last.
constexpr std::chrono::seconds kInitLimit = 10s;
// Blocking calls (open, stat, lseek, close): longer than gfapi's own 42 s ping-timeout,
// after which it fails them itself.
constexpr std::chrono::seconds kCallLimit = 60s;
// Reaching one volfile server before glfs_init.
constexpr int kProbeMillis = 2000;
// Reads and writes: node.cpp splits at this (its own cap is 32 MiB), far below the 1 GiB
// that some GlusterFS versions fail on.
constexpr std::uint64_t kMaxTransfer = 32u << 20;
// Zerofill and discard ranges: below 1 GiB too.
constexpr std::uint64_t kMaxRanged = 512u << 20;

std::string errno_text(int err) { return std::strerror(err); }

// ---------------------------------------------------------------------------------------
// gfapi's async calls as awaitables

struct GfResult {
  ssize_t ret = 0;
  int err = 0;
};

// gfapi calls this on one of its threads.
void gf_callback(glfs_fd_t*, ssize_t ret, struct glfs_stat*, struct glfs_stat*, void* data) {
  const int err = ret < 0 ? (errno ? errno : EIO) : 0;
  static_cast<LibraryCall<GfResult>*>(data)->complete(GfResult{ret, err});
}

// Runs submit(callback, data) (a glfs_*_async call) and waits for its callback.
template <class Submit>
Task<GfResult> gf_async(Submit submit) {
  auto start = [submit = std::move(submit)](LibraryCall<GfResult>* call) mutable {
    errno = 0;
    if (submit(&gf_callback, static_cast<void*>(call)) < 0) call->complete(GfResult{-1, errno ? errno : EIO});
  };
  co_return co_await await_library_call<GfResult>(std::move(start));
}

// ---------------------------------------------------------------------------------------
// The process's gfapi connections

// Whether a volfile server accepts connections: "" if it does, else why not.
std::string probe(const spec::SocketAddress& s) {
  if (s.type == spec::SocketAddress::Type::unix_socket) {
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    if (s.path.size() >= sizeof(sa.sun_path)) return "socket path too long";
    std::memcpy(sa.sun_path, s.path.data(), s.path.size());
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return errno_text(errno);
    const int r = ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa));
    const int err = errno;
    ::close(fd);
    return r == 0 ? "" : errno_text(err);
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_family = s.ipv4_only ? AF_INET : s.ipv6_only ? AF_INET6 : AF_UNSPEC;
  addrinfo* found = nullptr;
  if (const int rc = ::getaddrinfo(s.host.c_str(), s.port.c_str(), &hints, &found); rc != 0)
    return std::string("cannot resolve host: ") + ::gai_strerror(rc);
  std::string why = "no address";
  for (addrinfo* a = found; a; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      why = errno_text(errno);
      continue;
    }
    int err = 0;
    if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      err = errno;
      if (err == EINPROGRESS) {
        pollfd p{fd, POLLOUT, 0};
        const int n = ::poll(&p, 1, kProbeMillis);
        socklen_t len = sizeof(err);
        if (n == 0)
          err = ETIMEDOUT;
        else if (n < 0 || ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
          err = errno;
      }
    }
    ::close(fd);
    if (err == 0) {
      ::freeaddrinfo(found);
      return "";
    }
    why = errno_text(err);
  }
  ::freeaddrinfo(found);
  return why;
}

// One glfs_t, made by init() (core/shared_connection.hpp).
class Connection : public SharedConnection<glfs_t*> {
 public:
  glfs_t* fs() const noexcept { return handle(); }
  // Closing a file waits for its written bytes to reach the bricks.
  bool flush_waits() const noexcept { return flush_waits_; }

  void init(const GlusterConfig& c) {
    // Servers that accept connections first, in the order given; the others after them,
    // for gfapi to try should they come back.
    std::vector<std::size_t> order, down;
    std::string unreachable;
    for (std::size_t i = 0; i < c.servers.size(); ++i) {
      const std::string why = probe(c.servers[i]);
      if (why.empty()) {
        order.push_back(i);
      } else {
        down.push_back(i);
        unreachable += (unreachable.empty() ? "" : "; ") + describe_server(c, i) + ": " + why;
        NETBLK_LOG(debug, "gluster volume {}: {} does not answer: {}", c.volume, describe_server(c, i), why);
      }
    }
    const std::string start = "Gluster connection for volume " + c.volume + ", path " + c.path + " failed";
    if (order.empty()) return finish(nullptr, ECONNREFUSED, start + ": no volfile server answers (" + unreachable + ")");
    order.insert(order.end(), down.begin(), down.end());

    glfs_t* fs = glfs_new(c.volume.c_str());
    if (!fs) return finish(nullptr, errno ? errno : ENOMEM, start + ": glfs_new: " + errno_text(errno ? errno : ENOMEM));
    for (const std::size_t i : order) {
      const auto& s = c.servers[i];
      const bool unix_socket = s.type == spec::SocketAddress::Type::unix_socket;
      const int port = unix_socket ? 0 : std::stoi(s.port);
      if (glfs_set_volfile_server(fs, unix_socket ? "unix" : "tcp", unix_socket ? s.path.c_str() : s.host.c_str(),
                                  port) != 0) {
        const int err = errno ? errno : EINVAL;
        finish(nullptr, err, start + ": " + describe_server(c, i) + " was refused by gfapi: " + errno_text(err));
        glfs_fini(fs);
        return;
      }
    }
    // A file's close (its FLUSH) then waits for the writes gfapi's write-behind still holds
    // (by default it returns at once and sends them later): with no glfs_fini to finish
    // them, a close that returned early could lose them at exit.
    flush_waits_ = glfs_set_xlator_option(fs, "*-write-behind", "flush-behind", "off") == 0;
    // gfapi's own log: where logfile= says, else only with NETBLK_LOG=debug (on stderr),
    // so that errors stay the one line netblk prints (gfapi writes even at level 4).
    std::string logfile = c.logfile;
    if (logfile == kDefaultLogfile && !log::enabled(log::Level::debug)) logfile = "/dev/null";
    glfs_set_logging(fs, logfile.c_str(), c.debug);
    errno = 0;
    const int rc = glfs_init(fs);
    const int err = errno ? errno : EINVAL;
    if (rc == 0) return finish(fs, 0, {});
    std::string asked;
    for (const std::size_t i : order) {
      if (std::find(down.begin(), down.end(), i) != down.end()) continue;
      asked += (asked.empty() ? "" : ", ") + describe_server(c, i);
    }
    std::string message = start + ": " + errno_text(err) + " (from " + asked;
    if (err == ENOENT) message += ", which does not know volume '" + c.volume + "'";
    if (!unreachable.empty()) message += "; " + unreachable;
    finish(nullptr, err, message + ")");
    glfs_fini(fs);  // after the waiters were told: a failed init's fini takes about 1 s
  }

 private:
  bool flush_waits_ = false;
};

// The connection for `c` into `out`.
Task<void> connect(const GlusterConfig& c, const std::string& name, std::shared_ptr<Connection>& out) {
  auto init = [c](Connection& conn) { conn.init(c); };
  const std::string key = connection_key(c);
  const std::string too_slow = name + ": Gluster connection for volume " + c.volume + " did not complete within " +
                               std::to_string(kInitLimit.count()) + " s";
  co_await connect_shared(key, std::move(init), kInitLimit, name, too_slow, out);
}

// ---------------------------------------------------------------------------------------
// The node

struct Opened {
  glfs_fd_t* fd = nullptr;
  int err = 0;
  std::uint64_t size = 0;
  std::int64_t allocated = -1;
  bool seek_data = false;
};

struct Seek {
  int drain_err = 0;  // the fstat before the seeks failed
  off_t data = -1;
  int data_err = 0;
  off_t hole = -1;
  int hole_err = 0;
};

class GlusterNode final : public Node {
 public:
  GlusterNode(const OpenContext& ctx, GlusterConfig config, std::shared_ptr<Connection> conn, const Opened& f)
      : Node(ctx.executor),
        config_(std::move(config)),
        name_(gluster::display_name(config_)),
        conn_(std::move(conn)),
        fd_(f.fd),
        allocated_(f.allocated),
        no_flush_(ctx.cache_no_flush) {
    size_ = f.size;
    limits_.request_alignment = 1;
    limits_.max_transfer = kMaxTransfer;
    limits_.max_zero = kMaxRanged;
    limits_.max_discard = kMaxRanged;
    caps_.read_only = ctx.read_only;
    caps_.can_flush = !ctx.read_only;
    caps_.can_zero = !ctx.read_only;
    caps_.can_discard = !ctx.read_only;
    caps_.has_block_status = f.seek_data;
    caps_.can_grow = !ctx.read_only;  // writes past the end extend the file
    caps_.any_write_order = true;  // the brick's file system places the blocks at writeback
  }

  ~GlusterNode() override {
    // Not closed: release the file off the loop (fsync first when it was written).
    if (!fd_) return;
    asio::post(worker_pool(), [fd = fd_, wrote = written_ != synced_, conn = conn_] {
      if (wrote) glfs_fsync(fd, nullptr, nullptr);
      glfs_close(fd);
    });
  }

  std::string_view driver() const override { return "gluster"; }
  Json options() const override { return canonical_options(config_); }
  std::string plain_filename() const override { return gluster::plain_filename(config_); }
  // A file created by truncation reads as zeroes.
  bool has_zero_init() const override { return true; }
  ImageInfo image_info() const override {
    ImageInfo info;
    info.allocated_bytes = allocated_;
    return info;
  }

 protected:
  Task<void> co_read(std::uint64_t offset, std::span<std::byte> buf) override {
    iovec iov{buf.data(), buf.size()};
    glfs_fd_t* fd = fd_;
    auto submit = [fd, &iov, offset](glfs_io_cbk cb, void* data) {
      return glfs_preadv_async(fd, &iov, 1, static_cast<off_t>(offset), 0, cb, data);
    };
    const GfResult r = co_await gf_async(std::move(submit));
    check_transfer(r, buf.size(), offset, "read");
  }

  Task<void> co_write(std::uint64_t offset, std::span<const std::byte> buf, unsigned) override {
    iovec iov{const_cast<std::byte*>(buf.data()), buf.size()};
    glfs_fd_t* fd = fd_;
    auto submit = [fd, &iov, offset](glfs_io_cbk cb, void* data) {
      return glfs_pwritev_async(fd, &iov, 1, static_cast<off_t>(offset), 0, cb, data);
    };
    const GfResult r = co_await gf_async(std::move(submit));
    ++written_;
    check_transfer(r, buf.size(), offset, "write");
  }

  Task<void> co_write_zeroes(std::uint64_t offset, std::uint64_t length, unsigned flags) override {
    // As QEMU's: zerofill may write the zeroes on the brick (a file system without
    // FALLOC_FL_ZERO_RANGE), so it is not offered as fast.
    if (flags & kZeroFast) throw Error(ENOTSUP, name_ + ": no fast zeroing");
    if (zerofill_works_) {
      glfs_fd_t* fd = fd_;
      auto submit = [fd, offset, length](glfs_io_cbk cb, void* data) {
        return glfs_zerofill_async(fd, static_cast<off_t>(offset), static_cast<off_t>(length), cb, data);
      };
      const GfResult r = co_await gf_async(std::move(submit));
      ++written_;
      if (r.ret >= 0) co_return;
      if (r.err != ENOTSUP && r.err != EOPNOTSUPP) throw failure(r.err, offset, "write zeroes");
      zerofill_works_ = false;
      NETBLK_LOG(debug, "{}: zerofill is not supported; writing zeroes instead", name_);
    }
    co_await Node::co_write_zeroes(offset, length, flags);
  }

  Task<void> co_discard(std::uint64_t offset, std::uint64_t length, unsigned) override {
    if (!discard_works_) co_return;
    glfs_fd_t* fd = fd_;
    auto submit = [fd, offset, length](glfs_io_cbk cb, void* data) {
      return glfs_discard_async(fd, static_cast<off_t>(offset), static_cast<size_t>(length), cb, data);
    };
    const GfResult r = co_await gf_async(std::move(submit));
    ++written_;
    if (r.ret >= 0) co_return;
    // Advisory: a volume that cannot punch holes keeps the bytes.
    if (r.err != ENOTSUP && r.err != EOPNOTSUPP) throw failure(r.err, offset, "discard");
    discard_works_ = false;
  }

  Task<void> co_flush() override {
    if (read_only() || no_flush_) co_return;
    co_await fsync();
  }

  Task<BlockStatus> co_block_status(std::uint64_t offset, std::uint64_t length) override {
    // As the file driver: a protocol node allocates every byte it has, holes too.
    const BlockStatus data{length, kStatusData | kStatusAllocated, offset};
    if (!caps().has_block_status) co_return data;
    glfs_fd_t* fd = fd_;
    const auto at = static_cast<off_t>(offset);
    // gfapi's write-behind answers writes before the brick has them, and passes SEEK_DATA
    // on without waiting for them: the brick would report a hole where they go. An fstat
    // waits for them (write-behind must, for the size it returns).
    const bool drain = written_ != drained_;
    const std::uint64_t covers = written_;
    auto seek = [fd, at, drain, seeking = seeking_]() {
      Seek s;
      struct stat st {};
      if (drain && glfs_fstat(fd, &st) != 0) {
        s.drain_err = errno ? errno : EIO;
        return s;
      }
      // glfs_lseek returns the file's offset after the call rather than the call's result:
      // two seeks on one file at once may each get the other's answer (a hole where data
      // is, and a copy with zeroes in its place).
      std::lock_guard one_at_a_time(*seeking);
      errno = 0;
      s.data = glfs_lseek(fd, at, SEEK_DATA);
      s.data_err = errno;
      if (s.data == at) {
        errno = 0;
        s.hole = glfs_lseek(fd, at, SEEK_HOLE);
        s.hole_err = errno;
      }
      return s;
    };
    const std::string what = name_ + ": block status";
    const Seek s = co_await offload(std::move(seek), kCallLimit, what);
    if (s.drain_err) throw failure(s.drain_err, offset, "block status");
    drained_ = std::max(drained_, covers);
    // As QEMU's find_allocation: a hole up to the next data (or to the end: ENXIO), data up
    // to the next hole; anything unexpected is data.
    if (s.data < 0) {
      if (s.data_err == ENXIO) co_return BlockStatus{length, kStatusZero | kStatusAllocated, offset};
      co_return data;
    }
    if (s.data > at) {
      const auto hole = static_cast<std::uint64_t>(s.data) - offset;
      co_return BlockStatus{std::min(length, hole), kStatusZero | kStatusAllocated, offset};
    }
    if (s.hole > at) {
      const auto run = static_cast<std::uint64_t>(s.hole) - offset;
      co_return BlockStatus{std::min(length, run), kStatusData | kStatusAllocated, offset};
    }
    co_return data;
  }

  // `netblk resize`: the file made exactly `size` bytes long.
  Task<void> co_truncate(std::uint64_t size) override {
    glfs_fd_t* fd = fd_;
    auto work = [fd, size]() {
      errno = 0;
      return glfs_ftruncate(fd, static_cast<off_t>(size), nullptr, nullptr) == 0 ? 0 : (errno ? errno : EIO);
    };
    const std::string what = name_ + ": resize";
    const int err = co_await offload(std::move(work), kCallLimit, what);
    ++written_;
    if (err) throw Error(err, name_ + ": resizing to " + std::to_string(size) + " bytes failed: " + errno_text(err));
    size_ = size;
  }

  Task<void> co_close() override {
    if (!fd_) co_return;
    glfs_fd_t* fd = fd_;
    fd_ = nullptr;
    std::exception_ptr first;
    // Written bytes leave this process before the file closes: the connection is never
    // finished (glfs_fini), so nothing else would send them. The close does that itself
    // when write-behind's flush waits; otherwise (or when flushes are wanted) an fsync.
    if (written_ != synced_ && !(no_flush_ && conn_->flush_waits())) {
      try {
        co_await fsync_fd(fd);
      } catch (...) {
        first = std::current_exception();
      }
    }
    auto close = [fd]() {
      errno = 0;
      return glfs_close(fd) == 0 ? 0 : (errno ? errno : EIO);
    };
    const std::string what = name_ + ": close";
    const int err = co_await offload(std::move(close), kCallLimit, what);
    if (first) std::rethrow_exception(first);
    if (err) throw Error(err, name_ + ": close failed: " + errno_text(err));
  }

 private:
  Task<void> fsync() { co_await fsync_fd(fd_); }

  Task<void> fsync_fd(glfs_fd_t* fd) {
    const std::uint64_t covers = written_;  // the writes completed so far
    auto submit = [fd](glfs_io_cbk cb, void* data) { return glfs_fsync_async(fd, cb, data); };
    const GfResult r = co_await gf_async(std::move(submit));
    if (r.ret < 0) throw Error(r.err, name_ + ": flush failed: " + errno_text(r.err));
    synced_ = std::max(synced_, covers);
    drained_ = std::max(drained_, covers);
  }

  Error failure(int err, std::uint64_t offset, const char* what) const {
    return Error(err, name_ + ": " + what + " at offset " + std::to_string(offset) + " failed: " + errno_text(err));
  }

  // A short read or write is an error, as QEMU's.
  void check_transfer(const GfResult& r, std::size_t wanted, std::uint64_t offset, const char* what) const {
    if (r.ret < 0) throw failure(r.err, offset, what);
    if (static_cast<std::size_t>(r.ret) != wanted)
      throw Error(EIO, name_ + ": " + what + " at offset " + std::to_string(offset) + " moved " +
                           std::to_string(r.ret) + " of " + std::to_string(wanted) + " bytes");
  }

  GlusterConfig config_;
  std::string name_;
  std::shared_ptr<Connection> conn_;
  glfs_fd_t* fd_;
  std::int64_t allocated_;
  bool no_flush_;
  // Writes, zeroes and discards completed, and how many of them an fsync has covered.
  std::uint64_t written_ = 0;
  std::uint64_t synced_ = 0;
  // How many of them the brick is known to have (an fsync or fstat waited for them).
  std::uint64_t drained_ = 0;
  // Held by each SEEK_DATA/SEEK_HOLE pair (on a pool thread, which may outlive the node).
  std::shared_ptr<std::mutex> seeking_ = std::make_shared<std::mutex>();
  bool zerofill_works_ = true;
  bool discard_works_ = true;
};

Task<std::unique_ptr<Node>> open_gluster(const OpenContext& ctx, spec::Options& o) {
  GlusterConfig config = config_from_options(o);
  if (config.rdma_requested) NETBLK_LOG(warn, "rdma feature is not supported, falling back to tcp");
  const std::string name = display_name(config);
  std::shared_ptr<Connection> conn;
  co_await connect(config, name, conn);
  glfs_t* fs = conn->fs();
  const std::string path = config.path;
  const int flags = ctx.read_only ? O_RDONLY : O_RDWR;
  auto work = [fs, path, flags]() {
    Opened f;
    errno = 0;
    f.fd = glfs_open(fs, path.c_str(), flags);
    if (!f.fd) {
      f.err = errno ? errno : EIO;
      return f;
    }
    struct stat st {};
    if (glfs_fstat(f.fd, &st) != 0) {
      f.err = errno ? errno : EIO;
      glfs_close(f.fd);
      f.fd = nullptr;
      return f;
    }
    f.size = static_cast<std::uint64_t>(st.st_size);
    f.allocated = static_cast<std::int64_t>(st.st_blocks) * 512;
    // As QEMU's qemu_gluster_test_seek: SEEK_DATA at the end must fail with ENXIO; older
    // GlusterFS versions answered otherwise, and then block status is not offered.
    errno = 0;
    f.seek_data = glfs_lseek(f.fd, st.st_size, SEEK_DATA) < 0 && errno == ENXIO;
    return f;
  };
  const std::string what = name + ": opening " + path;
  const Opened f = co_await offload(std::move(work), kCallLimit, what);
  if (!f.fd) throw Error(f.err, name + ": Could not open '" + path + "': " + errno_text(f.err));
  NETBLK_LOG(debug, "{}: {} bytes, SEEK_DATA {}", name, f.size, f.seek_data ? "works" : "does not work");
  auto node = std::make_unique<GlusterNode>(ctx, std::move(config), std::move(conn), f);
  co_return node;
}

// `netblk create` on a volume: creates (or truncates) the file and sets its size.
Task<void> create_gluster(const OpenContext&, spec::Options& o, std::uint64_t size) {
  GlusterConfig config = config_from_options(o);
  if (config.rdma_requested) NETBLK_LOG(warn, "rdma feature is not supported, falling back to tcp");
  const std::string name = display_name(config);
  std::shared_ptr<Connection> conn;
  co_await connect(config, name, conn);
  glfs_t* fs = conn->fs();
  const std::string path = config.path;
  auto work = [fs, path, size]() {
    errno = 0;
    glfs_fd_t* fd = glfs_creat(fs, path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, S_IRUSR | S_IWUSR);
    if (!fd) return errno ? errno : EIO;
    int err = 0;
    if (glfs_ftruncate(fd, static_cast<off_t>(size), nullptr, nullptr) != 0) err = errno ? errno : EIO;
    if (glfs_close(fd) != 0 && !err) err = errno ? errno : EIO;
    return err;
  };
  const std::string what = name + ": creating " + path;
  const int err = co_await offload(std::move(work), kCallLimit, what);
  if (err) throw Error(err, name + ": Could not create '" + path + "': " + errno_text(err));
}

const DriverRegistration kGluster{ProtocolDriver{
    .name = "gluster",
    .prefixes = {"gluster", "gluster+tcp", "gluster+unix", "gluster+rdma"},
    .parse_filename = parse_filename,
    .open = open_gluster,
    .create = create_gluster,
    .library_version = [] { return std::string("libgfapi (glusterfs-api) " NETBLK_GFAPI_VERSION); },  // no runtime call
}};

}  // namespace
}  // namespace netblk::gluster
