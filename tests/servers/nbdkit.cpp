#include "nbdkit.hpp"

namespace netblk::test {

Nbdkit::Nbdkit(const Options& options) : NbdDaemon("", options.socket, options.port, options.log) {
  start({"nbdkit", "-f"}, {"-i", "-p", "-U"}, options.args, "nbdkit");
}

}  // namespace netblk::test
