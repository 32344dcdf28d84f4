#include "netblk/error.hpp"

#include <cstring>

namespace netblk {

void throw_errno(int err, const std::string& what) {
  throw Error(err, what + ": " + std::strerror(err));
}

std::string with_context(const std::string& context, const std::string& message) {
  if (context.empty() || message.rfind(context + ":", 0) == 0) return message;
  return context + ": " + message;
}

}  // namespace netblk
