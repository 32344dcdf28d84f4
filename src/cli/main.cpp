// netblk: open VM disk images over the network by QEMU's names; verbs as in qemu-img.
#include <csignal>
#include <iostream>

#include "cli/verbs.hpp"
#include "core/log.hpp"

int main(int argc, char** argv) {
  using namespace netblk;
  // A peer that goes away must not kill us: writes to it fail with EPIPE and the protocol
  // code handles that (reconnects, reports). QEMU's tools ignore SIGPIPE the same way.
  ::signal(SIGPIPE, SIG_IGN);
  log::init_from_env();
  CLI::App app{"netblk: open virtual-machine disk images over the network by the names QEMU documents"};
  app.require_subcommand(1);
  app.fallthrough();
  int verbosity = 0;
  app.add_flag("-v,--verbose", verbosity, "More log output (repeat for more); NETBLK_LOG=debug also works");
  app.set_version_flag("-V,--version", "netblk 0.1.0");
  std::vector<std::pair<CLI::App*, std::function<int()>>> runners;
  for (const auto& verb : cli::verbs()) {
    CLI::App* sub = app.add_subcommand(verb.name, verb.description);
    runners.emplace_back(sub, verb.setup(*sub));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    // One line, naming what was wrong, then where to look.
    std::cerr << "netblk: " << e.what() << "\nTry 'netblk --help' or 'netblk VERB --help'." << std::endl;
    return 1;
  }
  if (verbosity > 0) {
    int level = std::min(4, static_cast<int>(log::level()) + verbosity);
    log::set_level(static_cast<log::Level>(std::max(level, 2)));
  }
  for (auto& [sub, run] : runners)
    if (sub->parsed()) return run();
  return 1;
}
