// The raw format: the file child's bytes, optionally a window of them (QEMU's offset/size).
// A raw image whose format was probed refuses writes that would make its first sector
// probe as another format (QEMU's rule: a guest must not turn its disk into a qcow2 image
// with a backing file of the host's choosing).
#include <cstring>

#include "block/driver.hpp"
#include "block/locking.hpp"
#include "block/open.hpp"
#include "spec/tree.hpp"
#include "core/log.hpp"
#include "netblk/buffer.hpp"

namespace netblk {
namespace {

class RawNode final : public Node {
 public:
  RawNode(const OpenContext& ctx, std::unique_ptr<Node> file, std::uint64_t offset,
          std::optional<std::uint64_t> size, bool probed)
      : Node(ctx.executor), offset_(offset), size_option_(size), probed_(probed) {
    const std::uint64_t file_size = file->size();
    if (offset > file_size)
      throw Error(EINVAL, file->display_name() + ": offset (" + std::to_string(offset) +
                              ") cannot be greater than the size of the file (" + std::to_string(file_size) + ")");
    if (size && *size > file_size - offset)
      throw Error(EINVAL, file->display_name() + ": the sum of offset (" + std::to_string(offset) + ") and size (" +
                              std::to_string(*size) + ") has to be smaller or equal to the actual size of the "
                              "containing file (" + std::to_string(file_size) + ")");
    size_ = size ? *size : file_size - offset;
    limits_ = file->limits();
    caps_ = file->caps();
    if (ctx.read_only) caps_.read_only = true;
    file_ = std::move(file);
  }

  std::string_view driver() const override { return "raw"; }
  Json options() const override {
    Json j{{"driver", "raw"}};
    if (offset_) j["offset"] = offset_;
    if (size_option_) j["size"] = *size_option_;
    j["file"] = file_->options();
    return j;
  }
  std::string plain_filename() const override {
    return (offset_ || size_option_) ? std::string() : file_->plain_filename();
  }

  std::optional<FileSpan> file_span(std::uint64_t off, std::uint64_t len) const override {
    auto span = file_->file_span(offset_ + off, len);
    // A write into the first sector of a probed image must pass check_probe_safety().
    if (span && (caps_.read_only || (probed_ && off < 512))) span->writable = false;
    return span;
  }

 protected:
  Task<void> co_read(std::uint64_t off, std::span<std::byte> buf) override {
    co_await file_->read(offset_ + off, buf);
  }
  Task<FileRead> co_read_to_file(std::uint64_t off, std::uint64_t len, int fd, std::uint64_t fd_offset,
                                 std::uint64_t zero_block) override {
    co_return co_await file_->read_to_file(offset_ + off, len, fd, fd_offset, zero_block);
  }
  Task<void> co_write(std::uint64_t off, std::span<const std::byte> buf, unsigned flags) override {
    if (probed_ && off < 512) check_probe_safety(off, buf);
    co_await file_->write(offset_ + off, buf, flags);
  }
  Task<void> co_write_zeroes(std::uint64_t off, std::uint64_t len, unsigned flags) override {
    co_await file_->write_zeroes(offset_ + off, len, flags);
  }
  Task<void> co_discard(std::uint64_t off, std::uint64_t len, unsigned flags) override {
    co_await file_->discard(offset_ + off, len, flags);
  }
  Task<void> co_flush() override { co_await file_->flush(); }
  Task<void> co_truncate(std::uint64_t size) override {
    // As QEMU: a window into the file has a fixed size.
    if (offset_ || size_option_) throw Error(ENOTSUP, display_name() + ": Cannot resize a raw image with an offset or size option");
    co_await file_->truncate(size);
    size_ = size;
  }
  Task<BlockStatus> co_block_status(std::uint64_t off, std::uint64_t len) override {
    BlockStatus s = co_await file_->block_status(offset_ + off, len);
    s.host_offset = offset_ + off;
    s.flags |= kStatusAllocated;
    co_return s;
  }

 private:
  void check_probe_safety(std::uint64_t off, std::span<const std::byte> buf) const {
    // Only the bytes the write puts into the first 512 are checked; that is what probing
    // of a new head would look at.
    std::byte head[512] = {};
    std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), 512 - off));
    std::memcpy(head + off, buf.data(), n);
    for (const auto& f : formats()) {
      if (f.name == "raw" || !f.probe) continue;
      if (f.probe(std::span<const std::byte>(head, 512)) > 0)
        throw Error(EPERM, display_name() + ": write to the first sector refused: the image format was probed "
                                            "as raw, and the data would make it probe as " + f.name +
                                            " (name the format with -f raw)");
    }
  }

  std::uint64_t offset_;
  std::optional<std::uint64_t> size_option_;
  bool probed_;
};

Task<std::unique_ptr<Node>> open_raw(const OpenContext& ctx, spec::Options& o, std::unique_ptr<Node> file,
                                     bool probed) {
  std::uint64_t offset = o.size("offset", 0);
  std::optional<std::uint64_t> size = o.size("size");
  if (probed && !ctx.read_only && !file->read_only())
    NETBLK_LOG(warn, "Image format was not specified for '{}' and probing guessed raw. Automatically detecting "
                     "the format is dangerous for raw images, write operations on block 0 will be restricted. "
                     "Specify the 'raw' format explicitly to remove the restrictions.",
               file->display_name());
  co_return std::make_unique<RawNode>(ctx, std::move(file), offset, size, probed);
}

Task<void> create_raw(const OpenContext& ctx, const CreateRequest& req) {
  auto& o = *req.options;
  std::string prealloc = o.str("preallocation", "off");
  o.finish();
  if (prealloc != "off" && prealloc != "falloc" && prealloc != "full")
    throw Error(EINVAL, "Parameter 'preallocation' must be off, falloc or full, not '" + prealloc + "'");
  if (!req.size) throw Error(EINVAL, "Image creation needs a size parameter");
  auto node = co_await create_protocol_file(ctx, req.filename, *req.size);
  if (prealloc != "off") {
    // Allocate for real: write zeroes without unmapping.
    co_await node->write_zeroes(0, *req.size, 0);
  }
  co_await node->close();
}

// As QEMU's raw_measure: every byte counts, allocated or not.
Task<MeasureResult> measure_raw(spec::Options& o, Node* source, std::uint64_t size) {
  o.str("preallocation");
  o.finish();
  const std::uint64_t bytes = source ? source->size() : (size + 511) / 512 * 512;
  co_return MeasureResult{bytes, bytes, std::nullopt};
}

// As QEMU's raw: the whole file is passed its users' permissions as they are; a window
// (an offset or a size) also keeps others from resizing the file.
Permissions raw_file_permissions(Permissions parent, bool, const Json& options) {
  auto offset = options.find("offset");
  const bool window = options.contains("size") || (offset != options.end() && spec::scalar_text(*offset) != "0");
  return window ? locking::window_child(parent) : parent;
}

const DriverRegistration kRaw{FormatDriver{
    .name = "raw",
    .probe = [](std::span<const std::byte>) { return 1; },
    .open = open_raw,
    .create = create_raw,
    .measure = measure_raw,
    .file_permissions = raw_file_permissions,
}};

}  // namespace
}  // namespace netblk
