// The Ceph RBD protocol driver: rbd:POOL/IMAGE names or driver=rbd with QEMU's options,
// through librbd and librados.
//
// Every node of the process with the same cluster configuration (conf file, user,
// monitors, authentication, librados options, timeout) shares one cluster connection (a
// rados_t). It is made once, by rados_connect on a thread of its own with a deadline, after
// librados's own waits were bounded by netblk's `timeout` (client_mount_timeout,
// rados_mon_op_timeout and rados_osd_op_timeout; left to themselves they wait 300 s for a
// monitor and for ever for an OSD). Reads, writes, discards, zeroes and flushes are librbd's
// asynchronous calls: each image signals finished calls on an eventfd
// (rbd_set_image_notification), which the fd watcher waits on in the event loop; the node
// collects them with rbd_poll_io_events and posts each result to the executor of the
// coroutine that waits (never resumed on a librbd thread). Opening, closing, block status
// (rbd_diff_iterate2), create and resize block, and are offloaded with a deadline.
//
// The connections live as long as the process and are shut down when it exits, before the
// static destructors run (core/process_exit.hpp): librados's threads keep working on an
// idle connection (the monitors send configuration), and would run under them. A cluster
// that cannot be shut down in time (a call still in progress, a dead cluster) ends the
// process with _exit instead.
#include <netdb.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <asio/post.hpp>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "block/driver.hpp"
#include "core/deadline.hpp"
#include "core/fd_watcher.hpp"
#include "core/library_call.hpp"
#include "core/log.hpp"
#include "core/process_exit.hpp"
#include "core/shared_connection.hpp"
#include "netblk/range_lock.hpp"
#include "protocols/rbd/ceph_api.hpp"
#include "protocols/rbd/rbd_config.hpp"

