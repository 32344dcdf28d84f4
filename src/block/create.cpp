#include <filesystem>

#include "block/locking.hpp"
#include "block/open.hpp"
#include "netblk/open.hpp"
#include "spec/tree.hpp"

namespace netblk {
namespace {

// An image that is its own backing file can never be read. As QEMU, refuse the same name;
// beyond QEMU, also the same local file named another way ("./a.qcow2" next to
// "a.qcow2"): a relative backing name is resolved against the image's directory.
void refuse_self_backing(const std::string& filename, const spec::Options& options) {
  auto it = options.tree().find("backing_file");
  if (it == options.tree().end() || !it->is_string()) return;
  const std::string backing = it->get<std::string>();
  bool same = backing == filename;
  if (!same && !filename_prefix(filename).size() && !filename_prefix(backing).size() && !spec::is_json_name(backing)) {
    namespace fs = std::filesystem;
    const fs::path image = fs::absolute(filename).lexically_normal();
    const fs::path base = fs::path(backing).is_absolute() ? fs::path(backing) : image.parent_path() / backing;
    same = base.lexically_normal() == image;
  }
  if (same) throw Error(EINVAL, filename + ": Error: Trying to create an image with the same filename as the backing file");
}

}  // namespace

Task<std::unique_ptr<Node>> create_protocol_file(const OpenContext& ctx, const std::string& filename,
                                                 std::uint64_t size) {
  std::string prefix = filename_prefix(filename);
  const ProtocolDriver* proto = prefix.empty() ? find_protocol("file") : find_protocol_by_prefix(prefix);
  if (!proto) throw Error(EINVAL, "Unknown protocol '" + prefix + "'");
  if (!proto->create)
    throw Error(ENOTSUP, filename + ": protocol '" + proto->name + "' does not support image creation");
  Json parsed = Json::object();
  if (proto->parse_filename) proto->parse_filename(filename, parsed);
  else parsed["filename"] = filename;
  spec::Options o(parsed, spec::Options::Kind::protocol, proto->name);
  co_await proto->create(ctx, o, size);
  OpenContext rw = ctx;
  rw.read_only = false;
  rw.force_share = false;
  // What a format's storage takes while it is written (as QEMU's image creation).
  rw.permissions = locking::storage_child(locking::default_permissions(false), true);
  co_return co_await open_node(rw, Json::object(), filename, true);
}

Task<void> create_image(std::string format, std::string filename, std::string options_text,
                        std::optional<std::uint64_t> size) {
  const FormatDriver* fmt = find_format(format);
  if (!fmt) throw Error(EINVAL, "Unknown file format '" + format + "'");
  if (!fmt->create) throw Error(ENOTSUP, "Format driver '" + format + "' does not support image creation");
  spec::Options o(spec::parse_keyval(options_text), spec::Options::Kind::create, format);
  refuse_self_backing(filename, o);
  Executor ex = co_await asio::this_coro::executor;
  OpenContext ctx;
  ctx.executor = ex;
  CreateRequest request{filename, size, &o};
  co_await fmt->create(ctx, request);
}

Task<MeasureResult> measure_image(std::string format, std::string options_text, Node* source, std::uint64_t size) {
  const FormatDriver* fmt = find_format(format);
  if (!fmt) throw Error(EINVAL, "Unknown file format '" + format + "'");
  if (!fmt->measure) throw Error(ENOTSUP, "Block driver '" + format + "' does not support size measurement");
  spec::Options o(spec::parse_keyval(options_text), spec::Options::Kind::create, format);
  co_return co_await fmt->measure(o, source, size);
}

}  // namespace netblk
