// netblk snapshot: qemu-img's -l (the list, in its layout), -c, -a and -d (create, apply,
// delete a qcow2 image's internal snapshots, as QEMU's qcow2 driver does), with qemu-img's
// messages and exit codes.
#include <ctime>
#include <iostream>

#include "cli/verbs.hpp"
#include "core/text.hpp"

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

// qemu-img's "-95 (Operation not supported)".
std::string errno_text(int code) { return "-" + std::to_string(code) + " (" + std::strerror(code) + ")"; }

const VerbRegistration kSnapshot{Verb{
    "snapshot", "List, create, apply or delete a qcow2 image's internal snapshots (qemu-img snapshot)",
    [](CLI::App& app) {
      struct Args {
        DriveArgs drive;
        std::string create, apply, remove;
        std::vector<std::string> objects;
        bool list = false, quiet = false;
        CLI::Option *c = nullptr, *a = nullptr, *d = nullptr;
      };
      auto a = std::make_shared<Args>();
      a->drive.add_options(app);
      add_common_options(app, a->objects, &a->drive.force_share);
      app.add_flag("-l", a->list, "List the snapshots");
      a->c = app.add_option("-c", a->create, "Create a snapshot named NAME");
      a->a = app.add_option("-a", a->apply, "Apply (revert to) the snapshot with this ID or name");
      a->d = app.add_option("-d", a->remove, "Delete the snapshot named NAME");
      app.add_flag("-q", a->quiet, "Quiet");
      app.add_option("filename", a->drive.name, "The image")->required();
      return [a]() {
        return run_verb([a]() -> Task<int> {
          define_objects(a->objects);
          const bool create = a->c->count() > 0, apply = a->a->count() > 0, remove = a->d->count() > 0;
          const int actions = a->list + create + apply + remove;
          if (actions > 1) throw Error(EINVAL, "Cannot mix '-l', '-a', '-c', '-d'");
          if (a->list) {
            auto image = co_await open_drive(a->drive.spec(true));
            const std::vector<Snapshot> list = co_await image->snapshots();
            co_await image->close();
            if (!list.empty()) {
              char head[128];
              std::snprintf(head, sizeof head, "%-10s%-17s%8s%20s%13s%11s", "ID", "TAG", "VM SIZE", "DATE",
                            "VM CLOCK", "ICOUNT");
              std::cout << "Snapshot list:\n" << head << "\n";
              for (const auto& s : list) std::cout << snapshot_line(s) << "\n";
              std::cout << std::flush;
            }
            co_return 0;
          }
          // The other actions (and none at all, as qemu-img) open the image for writing.
          DriveSpec spec = a->drive.spec(false);
          default_cache_mode(spec, "writeback");
          auto image = co_await open_drive(spec);
          const bool can = image->supports_snapshots();
          std::string failure;
          int code = 0;
          try {
            if (create) {
              if (!can) {
                failure = "Could not create snapshot '" + a->create + "': " + errno_text(ENOTSUP);
                code = ENOTSUP;
              } else {
                co_await image->create_snapshot(a->create);
              }
            } else if (apply) {
              if (!can) {
                failure = "Could not apply snapshot '" + a->apply + "': Block driver does not support snapshots";
                code = ENOTSUP;
              } else {
                co_await image->apply_snapshot(a->apply);
              }
            } else if (remove) {
              if (!can) {
                failure = "Could not delete snapshot '" + a->remove + "': snapshot not found";
                code = ENOENT;
              } else {
                co_await image->delete_snapshot(a->remove);
              }
            }
          } catch (const Error& e) {
            code = e.code() ? e.code() : EIO;
            if (create) failure = "Could not create snapshot '" + a->create + "': " + e.what();
            else if (apply && e.code() == ENOENT)
              failure = "Could not apply snapshot '" + a->apply + "': Failed to load snapshot: No such file or directory";
            else if (apply) failure = "Could not apply snapshot '" + a->apply + "': " + e.what();
            else if (e.code() == ENOENT) failure = "Could not delete snapshot '" + a->remove + "': snapshot not found";
            else failure = "Could not delete snapshot '" + a->remove + "': " + e.what();
          }
          co_await image->close();
          if (!failure.empty()) throw Error(code, failure);
          co_return 0;
        });
      };
    }}};

}  // namespace
}  // namespace netblk::cli
