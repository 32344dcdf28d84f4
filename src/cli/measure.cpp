// netblk measure: qemu-img measure [--output=human|json] [-O FMT] [-o OPTS] (--size N | NAME).
#include <iostream>

#include "cli/verbs.hpp"
#include "core/parse.hpp"

namespace netblk::cli {
namespace {

const VerbRegistration kMeasure{Verb{
    "measure", "Size a new image would need (qemu-img measure)", [](CLI::App& app) {
      struct Args {
        DriveArgs drive;
        std::string out_format = "raw", output = "human", size, snapshot;
        std::vector<std::string> options, objects;
      };
      auto a = std::make_shared<Args>();
      a->drive.add_options(app);
      add_common_options(app, a->objects, &a->drive.force_share);
      app.add_option("-O", a->out_format, "Format of the new image (raw, qcow2)");
      app.add_option("-o", a->options, "Its creation options, k=v,k=v; repeatable")->allow_extra_args(false);
      app.add_option("--size", a->size, "Measure an empty image of this size instead of a source");
      app.add_option("--output", a->output, "human (default) or json");
      app.add_option("-l", a->snapshot, "Internal snapshot of the source (not supported)");
      app.add_option("filename", a->drive.name, "The source image");
      return [a]() {
        return run_verb([a]() -> Task<int> {
          define_objects(a->objects);
          if (a->output != "human" && a->output != "json")
            throw Error(EINVAL, "--output must be used with human or json as argument.");
          const bool has_source = !a->drive.name.empty() || !a->drive.drive.empty();
          if (has_source && !a->size.empty()) throw Error(EINVAL, "--size N cannot be used together with a filename.");
          if (!has_source && a->size.empty()) throw Error(EINVAL, "Either --size N or one filename must be specified.");
          if (!a->snapshot.empty()) throw Error(ENOTSUP, "-l: internal snapshots are not supported by netblk");
          std::string opts;
          for (const auto& o : a->options) opts += (opts.empty() ? "" : ",") + o;
          std::unique_ptr<Node> source;
          std::uint64_t size = 0;
          if (has_source) {
            source = co_await open_drive(a->drive.spec(true));
          } else {
            size = parse_size(a->size, "size");
          }
          const MeasureResult r = co_await measure_image(a->out_format, opts, source.get(), size);
          if (source) co_await source->close();
          if (a->output == "json") {
            // qemu-img's key order.
            Json j = Json::object();
            if (r.bitmaps) j["bitmaps"] = *r.bitmaps;
            j["required"] = r.required;
            j["fully-allocated"] = r.fully_allocated;
            std::cout << j.dump(4) << std::endl;
          } else {
            std::cout << "required size: " << r.required << "\nfully allocated size: " << r.fully_allocated << "\n";
            if (r.bitmaps) std::cout << "bitmaps size: " << *r.bitmaps << "\n";
            std::cout << std::flush;
          }
          co_return 0;
        });
      };
    }}};

}  // namespace
}  // namespace netblk::cli
