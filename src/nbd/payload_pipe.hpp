// A pipe that carries read payloads from a socket into a file with splice(): the socket's
// pages are moved into the pipe without a copy, and the kernel copies them once, into the
// file. (Emptying pipes on worker threads, beside the reading, cost more than it saved:
// hand-offs, and writers of one file contend for its inode lock.)
#pragma once
#include <cstddef>
#include <cstdint>

namespace netblk::nbd {

class PayloadPipe {
 public:
  // A new pipe, as large as allowed up to 1 MiB. Throws Error on failure.
  static PayloadPipe open();

  PayloadPipe() = default;
  PayloadPipe(PayloadPipe&& other) noexcept { *this = static_cast<PayloadPipe&&>(other); }
  PayloadPipe& operator=(PayloadPipe&& other) noexcept;
  ~PayloadPipe();

  int read_end() const noexcept { return fds_[0]; }
  int write_end() const noexcept { return fds_[1]; }
  // Bytes the pipe can hold at least (its capacity, less room for partly filled pages).
  std::size_t room() const noexcept { return room_; }
  // Bytes in the pipe, as counted by the caller.
  std::size_t held = 0;

  // Moves the `held` bytes into `fd` at `offset` (through user memory when the file takes
  // no splice). After a failed write the rest is read out and dropped, so the pipe is empty
  // either way (unless reading it fails: broken()). Returns 0 or the file's errno.
  int drain_to(int fd, std::uint64_t offset) noexcept;
  bool broken() const noexcept { return broken_; }

 private:
  void close() noexcept;

  int fds_[2] = {-1, -1};
  std::size_t room_ = 0;
  bool broken_ = false;  // a drain failed to empty it
};

}  // namespace netblk::nbd