namespace netblk::rbd {
namespace {

using namespace std::chrono_literals;

// Reads and writes: node.cpp splits at this.
constexpr std::uint64_t kMaxTransfer = 32u << 20;
// One block-status query looks at most this far (rbd_diff_iterate2 visits every object).
constexpr std::uint64_t kMaxStatus = 1ull << 30;
// A blocking call's deadline beyond the timeout librados was given.
constexpr std::chrono::seconds kGrace = 5s;
// A write past the end resizes the image to the next multiple of this (a qcow2 image
// inside an RBD image grows a cluster at a time; one resize each would be slow).
constexpr std::uint64_t kGrowStep = 16u << 20;
// rbd_diff_iterate2's callback stops the walk with this.
constexpr int kStopWalk = -9000;
// At the process's exit, shutting down its clusters may take this long.
constexpr std::chrono::milliseconds kShutdownLimit = 3s;

std::string errno_text(int err) { return std::strerror(err); }

std::string base64(const std::string& in) {
  static const char* const t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const unsigned v = (static_cast<unsigned char>(in[i]) << 16) | (static_cast<unsigned char>(in[i + 1]) << 8) |
                       static_cast<unsigned char>(in[i + 2]);
    out += t[(v >> 18) & 63];
    out += t[(v >> 12) & 63];
    out += t[(v >> 6) & 63];
    out += t[v & 63];
  }
  if (i + 1 == in.size()) {
    const unsigned v = static_cast<unsigned char>(in[i]) << 16;
    out += t[(v >> 18) & 63];
    out += t[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    const unsigned v = (static_cast<unsigned char>(in[i]) << 16) | (static_cast<unsigned char>(in[i + 1]) << 8);
    out += t[(v >> 18) & 63];
    out += t[(v >> 12) & 63];
    out += t[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Monitors given as server.N

// A monitor's address as librados takes it, with the messenger protocol its banner shows:
// "v2:HOST:PORT" or "v1:HOST:PORT". librados takes an untyped HOST:PORT as both, and then a
// refused key is not an error but a reason to keep hunting until client_mount_timeout; with
// the type it fails at once. `why` says why no banner came (the address is then untyped).
std::string typed_monitor(const Monitor& m, std::string& why) {
  const bool v6 = m.host.find(':') != std::string::npos;
  const std::string hostport = (v6 ? "[" + m.host + "]" : m.host) + (m.port.empty() ? "" : ":" + m.port);
  if (m.port.empty()) return hostport;  // librados tries 3300 (v2) and 6789 (v1)
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (const int rc = ::getaddrinfo(m.host.c_str(), m.port.c_str(), &hints, &found); rc != 0) {
    why = std::string("cannot resolve host: ") + ::gai_strerror(rc);
    return hostport;
  }
  std::string type;
  why = "no address";
  for (addrinfo* a = found; a && type.empty(); a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      why = errno_text(errno);
      continue;
    }
    int err = 0;
    if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0) err = errno;
    if (err == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      const int n = ::poll(&p, 1, 2000);
      socklen_t len = sizeof(err);
      if (n == 0)
        err = ETIMEDOUT;
      else if (n < 0 || ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    }
    if (err == 0) {
      // Both protocols greet first: "ceph v2\n" or "ceph v027".
      char banner[16] = {};
      std::size_t got = 0;
      const auto until = std::chrono::steady_clock::now() + 2s;
      while (got < 9 && std::chrono::steady_clock::now() < until) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 200) <= 0) continue;
        const ssize_t n = ::recv(fd, banner + got, 9 - got, 0);
        if (n <= 0) break;
        got += static_cast<std::size_t>(n);
      }
      const std::string_view b(banner, got);
      if (b.starts_with("ceph v2\n"))
        type = "v2:";
      else if (b.starts_with("ceph v027"))
        type = "v1:";
      else
        why = "no Ceph monitor banner";
    } else {
      why = errno_text(err);
    }
    ::close(fd);
  }
  ::freeaddrinfo(found);
  if (type.empty()) return hostport;
  why.clear();
  return type + hostport;
}

// ---------------------------------------------------------------------------------------
// The process's cluster connections

// Every librados client the process made, for its exit: each connected cluster is shut
// down then, and none may be while one is still being made or an I/O context is open (a
// call of librados may be in progress on it). Made after librados was loaded (its first
// use is rados_create), so that its exit handler runs before librados's destructors.
class Clients {
 public:
  static Clients& get() {
    static auto* clients = new Clients;  // never destroyed: librados's threads may outlive main
    return *clients;
  }
  // A cluster handle was created and is being connected.
  void connecting() {
    std::lock_guard lock(m_);
    ++connecting_;
  }
  // It connected.
  void connected(rados_t cluster) {
    std::lock_guard lock(m_);
    --connecting_;
    connected_.push_back(cluster);
  }
  // It failed and was shut down.
  void failed() {
    std::lock_guard lock(m_);
    --connecting_;
  }
  void context_opened() {
    std::lock_guard lock(m_);
    ++contexts_;
  }
  void context_closed() {
    std::lock_guard lock(m_);
    --contexts_;
  }

 private:
  Clients() { at_process_exit([this] { return stop(); }, kShutdownLimit); }
  // Holds the lock while shutting down: nothing starts meanwhile.
  bool stop() {
    std::lock_guard lock(m_);
    if (connecting_ > 0 || contexts_ > 0) return false;
    for (rados_t cluster : connected_) ceph().rados_shutdown(cluster);
    connected_.clear();
    return true;
  }

  std::mutex m_;
  int connecting_ = 0;
  int contexts_ = 0;
  std::vector<rados_t> connected_;
};

class Connection : public SharedConnection<rados_t> {
 public:
  rados_t cluster() const noexcept { return handle(); }

