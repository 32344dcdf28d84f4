#include "netblk_serve.hpp"

namespace netblk::test {

NetblkServe::NetblkServe(const Options& options)
    : NbdDaemon(options.export_name, "", 0, "", options.unix_socket) {
  start({netblk_binary(), "serve", "-x", options.export_name}, {"-b", "-p", "-k"}, options.args, "netblk serve");
}

}  // namespace netblk::test
