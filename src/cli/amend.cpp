// netblk amend: qemu-img amend -o OPTIONS [-f FMT] [-p] [-q] [--force] NAME.
#include "cli/verbs.hpp"
#include "spec/tree.hpp"

namespace netblk::cli {
namespace {

const VerbRegistration kAmend{Verb{
    "amend", "Change format options of an image in place (qemu-img amend)", [](CLI::App& app) {
      struct Args {
        DriveArgs drive;
        std::string cache = "writeback";
        std::vector<std::string> options, objects;
        bool progress = false, quiet = false, force = false;
      };
      auto a = std::make_shared<Args>();
      a->drive.add_options(app);
      add_common_options(app, a->objects);
      app.add_option("-o", a->options, "The options to change, k=v,k=v; repeatable")->allow_extra_args(false);
      app.add_option("-t", a->cache, "Cache mode (default writeback)");
      app.add_flag("-p", a->progress, "Show progress (accepted; nothing is shown)");
      app.add_flag("-q", a->quiet, "Quiet");
      app.add_flag("--force", a->force, "Allow unsafe changes (accepted; none are made)");
      app.add_option("filename", a->drive.name, "The image")->required();
      return [a]() {
        return run_verb([a]() -> Task<int> {
          define_objects(a->objects);
          if (a->options.empty()) throw Error(EINVAL, "Must specify options (-o)");
          std::string text;
          for (const auto& o : a->options) text += (text.empty() ? "" : ",") + o;
          const Json options = spec::parse_keyval(text);
          DriveSpec spec = a->drive.spec(false);
          default_cache_mode(spec, a->cache);
          auto image = co_await open_drive(spec);
          co_await image->amend(options);
          co_await image->close();
          co_return 0;
        });
      };
    }}};

}  // namespace
}  // namespace netblk::cli
