// netblk resize: qemu-img resize [--shrink] [-f FMT] NAME [+|-]SIZE, with its messages and
// exit codes (shrinking needs --shrink).
#include <iostream>

#include "cli/verbs.hpp"
#include "core/parse.hpp"

namespace netblk::cli {
namespace {

// The new size from qemu-img's "[+|-]SIZE", given the current one.
std::uint64_t new_size(const std::string& text, std::uint64_t current) {
  const bool grow = text.starts_with('+'), shrink = text.starts_with('-');
  std::uint64_t n;
  try {
    n = parse_size((grow || shrink) ? std::string_view(text).substr(1) : std::string_view(text), "size");
  } catch (const Error&) {
    throw Error(EINVAL, "Parameter 'size' expects a non-negative number below 2^64");
  }
  if (grow) {
    if (n > std::numeric_limits<std::int64_t>::max() - current) throw Error(EFBIG, "Image size too large");
    return current + n;
  }
  if (shrink) {
    if (n > current) throw Error(EINVAL, "New image size must be positive");
    return current - n;
  }
  return n;
}

const VerbRegistration kResize{Verb{
    "resize", "Grow or shrink an image (qemu-img resize)", [](CLI::App& app) {
      struct Args {
        DriveArgs drive;
        std::string size, preallocation = "off";
        std::vector<std::string> objects;
        bool shrink = false, quiet = false;
      };
      auto a = std::make_shared<Args>();
      a->drive.add_options(app);
      add_common_options(app, a->objects);
      app.add_flag("--shrink", a->shrink, "Allow the image to shrink (what lies past the new end is lost)");
      app.add_option("--preallocation", a->preallocation, "Preallocation of the new area: off (the only mode)");
      app.add_flag("-q,--quiet", a->quiet, "Print nothing");
      app.add_option("filename", a->drive.name, "The image")->required();
      app.add_option("size", a->size, "New size (1G), or a change of it (+512M, -1G)");
      // "-1G" is a size, not an option: CLI11 hands it over as an extra argument.
      app.allow_extras();
      return [a, &app]() {
        return run_verb([a, &app]() -> Task<int> {
          std::string size_text = a->size;
          for (const auto& extra : app.remaining()) {
            if (extra == "--") continue;
            if (!size_text.empty() || extra.size() < 2 || extra[0] != '-' || !std::isdigit(static_cast<unsigned char>(extra[1])))
              throw Error(EINVAL, "resize: unexpected argument '" + extra + "'");
            size_text = extra;
          }
          if (size_text.empty()) throw Error(EINVAL, "resize: the new size is missing");
          if (a->preallocation != "off")
            throw Error(ENOTSUP, "Unsupported preallocation mode '" + a->preallocation + "' (netblk: off only)");
          define_objects(a->objects);
          auto node = co_await open_drive(a->drive.spec(false));
          const std::uint64_t size = new_size(size_text, node->size());
          if (size < node->size() && !a->shrink) {
            print_error("Use the --shrink option to perform a shrink operation.");
            print_error(
                "warning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing "
                "such an operation, make sure there is no important data there.");
            co_await node->close();
            co_return 1;
          }
          if (size != node->size()) co_await node->truncate(size);
          co_await node->close();
          if (!a->quiet) std::cout << "Image resized." << std::endl;
          co_return 0;
        });
      };
    }}};

}  // namespace
}  // namespace netblk::cli
