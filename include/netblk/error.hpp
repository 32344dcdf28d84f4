// The one error type of netblk: an errno value and a one-line message that names the
// drive and what failed. Thrown inside coroutines, caught at the edges (CLI, NBD export,
// library callers). Messages never contain passwords, cookies or other secrets.
#pragma once
#include <cerrno>
#include <stdexcept>
#include <string>

namespace netblk {

class Error : public std::runtime_error {
 public:
  Error(int err, const std::string& message) : std::runtime_error(message), errno_(err) {}
  explicit Error(const std::string& message) : Error(EINVAL, message) {}
  // The errno value (positive), used by the NBD export to pick an NBD error code.
  int code() const noexcept { return errno_; }

 private:
  int errno_;
};

// Throws Error(errno) with "what: strerror(errno)".
[[noreturn]] void throw_errno(int err, const std::string& what);

// Returns `message` prefixed with "context: ", unless it already starts with it.
std::string with_context(const std::string& context, const std::string& message);

}  // namespace netblk
