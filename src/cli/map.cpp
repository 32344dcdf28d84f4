// netblk map: which ranges hold data, zeroes or come from a backing image (qemu-img map).
#include <cinttypes>
#include <cstdio>
#include <iostream>

#include "cli/verbs.hpp"

namespace netblk::cli {
namespace {

struct MapEntry {
  std::uint64_t start = 0, length = 0;
  int depth = 0;
  bool present = false, zero = false, data = false;
  std::uint64_t offset = BlockStatus::kNoOffset;
  const Node* file = nullptr;  // the node whose file child holds the data

  bool continues(const MapEntry& prev) const {
    if (prev.start + prev.length != start || prev.depth != depth || prev.present != present ||
        prev.zero != zero || prev.data != data || prev.file != file)
      return false;
    if ((prev.offset == BlockStatus::kNoOffset) != (offset == BlockStatus::kNoOffset)) return false;
    return offset == BlockStatus::kNoOffset || prev.offset + prev.length == offset;
  }
};

Task<MapEntry> status_at(Node& top, std::uint64_t offset, std::uint64_t length) {
  ChainStatus c = co_await chain_block_status(top, offset, length);
  MapEntry e;
  e.start = offset;
  e.length = c.status.length;
  e.depth = c.depth;
  e.present = c.present;
  e.zero = (c.status.flags & kStatusZero) != 0;
  e.data = (c.status.flags & kStatusData) != 0;
  e.offset = c.status.host_offset;
  e.file = c.layer;
  co_return e;
}

std::string file_name_of(const MapEntry& e) {
  const Node* f = e.file->file() ? e.file->file() : e.file;
  return canonical_name(*f);
}

void print_json(const MapEntry& e, bool first) {
  std::printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %d, \"present\": %s, \"zero\": %s, "
              "\"data\": %s",
              first ? "[" : ",\n", e.start, e.length, e.depth, e.present ? "true" : "false", e.zero ? "true" : "false",
              e.data ? "true" : "false");
  if (e.offset != BlockStatus::kNoOffset) std::printf(", \"offset\": %" PRIu64, e.offset);
  std::printf("}");
}

void print_human(const MapEntry& e) {
  if (!e.data || e.offset == BlockStatus::kNoOffset) return;
  std::printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e.start, e.length, e.offset, file_name_of(e).c_str());
}

const VerbRegistration kMap{Verb{
    "map", "Show how the image's ranges are allocated (qemu-img map)", [](CLI::App& app) {
      struct Args {
        DriveArgs drive;
        std::string output = "human";
        std::uint64_t start = 0, max_length = 0;
        std::vector<std::string> objects;
      };
      auto a = std::make_shared<Args>();
      a->drive.add_options(app);
      add_common_options(app, a->objects, &a->drive.force_share);
      app.add_option("--output", a->output, "Output format")->check(CLI::IsMember({"human", "json"}));
      app.add_option("-s,--start-offset", a->start, "First byte to map");
      app.add_option("-l,--max-length", a->max_length, "Bytes to map at most");
      app.add_option("filename", a->drive.name, "Image name")->required();
      return [a]() {
        return run_verb([a]() -> Task<int> {
          define_objects(a->objects);
          auto node = co_await open_drive(a->drive.spec(true));
          std::uint64_t end = node->size();
          if (a->max_length && a->start + a->max_length < end) end = a->start + a->max_length;
          bool json = a->output == "json";
          if (!json) std::printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
          std::optional<MapEntry> pending;
          bool first = true;
          auto emit = [&](const MapEntry& e) {
            if (json) print_json(e, first);
            else print_human(e);
            first = false;
          };
          for (std::uint64_t off = a->start; off < end;) {
            MapEntry e = co_await status_at(*node, off, std::min<std::uint64_t>(end - off, 1ull << 30));
            off += e.length;
            if (pending && e.continues(*pending)) {
              pending->length += e.length;
            } else {
              if (pending) emit(*pending);
              pending = e;
            }
          }
          if (pending) emit(*pending);
          if (json) std::printf(first ? "[]\n" : "]\n");
          co_await node->close();
          co_return 0;
        });
      };
    }}};

}  // namespace
}  // namespace netblk::cli
