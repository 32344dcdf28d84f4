#include "core/mapping.hpp"

#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <csetjmp>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <mutex>

namespace netblk {
namespace {

// Where the SIGBUS handler jumps to on this thread; null outside run_unless_sigbus().
thread_local sigjmp_buf* volatile t_recover = nullptr;

void on_sigbus(int, siginfo_t*, void*) {
  if (sigjmp_buf* to = t_recover) {
    t_recover = nullptr;
    siglongjmp(*to, 1);
  }
  // Not raised by a guarded copy: back to the default action, which the faulting
  // instruction re-raises when this handler returns.
  std::signal(SIGBUS, SIG_DFL);
}

void install_handler() {
  struct sigaction action {};
  action.sa_sigaction = on_sigbus;
  // SA_NODEFER: the jump leaves the handler without returning, so SIGBUS must not stay blocked.
  action.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&action.sa_mask);
  sigaction(SIGBUS, &action, nullptr);
}

}  // namespace

bool run_unless_sigbus(void (*fn)(void*), void* arg) noexcept {
  static std::once_flag installed;
  std::call_once(installed, install_handler);
  sigjmp_buf recover;
  if (sigsetjmp(recover, 0) != 0) return false;
  t_recover = &recover;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  fn(arg);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_recover = nullptr;
  return true;
}

bool store_whole_pages(void* dst, const void* src, std::size_t n) noexcept {
  if (n == 0) return true;
  // Container profiles may refuse the call (EPERM, ENOSYS): then never again.
  static std::atomic<bool> refused{false};
  if (refused.load(std::memory_order_relaxed)) return false;
  // The kernel copies page by page and acts on a pending SIGKILL only between pages.
  const iovec local{const_cast<void*>(src), n};
  const iovec remote{dst, n};
  ssize_t r;
  do {
    r = ::process_vm_writev(::getpid(), &local, 1, &remote, 1, 0);
  } while (r < 0 && errno == EINTR);
  if (r < 0 && (errno == EPERM || errno == ENOSYS)) refused.store(true, std::memory_order_relaxed);
  return r == static_cast<ssize_t>(n);
}

bool pages_in_memory(const void* p, std::size_t n) noexcept {
  if (n == 0) return true;
  static const std::uintptr_t page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto at = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t first = at / page, last = (at + n - 1) / page;
  std::array<unsigned char, 64> pages;
  if (last - first + 1 > pages.size()) return false;
  if (mincore(reinterpret_cast<void*>(first * page), (last - first + 1) * page, pages.data()) != 0) return false;
  for (std::uintptr_t i = 0; i <= last - first; ++i)
    if (!(pages[i] & 1)) return false;
  return true;
}

}  // namespace netblk
