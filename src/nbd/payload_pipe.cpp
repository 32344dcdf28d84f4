#include "nbd/payload_pipe.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <utility>

#include "core/file_io.hpp"
#include "netblk/error.hpp"

namespace netblk::nbd {
namespace {

// 1 MiB is the largest size an unprivileged process may set (fs.pipe-max-size).
constexpr int kPipeSize = 1 << 20;

}  // namespace

PayloadPipe PayloadPipe::open() {
  PayloadPipe p;
  // Non-blocking: a miscounted `held` fails a drain instead of hanging it.
  if (::pipe2(p.fds_, O_CLOEXEC | O_NONBLOCK) != 0) throw_errno(errno, "creating a pipe failed");
  const int size = ::fcntl(p.fds_[1], F_SETPIPE_SZ, kPipeSize);
  // A soft limit: pipe buffers may hold partly used pages, and a pipe filled by those
  // first makes splice() answer EAGAIN, upon which the reader empties it.
  p.room_ = static_cast<std::size_t>(size > 0 ? size : 64 * 1024) / 2;
  return p;
}

PayloadPipe& PayloadPipe::operator=(PayloadPipe&& other) noexcept {
  if (this != &other) {
    close();
    fds_[0] = std::exchange(other.fds_[0], -1);
    fds_[1] = std::exchange(other.fds_[1], -1);
    room_ = other.room_;
    held = std::exchange(other.held, 0);
    broken_ = other.broken_;
  }
  return *this;
}

PayloadPipe::~PayloadPipe() { close(); }

void PayloadPipe::close() noexcept {
  for (int& fd : fds_)
    if (fd >= 0) ::close(std::exchange(fd, -1));
}

int PayloadPipe::drain_to(int fd, std::uint64_t offset) noexcept {
  int error = 0;
  bool copy = false;  // the file takes no splice: read the pipe and pwrite
  std::array<char, 64 * 1024> scratch;
  while (held) {
    if (!error && !copy) {
      loff_t off = static_cast<loff_t>(offset);
      const ssize_t w = ::splice(fds_[0], nullptr, fd, &off, held, SPLICE_F_MOVE);
      if (w > 0) {
        held -= static_cast<std::size_t>(w);
        offset += static_cast<std::uint64_t>(w);
        continue;
      }
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
        copy = true;
        continue;
      }
      error = (w == 0 || errno == EAGAIN) ? EIO : errno;
    }
    // Copying (or dropping, after a failed write) through user memory.
    const ssize_t r = ::read(fds_[0], scratch.data(), std::min(held, scratch.size()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      broken_ = true;
      held = 0;
      break;
    }
    held -= static_cast<std::size_t>(r);
    if (!error) error = pwrite_fully(fd, scratch.data(), static_cast<std::size_t>(r), offset);
    offset += static_cast<std::uint64_t>(r);
  }
  return error;
}

}  // namespace netblk::nbd
