// The graph opener shared by open_drive() and formats that open children (qcow2 backing).
#pragma once
#include "block/driver.hpp"

namespace netblk {

// Opens the node described by `options` and/or `filename` (plain, URL or json:).
// With `protocol_only`, a filename without a driver opens its protocol without probing a
// format (QEMU's "file" child).
Task<std::unique_ptr<Node>> open_node(OpenContext ctx, Json options, std::string filename,
                                      bool protocol_only = false);

// Creates (truncates) the protocol file `filename` with `size` bytes and opens it writable
// as a protocol node, for a format's create().
Task<std::unique_ptr<Node>> create_protocol_file(const OpenContext& ctx, const std::string& filename,
                                                 std::uint64_t size);

// `path` resolved against `base_dir` when it is a relative plain file name.
std::string resolve_relative(const std::string& base_dir, const std::string& path);

}  // namespace netblk