  void init(const RbdConfig& c) {
    rados_t cluster = nullptr;
    int r = ceph().rados_create(&cluster, c.user ? c.user->c_str() : nullptr);
    if (r < 0) return finish(nullptr, -r, "error initializing: " + errno_text(-r));
    Clients::get().connecting();
    auto fail = [&](int err, std::string why) {
      finish(nullptr, err, std::move(why));
      ceph().rados_shutdown(cluster);
      Clients::get().failed();
    };
    if (c.conf) {
      r = ceph().rados_conf_read_file(cluster, c.conf->c_str());
      if (r < 0) return fail(-r, "error reading conf file " + *c.conf + ": " + errno_text(-r));
    } else {
      ceph().rados_conf_read_file(cluster, nullptr);  // the default places, if any (as QEMU)
    }
    // librados's own messages only with NETBLK_LOG=debug: errors stay netblk's one line.
    if (!log::enabled(log::Level::debug)) {
      ceph().rados_conf_set(cluster, "log_to_stderr", "false");
      ceph().rados_conf_set(cluster, "err_to_stderr", "false");
    }
    const std::string seconds = std::to_string(c.timeout.count());
    for (const char* key : {"client_mount_timeout", "rados_mon_op_timeout", "rados_osd_op_timeout"})
      ceph().rados_conf_set(cluster, key, seconds.c_str());
    for (const auto& [k, v] : c.keyvalues) {
      r = ceph().rados_conf_set(cluster, k.c_str(), v.c_str());
      if (r < 0) return fail(-r, "invalid conf option " + k + ": " + errno_text(-r));
    }
    if (!c.servers.empty()) {
      std::string hosts, unreachable;
      std::size_t answering = 0;
      for (std::size_t i = 0; i < c.servers.size(); ++i) {
        std::string why;
        hosts += (hosts.empty() ? "" : ";") + typed_monitor(c.servers[i], why);
        if (why.empty()) {
          ++answering;
        } else {
          unreachable += (unreachable.empty() ? "" : "; ") + std::string("server.") + std::to_string(i) + " (" +
                         c.servers[i].host + (c.servers[i].port.empty() ? "" : ":" + c.servers[i].port) + "): " + why;
        }
      }
      NETBLK_LOG(debug, "rbd: monitors {}{}", hosts, unreachable.empty() ? "" : " (" + unreachable + ")");
      if (answering == 0 && !unreachable.empty() &&
          std::all_of(c.servers.begin(), c.servers.end(), [](const Monitor& m) { return !m.port.empty(); }))
        return fail(ECONNREFUSED, "error connecting: no monitor answers (" + unreachable + ")");
      r = ceph().rados_conf_set(cluster, "mon_host", hosts.c_str());
      if (r < 0) return fail(-r, "invalid monitor list " + hosts + ": " + errno_text(-r));
    }
    if (!c.auth_client_required.empty()) {
      std::string modes;
      for (const auto& m : c.auth_client_required) modes += (modes.empty() ? "" : ";") + m;
      r = ceph().rados_conf_set(cluster, "auth_client_required", modes.c_str());
      if (r < 0) return fail(-r, "could not set auth-client-required: " + errno_text(-r));
    }
    if (c.key_secret) {
      r = ceph().rados_conf_set(cluster, "key", base64(c.key_secret->value).c_str());
      if (r < 0) return fail(-r, "could not set the key of key-secret '" + c.key_secret->id + "': " + errno_text(-r));
    }
    r = ceph().rados_connect(cluster);
    if (r < 0) {
      std::string why = "error connecting: " + errno_text(-r);
      if (-r == ETIMEDOUT)
        why += " (no monitor accepted the connection within " + seconds + " s: unreachable, or the key was refused)";
      if (-r == EACCES || -r == EPERM) why += " (authentication failed)";
      return fail(-r, why);
    }
    Clients::get().connected(cluster);
    finish(cluster, 0, {});
  }

};

// The connection for `c` into `out`, made within the timeout and its grace.
Task<void> connect(const RbdConfig& c, const std::string& name, std::shared_ptr<Connection>& out) {
  auto init = [c](Connection& conn) { conn.init(c); };
  const std::string key = connection_key(c);
  const auto limit = c.timeout + kGrace;
  const std::string too_slow =
      name + ": connecting to the cluster did not complete within " + std::to_string(limit.count()) + " s";
  co_await connect_shared(key, std::move(init), limit, name, too_slow, out);
}

// An I/O context on the pool and namespace: -errno or 0.
int open_ioctx(rados_t cluster, const RbdConfig& c, rados_ioctx_t* io) {
  const int r = ceph().rados_ioctx_create(cluster, c.pool.c_str(), io);
  if (r < 0) return r;
  Clients::get().context_opened();
  ceph().rados_ioctx_set_namespace(*io, c.ns.c_str());
  return 0;
}

void close_ioctx(rados_ioctx_t io) {
  ceph().rados_ioctx_destroy(io);
  Clients::get().context_closed();
}

std::string pool_error(const RbdConfig& c, int err) {
  return "error opening pool " + c.pool + ": " + errno_text(err);
}

// ---------------------------------------------------------------------------------------
// librbd's asynchronous calls as awaitables

using RbdCall = LibraryCall<ssize_t>;

// librbd calls this on its own thread; the eventfd carries the completion to the loop.
void ignore_callback(rbd_completion_t, void*) {}

// Runs submit(completion) (an rbd_aio_* call) and waits for its result (>= 0 or -errno).
template <class Submit>
Task<ssize_t> rbd_async(Submit submit) {
  auto start = [submit = std::move(submit)](RbdCall* call) mutable {
    rbd_completion_t comp = nullptr;
    int r = ceph().rbd_aio_create_completion(call, ignore_callback, &comp);
    if (r >= 0) {
      r = submit(comp);
      if (r < 0) ceph().rbd_aio_release(comp);
    }
    if (r < 0) call->complete(r);
  };
  co_return co_await await_library_call<ssize_t>(std::move(start));
}

// ---------------------------------------------------------------------------------------
// The node

struct Opened {
  rados_ioctx_t io = nullptr;
  rbd_image_t image = nullptr;
  int efd = -1;
  int err = 0;
  std::string what;  // what failed
  std::uint64_t size = 0;
  bool diff = false;  // block status from the object map
};

// Releases an image, its eventfd and I/O context (blocking: rbd_close flushes).
int release(rados_ioctx_t io, rbd_image_t image, int efd) {
  int r = 0;
  if (image) r = ceph().rbd_close(image);
  if (efd >= 0) ::close(efd);
  if (io) close_ioctx(io);
  return r;
}

class RbdNode final : public Node {
 public:
  RbdNode(const OpenContext& ctx, RbdConfig config, std::shared_ptr<Connection> conn, const Opened& f)
      : Node(ctx.executor),
        config_(std::move(config)),
        name_(rbd::display_name(config_)),
        conn_(std::move(conn)),
        io_(f.io),
        image_(f.image),
        efd_(f.efd),
        no_flush_(ctx.cache_no_flush),
        watcher_(ctx.executor, [this](int, FdEvents) { collect(); }) {
    const bool ro = ctx.read_only || !config_.snapshot.empty();
    size_ = f.size;
    limits_.request_alignment = 1;
    limits_.max_transfer = kMaxTransfer;
    caps_.read_only = ro;
    caps_.can_flush = !ro;
    caps_.can_zero = !ro;
    caps_.can_discard = !ro;
    caps_.has_block_status = f.diff;
    caps_.can_grow = !ro;  // by rbd_resize: a qcow2 image inside an RBD image grows as it is written
    caps_.any_write_order = true;  // objects are made as written to, wherever they are
    image_size_ = f.size;
    watcher_.watch(efd_, FdEvents::read);
  }

