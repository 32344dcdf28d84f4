// The netblk command: each verb registers itself (name, help, options, runner) from its
// own file, so a protocol or export can add a verb without touching main.cpp.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "netblk/open.hpp"

namespace netblk::cli {

// Sets up `app` (a subcommand) and returns the function that runs the verb with the parsed
// options; its return value is the exit code.
using VerbSetup = std::function<std::function<int()>(CLI::App& app)>;

struct Verb {
  std::string name;
  std::string description;
  VerbSetup setup;
};

void register_verb(Verb verb);
const std::vector<Verb>& verbs();

struct VerbRegistration {
  explicit VerbRegistration(Verb v) { register_verb(std::move(v)); }
};

// The ways a verb names one drive: a positional name (plain, URL or json:), -f, and
// --image-opts (the name is QEMU blockdev keys) or --drive SPEC (QEMU -drive keys).
struct DriveArgs {
  std::string name;
  std::string format;
  bool image_opts = false;
  std::string drive;
  // -U/--force-share: others may write the image meanwhile (read-only drives only).
  bool force_share = false;
  // Adds -f/--format, --image-opts and --drive to `app`; the positional is added by the verb.
  void add_options(CLI::App& app, const std::string& format_flag = "-f,--format");
  // Builds the DriveSpec; throws Error for a missing or contradictory name.
  DriveSpec spec(bool read_only) const;
};

// Adds --object (QEMU's secret objects), repeatable, and, given `force_share`, qemu-img's
// -U/--force-share.
void add_common_options(CLI::App& app, std::vector<std::string>& objects, bool* force_share = nullptr);
// Defines the secrets given with --object.
void define_objects(const std::vector<std::string>& objects);

// Applies a -t/-T cache mode (apply_cache_mode) to a drive whose name sets none itself: a
// json: name or --image-opts with cache.* keeps its own.
void default_cache_mode(DriveSpec& spec, std::string_view mode);

// A backing file name as an image stores it, made openable from here: a relative path is
// relative to the directory of the image's file (QEMU's rule).
std::string backing_name_from_here(const Node& image, const std::string& name);

// Runs `body` on a fresh event loop; an Error becomes "netblk: MESSAGE" on stderr and
// `error_exit`.
int run_verb(std::function<Task<int>()> body, int error_exit = 1);

// qemu-img's -m (requests in flight, 1-16), with its message for anything else.
unsigned parallel_requests_option(const std::string& text);

// Prints "netblk: message" to stderr.
void print_error(const std::string& message);

}  // namespace netblk::cli
