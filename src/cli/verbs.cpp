#include "cli/verbs.hpp"

#include <iostream>

#include "block/driver.hpp"
#include "block/open.hpp"
#include "core/parse.hpp"
#include "core/text.hpp"
#include "core/secrets.hpp"
#include "spec/tree.hpp"

namespace netblk::cli {

namespace {
std::vector<Verb>& registry() {
  static std::vector<Verb> v;
  return v;
}
}  // namespace

void register_verb(Verb verb) { registry().push_back(std::move(verb)); }
const std::vector<Verb>& verbs() { return registry(); }

void DriveArgs::add_options(CLI::App& app, const std::string& format_flag) {
  app.add_option(format_flag, format, "Image format (raw, qcow2, ...); probed when absent");
  app.add_flag("--image-opts", image_opts, "The name is a list of QEMU blockdev options (driver=...,file.x=...)");
  app.add_option("--drive", drive, "The drive as QEMU -drive options (file=...,format=...,copy-on-read=on)");
}

DriveSpec DriveArgs::spec(bool read_only) const {
  DriveSpec s;
  if (!drive.empty()) {
    if (!name.empty()) throw Error(EINVAL, "give either --drive or a file name, not both");
    if (image_opts) throw Error(EINVAL, "--image-opts and --drive cannot be combined");
    s = drive_from_drive_opts(drive);
    if (!format.empty()) {
      if (!s.format.empty() && s.format != format)
        throw Error(EINVAL, "format '" + format + "' conflicts with format=" + s.format);
      s.format = format;
    }
  } else if (image_opts) {
    if (name.empty()) throw Error(EINVAL, "--image-opts needs the options as the image name");
    if (!format.empty()) throw Error(EINVAL, "--image-opts and -f cannot be combined; use driver=");
    s = drive_from_image_opts(name);
  } else {
    if (name.empty()) throw Error(EINVAL, "Expecting one image file name");
    s.filename = name;
    s.format = format;
  }
  s.read_only = s.read_only || read_only;
  s.force_share = s.force_share || force_share;
  return s;
}

void add_common_options(CLI::App& app, std::vector<std::string>& objects, bool* force_share) {
  app.add_option("--object", objects, "Define an object: secret,id=ID,data=TEXT|file=PATH[,format=raw|base64]")->allow_extra_args(false);
  if (force_share)
    app.add_flag("-U,--force-share", *force_share,
                 "Let others write the image meanwhile (QEMU's force-share=on; read-only images only)");
}

void define_objects(const std::vector<std::string>& objects) {
  for (const auto& o : objects) secrets::define(spec::parse_keyval(o, "qom-type"));
}

void default_cache_mode(DriveSpec& spec, std::string_view mode) {
  if (!spec.options.contains("cache")) apply_cache_mode(spec.options, mode);
}

std::string backing_name_from_here(const Node& image, const std::string& name) {
  const Node* file = image.file();
  if (!file || file->driver() != "file") return name;
  return resolve_relative(directory_of(file->plain_filename()), name);
}

unsigned parallel_requests_option(const std::string& text) {
  std::uint64_t n = 0;
  try {
    n = parse_uint(text, "-m");
  } catch (const Error&) {
  }
  if (n < 1 || n > 16) throw Error(EINVAL, "Invalid number of coroutines. Allowed number of coroutines is between 1 and 16");
  return static_cast<unsigned>(n);
}

void print_error(const std::string& message) { std::cerr << "netblk: " << message << std::endl; }

int run_verb(std::function<Task<int>()> body, int error_exit) {
  try {
    return run_sync<int>(std::move(body));
  } catch (const Error& e) {
    print_error(e.what());
  } catch (const std::bad_alloc&) {
    print_error("out of memory");
  } catch (const std::exception& e) {
    print_error(std::string("internal error: ") + e.what());
  }
  return error_exit;
}

}  // namespace netblk::cli