  ~RbdNode() override {
    if (!image_) return;
    watcher_.unwatch(efd_);
    asio::post(worker_pool(), [io = io_, image = image_, efd = efd_, conn = conn_] { release(io, image, efd); });
  }

  std::string_view driver() const override { return "rbd"; }
  Json options() const override { return canonical_options(config_); }
  std::string plain_filename() const override { return rbd::plain_filename(config_); }
  bool has_zero_init() const override { return true; }

 protected:
  Task<void> co_read(std::uint64_t offset, std::span<std::byte> buf) override {
    rbd_image_t image = image_;
    auto submit = [image, offset, buf](rbd_completion_t c) {
      return ceph().rbd_aio_read(image, offset, buf.size(), reinterpret_cast<char*>(buf.data()), c);
    };
    const ssize_t r = co_await rbd_async(std::move(submit));
    if (r < 0) throw failure(static_cast<int>(-r), offset, "read");
    // Past the end of the image (it shrank) librbd returns less: zeroes, as QEMU.
    if (static_cast<std::size_t>(r) < buf.size())
      std::memset(buf.data() + r, 0, buf.size() - static_cast<std::size_t>(r));
  }

  Task<void> co_write(std::uint64_t offset, std::span<const std::byte> buf, unsigned) override {
    if (offset + buf.size() > image_size_) co_await grow(offset + buf.size());
    rbd_image_t image = image_;
    auto submit = [image, offset, buf](rbd_completion_t c) {
      return ceph().rbd_aio_write(image, offset, buf.size(), reinterpret_cast<const char*>(buf.data()), c);
    };
    const ssize_t r = co_await rbd_async(std::move(submit));
    if (r < 0) throw failure(static_cast<int>(-r), offset, "write");
  }

