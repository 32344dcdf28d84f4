// Small helpers shared by the unit tests.
#pragma once
#include <stdlib.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "netblk/open.hpp"
#include "netblk/runtime.hpp"

namespace netblk::test {

// Opens a drive on a private event loop and returns the node (open_drive's errors propagate).
inline std::unique_ptr<Node> open_sync(DriveSpec spec) {
  return run_sync<std::unique_ptr<Node>>([&]() { return open_drive(spec); });
}

// A new temporary file under /tmp whose name is removed at once; -1 on failure.
inline int unlinked_temp_file() {
  char name[] = "/tmp/netblk-unit-XXXXXX";
  const int fd = mkstemp(name);
  if (fd >= 0) unlink(name);
  return fd;
}

}  // namespace netblk::test
