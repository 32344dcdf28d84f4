// netblk pull: QEMU's block-stream, offline. Every cluster a qcow2 overlay lacks is copied
// into it from its backing chain (formats/qcow2/pull.hpp); run again after an interruption,
// it fetches only what is still missing. --drop-backing then lets the overlay stand alone.
#include "cli/progress.hpp"
#include "cli/verbs.hpp"
#include "formats/qcow2/pull.hpp"

namespace netblk::cli {
namespace {

const VerbRegistration kPull{Verb{
    "pull", "Copy into a qcow2 overlay everything it takes from its backing chain (QEMU's block-stream)",
    [](CLI::App& app) {
      struct Args {
        DriveArgs drive;
        std::vector<std::string> objects;
        bool progress = false, quiet = false, drop_backing = false;
        std::string requests = "4";
        std::string cache = "writeback";
      };
      auto a = std::make_shared<Args>();
      a->drive.add_options(app);
      add_common_options(app, a->objects);
      app.add_flag("-p", a->progress, "Show progress");
      app.add_flag("-q", a->quiet, "Quiet");
      app.add_option("-m", a->requests, "Requests to the backing chain in flight (1-16, default 4)");
      app.add_option("-t", a->cache, "Cache mode of the overlay (default writeback)");
      app.add_flag("--drop-backing", a->drop_backing,
                   "Then clear the overlay's backing file reference, so that it stands alone");
      app.add_option("filename", a->drive.name, "The qcow2 overlay")->required();
      return [a]() {
        return run_verb([a]() -> Task<int> {
          define_objects(a->objects);
          qcow2::PullOptions options;
          options.requests = parallel_requests_option(a->requests);
          DriveSpec spec = a->drive.spec(false);
          default_cache_mode(spec, a->cache);
          auto node = co_await open_drive(spec);
          qcow2::Qcow2Node* overlay = qcow2::qcow2_under(*node);
          if (!overlay)
            throw Error(ENOTSUP, canonical_name(*node) + ": pull needs a qcow2 overlay, not '" +
                                     std::string(node->driver()) + "'");
          Progress progress(a->progress && !a->quiet, overlay->size());
          std::uint64_t shown = 0;
          options.progress = [&](std::uint64_t done, std::uint64_t) {
            progress.add(done - shown);
            shown = done;
          };
          co_await qcow2::pull(*overlay, options);
          if (a->drop_backing && overlay->has_backing()) {
            // Only a complete overlay may forget its backing file.
            const std::uint64_t missing = co_await qcow2::unallocated_bytes(*overlay);
            if (missing)
              throw Error(EIO, canonical_name(*node) + ": " + std::to_string(missing) +
                                   " bytes are still left to the backing file; not dropping it");
            co_await overlay->drop_backing_reference();
          }
          co_await node->close();
          progress.finish();
          co_return 0;
        });
      };
    }}};

}  // namespace
}  // namespace netblk::cli
