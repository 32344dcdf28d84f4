#include "block/open.hpp"

#include <algorithm>

#include "block/locking.hpp"
#include "core/log.hpp"
#include "core/parse.hpp"
#include "netblk/buffer.hpp"
#include "netblk/open.hpp"
#include "spec/tree.hpp"

namespace netblk {
namespace {

constexpr int kMaxDepth = 64;

std::string known_drivers() {
  std::vector<std::string> names = protocol_names();
  for (const auto& f : formats()) names.push_back(f.name);
  for (auto& f : filter_names()) names.push_back(std::move(f));
  std::sort(names.begin(), names.end());
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

// Options every node accepts (QEMU's generic block options); consumed here.
void take_generic_options(OpenContext& ctx, Json& options) {
  spec::Options o(options, spec::Options::Kind::object, "");
  if (o.boolean("read-only", false)) ctx.read_only = true;
  o.ignore("node-name");
  o.ignore("auto-read-only");
  if (auto force_share = o.boolean("force-share")) ctx.force_share = *force_share;
  if (ctx.force_share && !ctx.read_only)
    throw Error(EINVAL, "force-share=on can only be used with read-only images");
  o.ignore("discard");
  if (auto dz = o.str("detect-zeroes"); dz && *dz != "off")
    throw Error(ENOTSUP, "detect-zeroes=" + *dz + " is not supported (only 'off')");
  for (const char* k : {"read-only", "node-name", "auto-read-only", "force-share", "discard", "detect-zeroes"})
    options.erase(k);
  if (auto it = options.find("cache"); it != options.end() && it->is_object()) {
    spec::Options cache(*it, spec::Options::Kind::object, "", "cache.");
    if (auto direct = cache.boolean("direct")) ctx.cache_direct = *direct;
    if (auto no_flush = cache.boolean("no-flush")) ctx.cache_no_flush = *no_flush;
    cache.finish();
    options.erase("cache");
  }
}

// What a format asks of its file child (a format's storage unless its driver says otherwise).
Permissions format_file_permissions(const FormatDriver& fmt, Permissions parent, bool read_only, const Json& options) {
  if (fmt.file_permissions) return fmt.file_permissions(parent, read_only, options);
  return locking::storage_child(parent, !read_only);
}

Task<std::unique_ptr<Node>> probe_and_open(OpenContext ctx, Json options, std::unique_ptr<Node> file) {
  std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(file->size(), 4096));
  Buffer head(n ? n : 1);
  if (n) co_await file->read(0, head.span().subspan(0, n));
  const FormatDriver* best = nullptr;
  int best_score = 0;
  for (const auto& f : formats()) {
    if (!f.probe) continue;
    int score = f.probe(head.span().subspan(0, n));
    if (score > best_score) best = &f, best_score = score;
  }
  if (!best) best = find_format("raw");
  if (!best) throw Error(ENOTSUP, file->display_name() + ": could not determine the image format");
  spec::Options o(std::move(options), spec::Options::Kind::format, best->name);
  NETBLK_LOG(debug, "{}: probed format {}", file->display_name(), best->name);
  // The file was opened before its format was known: it takes its locks now, before the
  // format reads or writes anything that matters.
  if (ctx.permissions) file->set_permissions(format_file_permissions(*best, *ctx.permissions, ctx.read_only, o.tree()));
  auto node = co_await best->open(ctx, o, std::move(file), true);
  o.finish();
  co_return node;
}

}  // namespace

std::string resolve_relative(const std::string& base_dir, const std::string& path) {
  if (base_dir.empty() || path.empty() || path[0] == '/' || !filename_prefix(path).empty() ||
      spec::is_json_name(path))
    return path;
  return base_dir.back() == '/' ? base_dir + path : base_dir + "/" + path;  // the root: no "//"
}

Task<std::unique_ptr<Node>> open_node(OpenContext ctx, Json options, std::string filename,
                                      bool protocol_only) {
  if (++ctx.depth > kMaxDepth) throw Error(ELOOP, "backing chain too deep (a loop?) at '" + filename + "'");
  if (options.is_null()) options = Json::object();
  if (spec::is_json_name(filename)) {
    spec::merge(options, spec::parse_json_name(filename));
    filename.clear();
  }
  take_generic_options(ctx, options);
  if (ctx.permissions) {
    // A read-only node writes nothing, whatever its users asked for; under force-share it
    // lets others do anything.
    if (ctx.read_only) ctx.permissions->perm &= ~(kPermWrite | kPermWriteUnchanged | kPermResize);
    if (ctx.force_share) ctx.permissions->shared = kPermAll;
  }
  std::string driver;
  if (auto it = options.find("driver"); it != options.end()) {
    if (!it->is_string()) throw Error(EINVAL, "Parameter 'driver' expects a driver name");
    driver = it->get<std::string>();
    options.erase("driver");
  }
  const ProtocolDriver* proto = driver.empty() ? nullptr : find_protocol(driver);
  const FormatDriver* fmt = driver.empty() ? nullptr : find_format(driver);
  const FilterDriver* filter = driver.empty() ? nullptr : find_filter(driver);
  if (!driver.empty() && !proto && !fmt && !filter)
    throw Error(EINVAL, "Unknown driver '" + driver + "' (known: " + known_drivers() + ")");

  // A protocol child without a driver: the filename's prefix chooses (a plain path is "file").
  if (!proto && !fmt && !filter && protocol_only) {
    if (filename.empty() && !options.contains("filename"))
      throw Error(EINVAL, "A block device must be specified for \"file\"");
    std::string prefix = filename_prefix(filename);
    proto = prefix.empty() ? find_protocol("file") : find_protocol_by_prefix(prefix);
    if (!proto) throw Error(EINVAL, "Unknown protocol '" + prefix + "'");
    if (prefix.empty()) filename = resolve_relative(ctx.base_dir, filename);
  }
  if (proto) {
    if (!filename.empty()) {
      Json parsed = Json::object();
      if (proto->parse_filename) proto->parse_filename(filename, parsed);
      else parsed["filename"] = filename;
      try {
        spec::merge(options, parsed);
      } catch (const Error& e) {
        throw Error(EINVAL, std::string(e.what()) + " (set both by the filename and by an option)");
      }
    }
    spec::Options o(std::move(options), spec::Options::Kind::protocol, proto->name);
    auto node = co_await proto->open(ctx, o);
    o.finish();
    node->set_force_share(ctx.force_share);
    if (ctx.permissions) node->set_permissions(*ctx.permissions);
    co_return node;
  }

  // A format (named or probed) or a filter, over its "file" child (an option tree or a
  // filename).
  Json file_options = Json::object();
  std::string file_name = std::move(filename);
  if (auto it = options.find("file"); it != options.end()) {
    if (it->is_string()) {
      if (!file_name.empty()) throw Error(EINVAL, "'file' is given both as a filename and as an option");
      file_name = it->get<std::string>();
    } else if (it->is_object()) {
      file_options = *it;
    } else {
      throw Error(EINVAL, "Parameter 'file' expects a filename or an object");
    }
    options.erase("file");
  }
  if (file_name.empty() && file_options.empty())
    throw Error(EINVAL, "A block device must be specified for \"file\"");
  // The file child is asked for what this node's driver needs of it; a probed format's file
  // is asked once the format is known.
  OpenContext file_ctx = ctx;
  file_ctx.permissions.reset();
  if (ctx.permissions && filter)
    file_ctx.permissions =
        filter->file_permissions ? filter->file_permissions(*ctx.permissions, ctx.read_only, options) : *ctx.permissions;
  if (ctx.permissions && fmt) file_ctx.permissions = format_file_permissions(*fmt, *ctx.permissions, ctx.read_only, options);
  auto file = co_await open_node(file_ctx, std::move(file_options), std::move(file_name), true);
  std::unique_ptr<Node> node;
  if (filter) {
    spec::Options o(std::move(options), spec::Options::Kind::filter, filter->name);
    node = co_await filter->open(ctx, o, std::move(file));
    o.finish();
  } else if (!fmt) {
    node = co_await probe_and_open(ctx, std::move(options), std::move(file));
  } else {
    spec::Options o(std::move(options), spec::Options::Kind::format, fmt->name);
    node = co_await fmt->open(ctx, o, std::move(file), false);
    o.finish();
  }
  node->set_force_share(ctx.force_share);
  co_return node;
}

Task<std::unique_ptr<Node>> open_drive(DriveSpec spec) {
  // GCC 12 miscompiles co_await inside braced initialisers: keep it a statement of its own.
  Executor ex = co_await asio::this_coro::executor;
  OpenContext ctx;
  ctx.executor = ex;
  ctx.read_only = spec.read_only;
  ctx.force_share = spec.force_share;
  if (spec.force_share && !spec.read_only)  // as qemu-img, naming the image
    throw Error(EINVAL, (spec.filename.empty() ? std::string() : "Could not open '" + spec.filename + "': ") +
                            "force-share=on can only be used with read-only images");
  ctx.permissions = spec.permissions ? *spec.permissions : locking::default_permissions(spec.read_only);
  if (spec.copy_on_read) ctx.permissions = locking::copy_on_read_child(*ctx.permissions);
  Json options = spec.options.is_null() ? Json::object() : spec.options;
  if (spec::is_json_name(spec.filename)) {
    spec::merge(options, spec::parse_json_name(spec.filename));
    spec.filename.clear();
  }
  if (!spec.format.empty()) {
    auto it = options.find("driver");
    if (it != options.end() && *it != spec.format)
      throw Error(EINVAL, "format '" + spec.format + "' conflicts with driver '" + spec::scalar_text(*it) + "'");
    options["driver"] = spec.format;
  }
  const FilterDriver* cor = nullptr;
  if (spec.copy_on_read) {
    cor = find_filter("copy-on-read");
    if (!cor) throw Error(ENOTSUP, "copy-on-read is not available in this build");
  }
  auto node = co_await open_node(ctx, std::move(options), std::move(spec.filename));
  if (cor) {
    spec::Options none(Json::object(), spec::Options::Kind::filter, cor->name);
    node = co_await cor->open(ctx, none, std::move(node));
  }
  co_return node;
}

std::string canonical_name(const Node& node) {
  std::string plain = node.plain_filename();
  if (!plain.empty()) return plain;
  Json opts = node.options();
  // A format node with only "driver" and "file" is named by its file (the format is stored
  // separately, as backing_fmt).
  if (node.file() && opts.size() == 2 && opts.contains("driver") && opts.contains("file")) {
    std::string child = node.file()->plain_filename();
    if (!child.empty()) return child;
  }
  return "json:" + opts.dump();
}

void apply_cache_mode(Json& options, std::string_view mode) {
  bool direct, no_flush;
  if (mode == "writeback" || mode == "writethrough") direct = false, no_flush = false;
  else if (mode == "none" || mode == "directsync") direct = true, no_flush = false;
  else if (mode == "unsafe") direct = false, no_flush = true;
  else throw Error(EINVAL, "invalid cache option '" + std::string(mode) + "'");
  options["cache"]["direct"] = direct;
  options["cache"]["no-flush"] = no_flush;
}

DriveSpec drive_from_image_opts(std::string_view text) {
  DriveSpec spec;
  spec.options = spec::parse_keyval(text);
  return spec;
}

DriveSpec drive_from_drive_opts(std::string_view text) {
  spec::FlatOptions flat = spec::parse_keyval_flat(text);
  spec::FlatOptions rest;
  DriveSpec spec;
  bool have_file = false;
  for (auto& [key, value] : flat) {
    std::string v = spec::scalar_text(value);
    auto once = [&, &key = key](bool& seen) {
      if (seen) throw Error(EINVAL, "Parameter '" + key + "' given twice");
      seen = true;
    };
    if (key == "file") {
      once(have_file);
      spec.filename = v;
    } else if (key == "format") {
      spec.format = v;
    } else if (key == "readonly" || key == "read-only") {
      spec.read_only = parse_bool(v, "Parameter '" + key + "'");
    } else if (key == "copy-on-read") {
      spec.copy_on_read = parse_bool(v, "Parameter 'copy-on-read'");
    } else if (key == "media") {
      if (v == "cdrom") spec.read_only = true;
      else if (v != "disk") throw Error(EINVAL, "'" + v + "' invalid media");
    } else if (key == "cache") {
      Json cache = Json::object();
      apply_cache_mode(cache, v);
      rest.emplace_back("cache.direct", cache["cache"]["direct"]);
      rest.emplace_back("cache.no-flush", cache["cache"]["no-flush"]);
    } else if (key == "aio") {
      rest.emplace_back("file.aio", v);
    } else if (key == "if" || key == "index" || key == "bus" || key == "unit" || key == "id" ||
               key == "serial" || key == "werror" || key == "rerror" || (key == "snapshot" && v == "off")) {
      // Guest-side -drive keys: meaningless here, accepted so command lines carry over.
    } else {
      rest.emplace_back(key, value);
    }
  }
  spec.options = spec::crumple(rest);
  return spec;
}

}  // namespace netblk
