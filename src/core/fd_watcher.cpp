#include "core/fd_watcher.hpp"

#include <poll.h>
#include <sys/stat.h>

#include <asio/post.hpp>
#include <asio/posix/stream_descriptor.hpp>

namespace netblk {

// What pending handlers may still reach after the watcher is gone: they check `alive`
// before touching it, and the callback stays valid while it runs.
struct FdWatcher::Shared {
  explicit Shared(Callback cb) : on_event(std::move(cb)) {}
  bool alive = true;
  Callback on_event;
};

struct FdWatcher::Watch {
  Watch(const Executor& ex, int fd, bool identify) : descriptor(ex, fd), fd(fd) {
    struct stat st{};
    if (identify && ::fstat(fd, &st) == 0) dev = st.st_dev, ino = st.st_ino;
  }
  ~Watch() {
    // The library owns the descriptor: never let Asio close it.
    if (descriptor.is_open()) descriptor.release();
  }
  asio::posix::stream_descriptor descriptor;
  int fd;
  dev_t dev = 0;
  ino_t ino = 0;
  FdEvents wanted = FdEvents::none;
  bool reading = false, writing = false;  // a wait (or a posted event) is pending
  bool removed = false;                   // unwatched or replaced: pending handlers do nothing
};

FdWatcher::FdWatcher(Executor executor, Callback on_event, Options options)
    : executor_(std::move(executor)), options_(options), shared_(std::make_shared<Shared>(std::move(on_event))) {}

FdWatcher::~FdWatcher() {
  shared_->alive = false;
  unwatch_all();
}

std::shared_ptr<FdWatcher::Watch> FdWatcher::add(int fd, FdEvents wanted) {
  auto w = std::make_shared<Watch>(executor_, fd, options_.detect_replaced);
  w->wanted = wanted;
  return w;
}

void FdWatcher::drop(Watch& w) {
  w.removed = true;
  // Cancels the pending waits (their handlers see `removed`) and leaves the fd open.
  if (w.descriptor.is_open()) w.descriptor.release();
}

bool FdWatcher::replaced(const Watch& w) const {
  struct stat st{};
  // A descriptor the library closed without unwatching is its mistake to find; only a
  // different open socket behind the number counts.
  return ::fstat(w.fd, &st) == 0 && (st.st_dev != w.dev || st.st_ino != w.ino);
}

void FdWatcher::watch(int fd, FdEvents wanted) {
  auto& w = watches_[fd];
  if (!w) {
    w = add(fd, wanted);
  } else if (options_.detect_replaced && replaced(*w)) {
    renew(w);
  }
  w->wanted = wanted;
  arm(w);
}

void FdWatcher::unwatch(int fd) {
  auto it = watches_.find(fd);
  if (it == watches_.end()) return;
  drop(*it->second);
  watches_.erase(it);
}

void FdWatcher::unwatch_all() {
  for (auto& [fd, w] : watches_) drop(*w);
  watches_.clear();
}

void FdWatcher::renew(std::shared_ptr<Watch>& slot) {
  // Release first: Asio takes the number out of epoll (nothing to do when the old file is
  // closed already) before the new registration puts it in again.
  std::shared_ptr<Watch> old = std::move(slot);
  drop(*old);
  slot = add(old->fd, old->wanted);
}

void FdWatcher::refresh(int fd) {
  auto it = watches_.find(fd);
  if (it == watches_.end()) return;
  renew(it->second);
  arm(it->second);
}

void FdWatcher::rearm_all() {
  // A copy: arming never calls back, but may replace entries (a replaced socket).
  auto watches = watches_;
  for (auto& [fd, w] : watches)
    if (!w->removed) arm(w);
}

void FdWatcher::arm(const std::shared_ptr<Watch>& w) {
  bool want_in = has(w->wanted, FdEvents::read) && !w->reading;
  bool want_out = has(w->wanted, FdEvents::write) && !w->writing;
  if (!want_in && !want_out) return;
  if (options_.detect_replaced && replaced(*w)) {
    refresh(w->fd);  // arms the successor; `w` is dropped
    return;
  }
  // Asio's epoll registration is edge-triggered: a descriptor that is already ready may
  // never produce another edge, so look first and act at once when it is.
  struct pollfd p{w->fd, static_cast<short>((want_in ? POLLIN : 0) | (want_out ? POLLOUT : 0)), 0};
  if (::poll(&p, 1, 0) > 0) {
    FdEvents events = FdEvents::none;
    // Only the directions asked for: libcurl reads an unasked-for event on a socket that
    // is still connecting (an FTP data connection) as a failed connect.
    if ((p.revents & (POLLIN | POLLHUP | POLLERR)) && want_in) events = events | FdEvents::read;
    if ((p.revents & (POLLOUT | POLLHUP | POLLERR)) && want_out) events = events | FdEvents::write;
    if (events != FdEvents::none) {
      if (has(events, FdEvents::read)) want_in = false, w->reading = true;
      if (has(events, FdEvents::write)) want_out = false, w->writing = true;
      asio::post(executor_, [this, w, events, shared = shared_] {
        if (has(events, FdEvents::read)) w->reading = false;
        if (has(events, FdEvents::write)) w->writing = false;
        if (!shared->alive || w->removed) return;
        deliver(w->fd, events);
      });
    }
  }
  if (want_in) wait(w, FdEvents::read);
  if (want_out) wait(w, FdEvents::write);
}

void FdWatcher::wait(const std::shared_ptr<Watch>& w, FdEvents direction) {
  const bool read = direction == FdEvents::read;
  (read ? w->reading : w->writing) = true;
  using base = asio::posix::descriptor_base;
  w->descriptor.async_wait(read ? base::wait_read : base::wait_write,
                           [this, w, read, shared = shared_](std::error_code ec) {
                             (read ? w->reading : w->writing) = false;
                             if (ec || !shared->alive || w->removed) return;
                             deliver(w->fd, read ? FdEvents::read : FdEvents::write);
                           });
}

void FdWatcher::deliver(int fd, FdEvents happened) {
  // Keeps the callback alive while it runs, and tells afterwards whether `this` still is.
  std::shared_ptr<Shared> shared = shared_;
  shared->on_event(fd, happened);
  if (!shared->alive) return;
  // The callback may have changed what is wanted, or unwatched the descriptor (and maybe
  // watched a new one with the same number): arm whatever is current.
  auto it = watches_.find(fd);
  if (it != watches_.end()) arm(it->second);
}

}  // namespace netblk
