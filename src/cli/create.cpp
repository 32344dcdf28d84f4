// netblk create: qemu-img create -f FMT [-o OPTS] [-b BACKING -F FMT] FILE [SIZE].
#include <iostream>

#include "cli/verbs.hpp"
#include "core/parse.hpp"

namespace netblk::cli {
namespace {

// Appends "key=value" to a -o list, escaping commas in the value as ",,".
void append_option(std::string& list, const std::string& key, const std::string& value) {
  std::string escaped;
  for (char c : value) escaped += (c == ',') ? std::string(",,") : std::string(1, c);
  if (!list.empty()) list += ",";
  list += key + "=" + escaped;
}

const VerbRegistration kCreate{Verb{
    "create", "Create a disk image (qemu-img create)", [](CLI::App& app) {
      struct Args {
        std::string format = "raw", filename, size, backing, backing_format;
        std::vector<std::string> options, objects;
        bool quiet = false, unsafe = false;
      };
      auto a = std::make_shared<Args>();
      app.add_option("-f,--format", a->format, "Image format (raw, qcow2)");
      app.add_option("-o", a->options, "Format options, k=v,k=v (',,' for a comma); repeatable")->allow_extra_args(false);
      app.add_option("-b,--backing", a->backing, "Backing file (any drive name, json:{...} included)");
      app.add_option("-F,--backing-format", a->backing_format, "Format of the backing file");
      app.add_flag("-q,--quiet", a->quiet, "Print nothing");
      app.add_flag("-u", a->unsafe, "Do not open the backing file (then a size is required)");
      add_common_options(app, a->objects);
      app.add_option("filename", a->filename, "The new image")->required();
      app.add_option("size", a->size, "Virtual size (512, 64k, 1.5G, ...); defaults to the backing file's");
      return [a]() {
        return run_verb([a]() -> Task<int> {
          define_objects(a->objects);
          std::string opts;
          for (const auto& o : a->options) opts += (opts.empty() ? "" : ",") + o;
          if (!a->backing.empty()) append_option(opts, "backing_file", a->backing);
          if (!a->backing_format.empty()) append_option(opts, "backing_fmt", a->backing_format);
          std::optional<std::uint64_t> size;
          if (!a->size.empty()) size = parse_size(a->size, "Image size");
          if (!a->quiet) {
            std::cout << "Formatting '" << a->filename << "', fmt=" << a->format;
            if (size) std::cout << " size=" << *size;
            std::cout << std::endl;
          }
          co_await create_image(a->format, a->filename, opts, size);
          co_return 0;
        });
      };
    }}};

}  // namespace
}  // namespace netblk::cli
