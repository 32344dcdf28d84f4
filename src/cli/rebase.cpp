// netblk rebase: qemu-img rebase [-u] -b BACKING [-F FMT] [-f FMT] [-p] NAME. Safe mode
// first copies into the image what it does not define itself and the new backing file would
// read differently, 512-byte sector by sector (as qemu-img); -u only changes the name.
#include <cstring>
#include <iostream>

#include "cli/progress.hpp"
#include "cli/verbs.hpp"
#include "netblk/buffer.hpp"

namespace netblk::cli {
namespace {

constexpr std::uint64_t kRebaseChunk = 2u << 20;  // qemu-img's IO_BUF_SIZE
constexpr std::uint64_t kSector = 512;

// Reads [off, off + buf.size()) of a backing node, zeroes past its end or without one.
Task<void> read_below(Node* backing, std::uint64_t off, std::span<std::byte> buf) {
  std::memset(buf.data(), 0, buf.size());
  if (!backing || off >= backing->size()) co_return;
  const std::uint64_t n = std::min<std::uint64_t>(buf.size(), backing->size() - off);
  co_await backing->read(off, buf.first(n));
}

// Writes into `image` the sectors of [off, off + len) where `old_data` and `new_data` differ.
Task<void> write_differences(Node& image, std::uint64_t off, std::span<const std::byte> old_data,
                             std::span<const std::byte> new_data) {
  const std::uint64_t len = old_data.size();
  for (std::uint64_t p = 0; p < len;) {
    auto differs = [&](std::uint64_t at) {
      const std::uint64_t n = std::min(kSector, len - at);
      return std::memcmp(old_data.data() + at, new_data.data() + at, n) != 0;
    };
    if (!differs(p)) {
      p += std::min(kSector, len - p);
      continue;
    }
    std::uint64_t end = p;
    while (end < len && differs(end)) end += std::min(kSector, len - end);
    co_await image.write(off + p, old_data.subspan(p, end - p));
    p = end;
  }
}

const VerbRegistration kRebase{Verb{
    "rebase", "Change the backing file of an image (qemu-img rebase)", [](CLI::App& app) {
      struct Args {
        DriveArgs drive;
        std::string backing, backing_format, cache = "writeback", src_cache = "writeback";
        std::vector<std::string> objects;
        bool unsafe = false, progress = false, quiet = false;
      };
      auto a = std::make_shared<Args>();
      a->drive.add_options(app);
      add_common_options(app, a->objects, &a->drive.force_share);
      auto* backing_opt = app.add_option("-b,--backing", a->backing, "The new backing file (\"\": none)");
      app.add_option("-F,--backing-format", a->backing_format, "Its format");
      app.add_flag("-u", a->unsafe, "Unsafe: only change the name, copy nothing");
      app.add_flag("-p", a->progress, "Show progress");
      app.add_flag("-q", a->quiet, "Quiet");
      app.add_option("-t", a->cache, "Cache mode of the image (default writeback)");
      app.add_option("-T", a->src_cache, "Cache mode of the backing files (default writeback)");
      app.add_option("filename", a->drive.name, "The image")->required();
      return [a, backing_opt]() {
        return run_verb([a, backing_opt]() -> Task<int> {
          define_objects(a->objects);
          const bool has_backing = backing_opt->count() > 0;
          if (!has_backing && !a->unsafe) throw Error(EINVAL, "Must specify backing file (-b) or use unsafe mode (-u)");
          const std::string& name = a->backing;
          auto cannot_change = [&](const std::string& why) {
            return Error(EINVAL, "Could not change the backing file to '" + name + "': " + why);
          };
          if (!name.empty() && a->backing_format.empty()) throw cannot_change("backing format must be specified");
          DriveSpec spec = a->drive.spec(false);
          default_cache_mode(spec, a->cache);
          auto image = co_await open_drive(spec);
          std::unique_ptr<Node> new_backing;
          if (!a->unsafe) {
            if (!name.empty()) {
              DriveSpec b;
              b.filename = backing_name_from_here(*image, name);
              b.format = a->backing_format;
              b.read_only = true;
              apply_cache_mode(b.options, a->src_cache);
              std::optional<Error> failed;
              try {
                new_backing = co_await open_drive(b);
              } catch (const Error& e) {
                failed = Error(e.code(), "Could not open new backing file '" + name + "': " + e.what());
              }
              if (failed) throw *failed;
            }
            Node* old_backing = co_await image->open_backing();
            const std::uint64_t size = image->size();
            Progress progress(a->progress && !a->quiet, size);
            Buffer old_data(kRebaseChunk), new_data(kRebaseChunk);
            for (std::uint64_t off = 0; off < size; off += kRebaseChunk) {
              const std::uint64_t len = std::min(kRebaseChunk, size - off);
              for (std::uint64_t p = off; p < off + len;) {
                const BlockStatus s = co_await image->block_status(p, off + len - p);
                if (!(s.flags & kStatusAllocated)) {
                  auto o = old_data.span().first(s.length);
                  auto n = new_data.span().first(s.length);
                  co_await read_below(old_backing, p, o);
                  co_await read_below(new_backing.get(), p, n);
                  co_await write_differences(*image, p, o, n);
                }
                p += s.length;
              }
              progress.add(len);
            }
            progress.finish();
          }
          // (Thrown after the handler: GCC 12 coroutines and throwing from a catch block.)
          const std::string format = name.empty() ? std::string() : a->backing_format;
          std::optional<Error> failed;
          try {
            co_await image->set_backing_file(name, format);
          } catch (const Error& e) {
            failed = cannot_change(e.what());
          }
          if (failed) throw *failed;
          if (new_backing) co_await new_backing->close();
          co_await image->close();
          co_return 0;
        });
      };
    }}};

}  // namespace
}  // namespace netblk::cli
