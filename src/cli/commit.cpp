// netblk commit: qemu-img commit [-b BASE] [-d] [-f FMT] [-p] NAME. What the layers above
// BASE (by default the image's backing file) define is written into BASE, which grows to the
// image's size if smaller; then the image is emptied, unless -d (which -b implies).
#include <filesystem>
#include <iostream>

#include "block/driver.hpp"
#include "cli/progress.hpp"
#include "cli/verbs.hpp"
#include "netblk/buffer.hpp"

namespace netblk::cli {
namespace {

constexpr std::uint64_t kCommitChunk = 2u << 20;

// A name compared when looking for -b BASE in the chain: a canonical path for local files.
std::string layer_key(const std::string& name) {
  if (name.empty() || !filename_prefix(name).empty()) return name;
  std::error_code ec;
  auto p = std::filesystem::weakly_canonical(name, ec);
  return ec ? name : p.string();
}

// Whether `layer` is the image `name` names (as given, or relative to `top`'s directory).
bool is_layer(const Node& top, const Node& layer, const std::string& name) {
  if (canonical_name(layer) == name) return true;
  const Node* file = layer.file();
  if (!file || file->driver() != "file") return false;
  const std::string key = layer_key(file->plain_filename());
  return key == layer_key(name) || key == layer_key(backing_name_from_here(top, name));
}

// Copies what the layers of `top` (which end above the base) define at [off, off + len)
// into `base`.
Task<void> commit_range(Node& top, Node& base, std::uint64_t off, std::uint64_t len, Buffer& buf) {
  for (std::uint64_t p = off; p < off + len;) {
    const ChainStatus s = co_await chain_block_status(top, p, off + len - p);
    const std::uint64_t n = s.status.length;
    if (s.present) {
      if (s.status.flags & kStatusZero) {
        co_await base.write_zeroes(p, n, 0);
      } else {
        auto data = buf.span().first(n);
        co_await top.read(p, data);
        co_await base.write(p, data);
      }
    }
    p += n;
  }
}

const VerbRegistration kCommit{Verb{
    "commit", "Write an image's changes into its backing file (qemu-img commit)", [](CLI::App& app) {
      struct Args {
        DriveArgs drive;
        std::string base, cache = "writeback", rate;
        std::vector<std::string> objects;
        bool keep = false, progress = false, quiet = false;
      };
      auto a = std::make_shared<Args>();
      a->drive.add_options(app);
      add_common_options(app, a->objects);
      app.add_option("-b", a->base, "The backing file to commit into (default: the image's own); implies -d");
      app.add_flag("-d", a->keep, "Do not empty the image afterwards");
      app.add_flag("-p", a->progress, "Show progress");
      app.add_flag("-q", a->quiet, "Quiet");
      app.add_option("-t", a->cache, "Cache mode (default writeback)");
      app.add_option("-r", a->rate, "Rate limit (accepted, not applied)");
      app.add_option("filename", a->drive.name, "The image")->required();
      return [a]() {
        return run_verb([a]() -> Task<int> {
          define_objects(a->objects);
          const bool keep = a->keep || !a->base.empty();
          DriveSpec spec = a->drive.spec(keep);
          default_cache_mode(spec, a->cache);
          // First the whole chain, read-only, to find the base.
          DriveSpec probe_spec = spec;
          probe_spec.read_only = true;
          auto chain = co_await open_drive(probe_spec);
          Node* base_layer = co_await chain->open_backing();
          if (!base_layer) throw Error(EINVAL, "Image does not have a backing file");
          if (!a->base.empty()) {
            while (base_layer && !is_layer(*chain, *base_layer, a->base)) {
              base_layer = co_await base_layer->open_backing();
            }
            if (!base_layer)
              throw Error(ENOENT, "Did not find '" + a->base + "' in the backing chain of '" + a->drive.name + "'");
          }
          // The base, writable, as what it is; the image again with the layers above the base
          // only (its locks would keep the base from being written, as QEMU's own would
          // without the commit job's graph changes).
          DriveSpec base_spec;
          base_spec.filename = canonical_name(*base_layer);
          if (!base_spec.filename.starts_with("json:")) base_spec.format = std::string(base_layer->driver());
          apply_cache_mode(base_spec.options, a->cache);
          // (The layers down to the base are open: the search above opened them.)
          std::vector<Json> layers;
          for (Node* n = chain->backing(); n != base_layer; n = n->backing()) layers.push_back(n->options());
          Json above = nullptr;  // the backing of the lowest layer above the base: none
          for (auto it = layers.rbegin(); it != layers.rend(); ++it) {
            Json layer = *it;
            layer["backing"] = above;
            above = std::move(layer);
          }
          spec.options["backing"] = above;
          co_await chain->close();
          chain.reset();
          auto base = co_await open_drive(base_spec);
          auto top = co_await open_drive(spec);
          const std::uint64_t size = top->size();
          if (base->size() < size) co_await base->truncate(size);
          Progress progress(a->progress && !a->quiet, size);
          Buffer buf(kCommitChunk);
          for (std::uint64_t off = 0; off < size; off += kCommitChunk) {
            const std::uint64_t len = std::min(kCommitChunk, size - off);
            co_await commit_range(*top, *base, off, len, buf);
            progress.add(len);
          }
          co_await base->flush();
          progress.finish();
          if (!keep) co_await top->make_empty();
          co_await base->close();
          co_await top->close();
          if (!a->quiet) std::cout << "Image committed." << std::endl;
          co_return 0;
        });
      };
    }}};

}  // namespace
}  // namespace netblk::cli
