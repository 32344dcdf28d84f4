#include "qemu_nbd.hpp"

namespace netblk::test {

QemuNbd::QemuNbd(const Options& options) : NbdDaemon(options.export_name, options.socket, options.port, "") {
  std::vector<std::string> rest = options.extra;
  if (options.read_only) rest.push_back("-r");
  rest.push_back(options.file);
  start({"qemu-nbd", "-t", "-f", options.format, "-x", options.export_name}, {"-b", "-p", "-k"}, rest, "qemu-nbd");
}

}  // namespace netblk::test