  Task<void> co_write_zeroes(std::uint64_t offset, std::uint64_t length, unsigned flags) override {
    // librbd writes the zeroes of partial objects: not offered as fast.
    if (flags & kZeroFast) throw Error(ENOTSUP, name_ + ": no fast zeroing");
    if (offset + length > image_size_) co_await grow(offset + length);
    rbd_image_t image = image_;
    auto submit = [image, offset, length](rbd_completion_t c) {
      return ceph().rbd_aio_write_zeroes(image, offset, length, c, 0, 0);
    };
    const ssize_t r = co_await rbd_async(std::move(submit));
    if (r < 0) throw failure(static_cast<int>(-r), offset, "write zeroes");
  }

  Task<void> co_discard(std::uint64_t offset, std::uint64_t length, unsigned) override {
    if (offset >= image_size_) co_return;
    length = std::min(length, image_size_ - offset);
    rbd_image_t image = image_;
    auto submit = [image, offset, length](rbd_completion_t c) { return ceph().rbd_aio_discard(image, offset, length, c); };
    const ssize_t r = co_await rbd_async(std::move(submit));
    if (r < 0) throw failure(static_cast<int>(-r), offset, "discard");
  }

  Task<void> co_flush() override {
    if (read_only() || no_flush_) co_return;
    co_await flush_image();
  }

  Task<BlockStatus> co_block_status(std::uint64_t offset, std::uint64_t length) override {
    const BlockStatus data{length, kStatusData | kStatusAllocated, offset};
    if (!caps().has_block_status) co_return data;
    const std::uint64_t span = std::min(length, kMaxStatus);
    rbd_image_t image = image_;
    // As QEMU's qemu_rbd_co_block_status: whole objects (the object map), parents included;
    // the walk stops at the first change between allocated and not.
    struct Walk {
      std::uint64_t offset = 0;
      std::uint64_t bytes = 0;
      bool exists = false;
      int r = 0;
    };
    auto walk = [image, offset, span]() {
      Walk w;
      w.offset = offset;
      auto cb = [](std::uint64_t offs, std::size_t len, int exists, void* arg) -> int {
        auto* w = static_cast<Walk*>(arg);
        if (!exists) return 0;
        if (!w->exists && offs > w->offset) {
          w->bytes = offs - w->offset;
          return kStopWalk;
        }
        if (w->exists && offs > w->offset + w->bytes) return kStopWalk;
        if (!w->exists) {
          // The first allocated extent may start before `offset` (whole objects).
          w->bytes = offs + len > w->offset ? offs + len - w->offset : 0;
        } else {
          w->bytes = offs + len - w->offset;
        }
        w->exists = true;
        return 0;
      };
      w.r = ceph().rbd_diff_iterate2(image, nullptr, offset, span, 1, 1, cb, &w);
      return w;
    };
    const std::string what = name_ + ": block status";
    const Walk w = co_await offload(std::move(walk), config_.timeout + kGrace, what);
    if (w.r < 0 && w.r != kStopWalk) co_return data;
    if (!w.exists) {
      const std::uint64_t hole = w.bytes ? w.bytes : span;
      co_return BlockStatus{std::min(length, hole), kStatusZero | kStatusAllocated, offset};
    }
    if (w.bytes == 0) co_return data;
    co_return BlockStatus{std::min(span, w.bytes), kStatusData | kStatusAllocated, offset};
  }

  Task<void> co_close() override {
    if (!image_) co_return;
    watcher_.unwatch(efd_);
    rados_ioctx_t io = io_;
    rbd_image_t image = image_;
    const int efd = efd_;
    image_ = nullptr;
    io_ = nullptr;
    efd_ = -1;
    auto close = [io, image, efd, conn = conn_]() { return release(io, image, efd); };
    const std::string what = name_ + ": close";
    const int r = co_await offload(std::move(close), config_.timeout + kGrace, what);
    if (r < 0) throw Error(-r, name_ + ": close failed: " + errno_text(-r));
  }

