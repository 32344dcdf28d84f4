// Opening a drive by any of QEMU's names, and naming it back.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "netblk/node.hpp"

namespace netblk {

// One drive, however it was named. Every form ends in the same option tree:
//  - filename: a path, a URL ("nbd://h/x", "http://h/disk"), a legacy name ("nbd:h:10809")
//    or "json:{...}"; may be empty when `options` name everything;
//  - options: a nested option tree (QEMU's blockdev keys: {"driver":"qcow2","file":{...}});
//  - format: qemu-img's -f; empty means options' "driver", or probing;
//  - read_only; copy_on_read (inserts QEMU's copy-on-read filter on top).
struct DriveSpec {
  std::string filename;
  Json options = Json::object();
  std::string format;
  bool read_only = false;
  bool copy_on_read = false;
  // Image locking (QEMU's permissions, taken as QEMU's file locks): what the user of the
  // drive needs and lets others do meanwhile. Unset: consistent reads, writes unless
  // read-only, everything shared (qemu-img's images).
  std::optional<Permissions> permissions;
  // QEMU's force-share=on (qemu-img -U): lets others write meanwhile; read-only drives only.
  bool force_share = false;
};

// Applies a QEMU cache mode (writeback, none, writethrough, directsync, unsafe) to an
// option tree as cache.direct / cache.no-flush. Throws Error for an unknown mode.
void apply_cache_mode(Json& options, std::string_view mode);

// Parses qemu-img's --image-opts argument ("driver=qcow2,file.filename=x").
DriveSpec drive_from_image_opts(std::string_view text);
// Parses a QEMU -drive argument: file, format, readonly, copy-on-read, media, cache, aio,
// discard, detect-zeroes, if/index/id/serial (ignored) and dotted driver options.
DriveSpec drive_from_drive_opts(std::string_view text);

// Opens the graph the spec names, on the calling coroutine's executor. Throws Error.
Task<std::unique_ptr<Node>> open_drive(DriveSpec spec);

// What an overlay stores as its backing file: a plain filename when that says everything,
// otherwise "json:{...}". Never contains a secret.
std::string canonical_name(const Node& node);

// Creates an image: `format` on a new protocol file `filename`, with qemu-img's -o options
// ("cluster_size=64k,backing_file=..."). Size may be absent when a backing file gives it.
Task<void> create_image(std::string format, std::string filename, std::string options_text,
                        std::optional<std::uint64_t> size);

// What `measure_image()` found (qemu-img measure's BlockMeasureInfo).
struct MeasureResult {
  std::uint64_t required = 0;         // bytes the new image needs for this data
  std::uint64_t fully_allocated = 0;  // bytes it needs with every cluster allocated
  std::optional<std::uint64_t> bitmaps;  // persistent bitmaps' bytes, when both formats have them
};
// qemu-img measure: the size of a new `format` image (with -o `options_text`) holding the
// data of `source`, or, when it is null, `size` bytes.
Task<MeasureResult> measure_image(std::string format, std::string options_text, Node* source, std::uint64_t size);

}  // namespace netblk
