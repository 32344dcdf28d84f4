// netblk: open VM disk images over the network by QEMU's names; verbs as in qemu-img.
#include <algorithm>
#include <csignal>
#include <iostream>

#include "block/driver.hpp"
#include "cli/verbs.hpp"
#include "core/log.hpp"
#include "spec/config_groups.hpp"
#include "spec/tree.hpp"

namespace {

// `netblk --version`: the version, then the drivers compiled in, each protocol with the
// library it is built on (as nbdkit --dump-config).
std::string version_text() {
  using namespace netblk;
  std::string s = "netblk " NETBLK_VERSION;
  std::vector<std::string> protocols = protocol_names();
  std::sort(protocols.begin(), protocols.end());
  for (const auto& name : protocols) {
    const ProtocolDriver* d = find_protocol(name);
    std::string line = "\nprotocol " + name;
    if (d && d->library_version) line += std::string(line.size() < 18 ? 18 - line.size() : 1, ' ') + d->library_version();
    s += line;
  }
  std::vector<std::string> others;
  for (const auto& f : formats()) others.push_back("format   " + f.name);
  for (const auto& f : filter_names()) others.push_back("filter   " + f);
  std::sort(others.begin(), others.end());
  for (const auto& line : others) s += "\n" + line;
  return s;
}

}  // namespace

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
  app.set_version_flag("-V,--version", version_text, "Print the version and the drivers compiled in, then exit");
  // QEMU's -iscsi and -readconfig: option groups drivers look up when they open a drive.
  std::vector<std::string> iscsi_groups, config_files;
  app.add_option("--iscsi", iscsi_groups,
                 "iSCSI defaults as QEMU's -iscsi: initiator-name=IQN,header-digest=..,user=..,password-secret=ID,"
                 "timeout=S[,id=TARGET-IQN]")
      ->allow_extra_args(false);
  app.add_option("--readconfig", config_files, "Read QEMU's [iscsi] / [iscsi \"IQN\"] sections from FILE")
      ->allow_extra_args(false);
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
  try {
    for (const auto& file : config_files) spec::read_config_file(file);
    for (const auto& text : iscsi_groups) spec::add_config_group("iscsi", spec::parse_keyval(text));
  } catch (const Error& e) {
    std::cerr << "netblk: " << e.what() << std::endl;
    return 1;
  }
  for (auto& [sub, run] : runners)
    if (sub->parsed()) return run();
  return 1;
}