  // `netblk resize`: the image made exactly `size` bytes long (rbd_resize frees what a
  // shrink cuts off), in turn with the resizes that writes past the end make.
  Task<void> co_truncate(std::uint64_t size) override {
    auto held = co_await growing_.acquire(0, 1, true);
    const RangeLocks::Guard guard(growing_, held);
    co_await resize_image(size);
    size_ = size;
  }

 private:
  // The image made at least `end` bytes long, one resize at a time (a smaller one finishing
  // last would cut off what a larger one made room for).
  Task<void> grow(std::uint64_t end) {
    auto held = co_await growing_.acquire(0, 1, true);
    const RangeLocks::Guard guard(growing_, held);
    if (end <= image_size_) co_return;
    const std::uint64_t to = (end + kGrowStep - 1) / kGrowStep * kGrowStep;
    co_await resize_image(to);
  }

  // rbd_resize on the pool, bounded by the timeout (growing_ held).
  Task<void> resize_image(std::uint64_t size) {
    rbd_image_t image = image_;
    auto work = [image, size]() { return ceph().rbd_resize(image, size); };
    const std::string what = name_ + ": resize";
    const int r = co_await offload(std::move(work), config_.timeout + kGrace, what);
    if (r < 0) throw Error(-r, name_ + ": resizing the image to " + std::to_string(size) + " bytes failed: " + errno_text(-r));
    image_size_ = size;
  }

  Task<void> flush_image() {
    rbd_image_t image = image_;
    auto submit = [image](rbd_completion_t c) { return ceph().rbd_aio_flush(image, c); };
    const ssize_t r = co_await rbd_async(std::move(submit));
    if (r < 0) throw Error(static_cast<int>(-r), name_ + ": flush failed: " + errno_text(static_cast<int>(-r)));
  }

  // The eventfd said that calls finished: their results to their coroutines.
  void collect() {
    std::uint64_t count = 0;
    while (::read(efd_, &count, sizeof(count)) < 0 && errno == EINTR) {
    }
    rbd_completion_t comps[64];
    for (;;) {
      const int n = ceph().rbd_poll_io_events(image_, comps, 64);
      for (int i = 0; i < n; ++i) {
        auto* call = static_cast<RbdCall*>(ceph().rbd_aio_get_arg(comps[i]));
        const ssize_t r = ceph().rbd_aio_get_return_value(comps[i]);
        ceph().rbd_aio_release(comps[i]);
        call->complete(r);
      }
      if (n < 64) break;
    }
  }

  Error failure(int err, std::uint64_t offset, const char* what) const {
    return Error(err, name_ + ": " + what + " at offset " + std::to_string(offset) + " failed: " + errno_text(err));
  }

