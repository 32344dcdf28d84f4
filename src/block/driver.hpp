// Driver registration: each protocol and format folder registers itself once with a
// static DriverRegistration, naming its URL prefixes and its filename parser.
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "netblk/node.hpp"
#include "netblk/open.hpp"
#include "spec/options.hpp"

namespace netblk {

// What a driver needs to know about the open in progress.
struct OpenContext {
  Executor executor;
  bool read_only = false;
  // Directory that relative backing file names are resolved against ("" = cwd).
  std::string base_dir;
  // How deep in a backing chain this node is (guards against loops).
  int depth = 0;
  // QEMU's cache.direct (O_DIRECT for files), inherited by children.
  bool cache_direct = false;
  // QEMU's cache.no-flush: flush requests succeed without reaching stable storage
  // (cache=unsafe; qemu-img convert's default for its target). Inherited by children.
  bool cache_no_flush = false;
  // Image locking: what this node's users need of it and let others do (QEMU's
  // permissions). Unset: take no locks (yet); a probed format's file gets its own once the
  // format is known. Children are asked what their parent's driver needs (block/locking).
  std::optional<Permissions> permissions;
  // QEMU's force-share=on: the node and its children share everything. Inherited.
  bool force_share = false;
};

// What a format or filter asks of its file child, given what its own users ask
// (block/locking.hpp); unset: QEMU's rule for a format's storage (locking::storage_child).
using ChildPermissions = std::function<Permissions(Permissions parent, bool read_only, const Json& options)>;

struct ProtocolDriver {
  std::string name;  // the "driver" value: "file", "nbd", "http"
  // Filename prefixes before ':' that select this driver ("nbd", "nbd+unix", "http").
  std::vector<std::string> prefixes;
  // Turns a filename/URL into options (merged into what the user gave). May be empty for
  // drivers that only take options.
  std::function<void(const std::string& filename, Json& options)> parse_filename;
  std::function<Task<std::unique_ptr<Node>>(const OpenContext&, spec::Options&)> open;
  // Creates (or truncates to `size`) the file named by `options`, for `create`. Optional.
  std::function<Task<void>(const OpenContext&, spec::Options&, std::uint64_t size)> create;
  // The library the protocol is built on and its version ("libcurl 7.88.1"), for
  // `netblk --version`. Optional: empty for protocols that are netblk's own.
  std::function<std::string()> library_version = {};
};

struct CreateRequest {
  std::string filename;                 // the new image's name (a protocol filename)
  std::optional<std::uint64_t> size;    // absent: the format may take it from the backing file
  spec::Options* options = nullptr;     // -o options; the format marks what it uses
};

struct FormatDriver {
  std::string name;  // "raw", "qcow2"
  // How surely `head` (the first bytes, up to 4 KiB) is this format: 0 = not at all.
  std::function<int(std::span<const std::byte> head)> probe;
  // Opens the format on `file`. `probed` is true when the format was guessed.
  std::function<Task<std::unique_ptr<Node>>(const OpenContext&, spec::Options&, std::unique_ptr<Node> file,
                                            bool probed)>
      open;
  std::function<Task<void>(const OpenContext&, const CreateRequest&)> create;  // optional
  // qemu-img measure: what an image of this format made with `options` (-o) takes, holding
  // `source`'s data (or, without one, `size` bytes of nothing). Optional.
  std::function<Task<MeasureResult>(spec::Options& options, Node* source, std::uint64_t size)> measure = {};
  ChildPermissions file_permissions;
};

// A filter over one child node (copy-on-read): `driver=NAME,file=...`, or inserted by an
// option such as --drive's copy-on-read=on.
struct FilterDriver {
  std::string name;
  std::function<Task<std::unique_ptr<Node>>(const OpenContext&, spec::Options&, std::unique_ptr<Node> child)> open;
  ChildPermissions file_permissions;  // unset: passed through as they are
};

void register_protocol(ProtocolDriver driver);
void register_format(FormatDriver driver);
void register_filter(FilterDriver driver);
const ProtocolDriver* find_protocol(std::string_view name);
const ProtocolDriver* find_protocol_by_prefix(std::string_view prefix);
const FormatDriver* find_format(std::string_view name);
const FilterDriver* find_filter(std::string_view name);
const std::vector<FormatDriver>& formats();
std::vector<std::string> protocol_names();
std::vector<std::string> filter_names();

// The protocol prefix of a filename ("nbd" for "nbd://..."), or "" for a plain path.
// As QEMU: a ':' that comes before any '/'.
std::string filename_prefix(std::string_view filename);

struct DriverRegistration {
  explicit DriverRegistration(ProtocolDriver d) { register_protocol(std::move(d)); }
  explicit DriverRegistration(FormatDriver d) { register_format(std::move(d)); }
  explicit DriverRegistration(FilterDriver d) { register_filter(std::move(d)); }
};

}  // namespace netblk
