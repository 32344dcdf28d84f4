// netblk snapshot -l: qemu-img's list of a qcow2 image's internal snapshots, in its layout.
// Creating, applying and deleting them (-c, -a, -d) is refused: a writer of an image with
// snapshots must copy clusters they share first, and netblk's qcow2 writer does not yet.
#include <ctime>
#include <iostream>

#include "cli/verbs.hpp"
#include "core/parse.hpp"

namespace netblk::cli {
namespace {

// One line of qemu-img's table (QEMU's bdrv_snapshot_dump()).
std::string snapshot_line(const Snapshot& s) {
  char date[32] = "";
  const std::time_t t = s.date_sec;
  std::tm local{};
  if (localtime_r(&t, &local)) std::strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S", &local);
  const std::uint64_t secs = s.vm_clock_nsec / 1000000000;
  char clock[64];
  std::snprintf(clock, sizeof clock, "%02d:%02d:%02d.%03d", static_cast<int>(secs / 3600),
                static_cast<int>((secs / 60) % 60), static_cast<int>(secs % 60),
                static_cast<int>((s.vm_clock_nsec / 1000000) % 1000));
  const std::string icount = s.icount ? std::to_string(*s.icount) : std::string();
  char line[512];
  std::snprintf(line, sizeof line, "%-9s %-16s %8s%20s%13s%11s", s.id.c_str(), s.name.c_str(),
                human_size(s.vm_state_size).c_str(), date, clock, icount.c_str());
  return line;
}

const VerbRegistration kSnapshot{Verb{
    "snapshot", "List a qcow2 image's internal snapshots (qemu-img snapshot -l)", [](CLI::App& app) {
      struct Args {
        DriveArgs drive;
        std::string create, apply, remove;
        std::vector<std::string> objects;
        bool list = false, quiet = false;
      };
      auto a = std::make_shared<Args>();
      a->drive.add_options(app);
      add_common_options(app, a->objects, &a->drive.force_share);
      app.add_flag("-l", a->list, "List the snapshots");
      app.add_option("-c", a->create, "Create a snapshot (not supported)");
      app.add_option("-a", a->apply, "Apply a snapshot (not supported)");
      app.add_option("-d", a->remove, "Delete a snapshot (not supported)");
      app.add_flag("-q", a->quiet, "Quiet");
      app.add_option("filename", a->drive.name, "The image")->required();
      return [a]() {
        return run_verb([a]() -> Task<int> {
          define_objects(a->objects);
          const int actions = a->list + !a->create.empty() + !a->apply.empty() + !a->remove.empty();
          if (actions > 1) throw Error(EINVAL, "Cannot mix '-l', '-a', '-c', '-d'");
          if (actions == 1 && !a->list)
            throw Error(ENOTSUP, a->drive.name + ": creating, applying and deleting internal snapshots is not supported by "
                                                 "netblk (use qemu-img snapshot)");
          auto image = co_await open_drive(a->drive.spec(true));
          const std::vector<Snapshot> list = co_await image->snapshots();
          co_await image->close();
          if (!list.empty()) {
            char head[128];
            std::snprintf(head, sizeof head, "%-10s%-17s%8s%20s%13s%11s", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK",
                          "ICOUNT");
            std::cout << "Snapshot list:\n" << head << "\n";
            for (const auto& s : list) std::cout << snapshot_line(s) << "\n";
            std::cout << std::flush;
          }
          co_return 0;
        });
      };
    }}};

}  // namespace
}  // namespace netblk::cli