  RbdConfig config_;
  std::string name_;
  std::shared_ptr<Connection> conn_;
  rados_ioctx_t io_;
  rbd_image_t image_;
  int efd_;
  bool no_flush_;
  std::uint64_t image_size_ = 0;  // the RBD image's size (size() follows the writes)
  RangeLocks growing_;
  FdWatcher watcher_;
};

Task<std::unique_ptr<Node>> open_rbd(const OpenContext& ctx, spec::Options& o) {
  RbdConfig config = config_from_options(o);
  const std::string name = display_name(config);
  std::shared_ptr<Connection> conn;
  co_await connect(config, name, conn);
  rados_t cluster = conn->cluster();
  const bool ro = ctx.read_only || !config.snapshot.empty();
  auto work = [cluster, config, ro]() {
    Opened f;
    int r = open_ioctx(cluster, config, &f.io);
    if (r < 0) {
      f.err = -r;
      f.what = pool_error(config, -r);
      return f;
    }
    const char* snap = config.snapshot.empty() ? nullptr : config.snapshot.c_str();
    r = ro ? ceph().rbd_open_read_only(f.io, config.image.c_str(), &f.image, snap)
           : ceph().rbd_open(f.io, config.image.c_str(), &f.image, nullptr);
    if (r < 0) {
      f.image = nullptr;
      f.err = -r;
      f.what = "error opening image " + config.image + (snap ? " at snapshot " + config.snapshot : "") + ": " +
               errno_text(-r);
      release(f.io, nullptr, -1);
      f.io = nullptr;
      return f;
    }
    auto fail = [&](int err, std::string what) {
      f.err = err;
      f.what = std::move(what);
      release(f.io, f.image, f.efd);
      f.io = nullptr;
      f.image = nullptr;
      f.efd = -1;
      return f;
    };
    if ((r = ceph().rbd_get_size(f.image, &f.size)) < 0) return fail(-r, "error getting the image size: " + errno_text(-r));
    std::uint64_t features = 0, flags = 0;
    if (ceph().rbd_get_features(f.image, &features) == 0 && ceph().rbd_get_flags(f.image, &flags) == 0)
      f.diff = (features & RBD_FEATURE_FAST_DIFF) && !(flags & RBD_FLAG_FAST_DIFF_INVALID);
    f.efd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (f.efd < 0) return fail(errno, std::string("eventfd: ") + errno_text(errno));
    if ((r = ceph().rbd_set_image_notification(f.image, f.efd, EVENT_TYPE_EVENTFD)) < 0)
      return fail(-r, "rbd_set_image_notification: " + errno_text(-r));
    return f;
  };
  const std::string what = name + ": opening the image";
  const Opened f = co_await offload(std::move(work), config.timeout + kGrace, what);
  if (!f.image) throw Error(f.err, name + ": " + f.what);
  NETBLK_LOG(debug, "{}: {} bytes, block status {}", name, f.size, f.diff ? "from the object map" : "not offered");
  auto node = std::make_unique<RbdNode>(ctx, std::move(config), std::move(conn), f);
  co_return node;
}

// `netblk create`: a new image of `size` bytes (the cluster's default features and object
// size), or an existing one emptied and resized to it (as a file's O_TRUNC and truncate).
Task<void> create_rbd(const OpenContext&, spec::Options& o, std::uint64_t size) {
  RbdConfig config = config_from_options(o);
  const std::string name = display_name(config);
  if (!config.snapshot.empty()) throw Error(EINVAL, name + ": Can't use snapshot name for image creation");
  std::shared_ptr<Connection> conn;
  co_await connect(config, name, conn);
  rados_t cluster = conn->cluster();
  auto work = [cluster, config, size]() -> std::string {
    rados_ioctx_t io = nullptr;
    int r = open_ioctx(cluster, config, &io);
    if (r < 0) return pool_error(config, -r);
    int order = 0;
    r = ceph().rbd_create(io, config.image.c_str(), size, &order);
    std::string why;
    if (r == -EEXIST) {
      rbd_image_t image = nullptr;
      r = ceph().rbd_open(io, config.image.c_str(), &image, nullptr);
      if (r < 0) {
        why = "error opening image " + config.image + ": " + errno_text(-r);
      } else {
        if ((r = ceph().rbd_resize(image, 0)) < 0 || (r = ceph().rbd_resize(image, size)) < 0)
          why = "error resizing image " + config.image + ": " + errno_text(-r);
        ceph().rbd_close(image);
      }
    } else if (r < 0) {
      why = "error rbd create: " + errno_text(-r);
    }
    close_ioctx(io);
    return why;
  };
  const std::string what = name + ": creating the image";
  const std::string why = co_await offload(std::move(work), config.timeout + kGrace, what);
  if (!why.empty()) throw Error(EIO, name + ": " + why);
}

std::string version() {
  int major = 0, minor = 0, extra = 0;
  ceph().rbd_version(&major, &minor, &extra);
  int rmajor = 0, rminor = 0, rextra = 0;
  ceph().rados_version(&rmajor, &rminor, &rextra);
  return "librbd " + std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(extra) +
         ", librados " + std::to_string(rmajor) + "." + std::to_string(rminor) + "." + std::to_string(rextra);
}

const DriverRegistration kRbd{ProtocolDriver{
    .name = "rbd",
    .prefixes = {"rbd"},
    .parse_filename = parse_filename,
    .open = open_rbd,
    .create = create_rbd,
    .library_version = version,
}};

}  // namespace
}  // namespace netblk::rbd
