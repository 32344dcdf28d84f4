// netblk convert: copy any drive to a new or existing image, as qemu-img convert does.
// -m workers copy chunks concurrently; without -W the writes land in order, unless the
// target's layout does not depend on their order. Zero areas
// (block status, or -S runs of zero bytes) are skipped on a zero-initialised target and
// written as zeroes elsewhere; -S 0 copies them as data. When the target is a file as is
// (raw, nothing in between), the source may put data straight into it
// (Node::read_to_file); zero runs found there afterwards are zeroed again to free them.
#include <cstring>
#include <iostream>

#include "cli/progress.hpp"
#include "cli/status_cache.hpp"
#include "cli/verbs.hpp"
#include "core/mapping.hpp"
#include "core/parse.hpp"
#include "netblk/buffer.hpp"

namespace netblk::cli {
namespace {

constexpr std::uint64_t kCopyChunk = 2u << 20;  // a multiple of every qcow2 cluster size

// Marks which `block`-byte blocks of [data, data + len) are all zero (the last may be
// short). Allocates nothing, so it may run under run_unless_sigbus().
void mark_zero_blocks(const std::byte* data, std::uint64_t len, std::uint64_t block, std::span<char> zero) noexcept {
  for (std::size_t i = 0; i < zero.size(); ++i) {
    const std::uint64_t at = i * block;
    zero[i] = is_zero({data + at, static_cast<std::size_t>(std::min(block, len - at))});
  }
}

// The runs of blocks marked alike, as byte ranges [first, end) of the `len` bytes.
struct BlockRun {
  std::uint64_t first, end;
  bool zero;
};
std::vector<BlockRun> block_runs(std::span<const char> zero, std::uint64_t block, std::uint64_t len) {
  std::vector<BlockRun> runs;
  for (std::size_t i = 0; i < zero.size();) {
    std::size_t end = i;
    while (end < zero.size() && zero[end] == zero[i]) ++end;
    runs.push_back(BlockRun{i * block, std::min<std::uint64_t>(end * block, len), zero[i] != 0});
    i = end;
  }
  return runs;
}

struct Copy {
  Node& src;
  Node& dst;
  std::uint64_t size;
  std::uint64_t sparse;  // -S in bytes; 0 = allocate everything
  bool zero_init;
  bool in_order;
  bool compress;
  Progress& progress;
  AsyncCondition turn_changed;
  StatusCache status{src};
  std::uint64_t next_chunk = 0;
  std::uint64_t next_write = 0;  // in-order mode: the chunk allowed to write now
  bool failed = false;           // a worker failed: the others stop instead of waiting

  Task<void> wait_turn(std::uint64_t index) {
    while (in_order && next_write != index) {
      if (failed) throw Error(ECANCELED, "copy cancelled");
      co_await turn_changed.wait();
    }
  }
  void fail() {
    failed = true;
    next_chunk = ~std::uint64_t{0} / kCopyChunk;
    turn_changed.notify_all();
  }
  void pass_turn() {
    ++next_write;
    turn_changed.notify_all();
  }

  // Zero areas where -S asks for sparseness (with -S 0 there are none: see worker()).
  Task<void> put_zeroes(std::uint64_t off, std::uint64_t len) {
    if (zero_init) co_return;
    co_await dst.write_zeroes(off, len, kZeroMayUnmap);
  }

  Task<void> put_data(std::uint64_t off, std::span<const std::byte> data) {
    const unsigned flags = compress ? kWriteCompressed : 0;
    if (sparse == 0) {
      co_await dst.write(off, data, flags);
      co_return;
    }
    // Runs of zero and non-zero blocks of `sparse` bytes.
    std::vector<char> zero((data.size() + sparse - 1) / sparse);
    mark_zero_blocks(data.data(), data.size(), sparse, zero);
    const std::vector<BlockRun> runs = block_runs(zero, sparse, data.size());
    for (const BlockRun& r : runs) {
      if (r.zero) co_await put_zeroes(off + r.first, r.end - r.first);
      else co_await dst.write(off + r.first, data.subspan(r.first, r.end - r.first), flags);
    }
  }

  // Lets the source write [off, off + len) straight into the target's file when the target
  // is that file as is (file_span() says writable: raw over a memory-backed file). On a
  // zero-initialised target the source may leave out the -S blocks that are all zero, as
  // put_data() would.
  Task<FileRead> read_into_target(std::uint64_t off, std::uint64_t len) {
    if (compress) co_return FileRead::unsupported;
    const auto span = dst.file_span(off, len);
    if (!span || !span->writable) co_return FileRead::unsupported;
    int failed = 0;
    try {
      co_return co_await src.read_to_file(off, len, span->fd, span->offset, zero_init ? sparse : 0);
    } catch (const FileWriteError& e) {
      failed = e.code();
    }
    throw Error(failed, dst.display_name() + ": write failed: " + std::strerror(failed));
  }

  // Data the source wrote into the target file, split into runs of `sparse` blocks as
  // put_data() does: zero runs are zeroed again with unmapping allowed, which frees them.
  // The blocks are looked at through the file's mapping (a target is offered as writable
  // only with one), on a worker thread: seeing pages that never passed through our memory
  // costs page-table work (0.1 s per GiB), which then overlaps the receiving.
  Task<void> sparsify_in_target(std::uint64_t off, std::uint64_t len) {
    if (sparse == 0) co_return;
    const auto span = dst.file_span(off, len);
    if (!span || !span->memory) co_return;
    struct Scan {
      const std::byte* data;
      std::uint64_t len, block;
      std::vector<char> zero;
    } scan{span->memory, len, sparse, std::vector<char>((len + sparse - 1) / sparse)};
    // A SIGBUS means the file was cut short meanwhile: the bytes then stay as they are.
    const bool scanned = co_await offload([&scan] {
      return run_unless_sigbus(
          [](void* arg) {
            auto* s = static_cast<Scan*>(arg);
            mark_zero_blocks(s->data, s->len, s->block, s->zero);
          },
          &scan);
    });
    if (!scanned) co_return;
    const std::vector<BlockRun> runs = block_runs(scan.zero, sparse, len);
    for (const BlockRun& r : runs)
      if (r.zero) co_await dst.write_zeroes(off + r.first, r.end - r.first, kZeroMayUnmap);
  }

  Task<void> worker() {
    Buffer buf(kCopyChunk);
    while (true) {
      std::uint64_t index = next_chunk++;
      std::uint64_t off = index * kCopyChunk;
      if (off >= size) break;
      std::uint64_t len = std::min<std::uint64_t>(kCopyChunk, size - off);
      // Read first (concurrently with other workers), write when it is this chunk's turn.
      struct Segment {
        std::uint64_t off, len;
        bool zero;
        bool in_target = false;  // the source wrote it into the target already
      };
      std::vector<Segment> segments;
      // -S 0 copies zero areas as data, so that the target is fully allocated (qemu-img
      // does not ask the source for its zero areas then either).
      if (sparse == 0) segments.push_back({off, len, false, false});
      for (std::uint64_t p = off; sparse != 0 && p < off + len;) {
        ChainStatus s = co_await status.at(p, off + len - p);
        bool zero = (s.status.flags & kStatusZero) != 0;
        if (!segments.empty() && segments.back().zero == zero) segments.back().len += s.status.length;
        else segments.push_back({p, s.status.length, zero, false});
        p += s.status.length;
      }
      for (auto& s : segments) {
        if (s.zero) continue;
        const FileRead put = co_await read_into_target(s.off, s.len);
        s.in_target = put != FileRead::unsupported;
        // Already in the target: its zero runs are freed now, out of turn (raw files only
        // take this path, and their allocation does not depend on the order of writes).
        if (put == FileRead::written) co_await sparsify_in_target(s.off, s.len);
        else if (put == FileRead::unsupported) co_await src.read(s.off, buf.span().subspan(s.off - off, s.len));
      }
      co_await wait_turn(index);
      try {
        for (const auto& s : segments) {
          if (s.zero) co_await put_zeroes(s.off, s.len);
          else if (!s.in_target) co_await put_data(s.off, std::span<const std::byte>(buf.data() + (s.off - off), s.len));
        }
      } catch (...) {
        pass_turn();
        throw;
      }
      pass_turn();
      progress.add(len);
    }
  }
};

// qemu-img's limits and messages for -S and -m.
constexpr std::uint64_t kMaxSparse = 16u << 20;
std::uint64_t sparse_option(const std::string& text) {
  std::uint64_t bytes;
  try {
    bytes = parse_size(text, "-S");
  } catch (const Error&) {
    throw Error(EINVAL, "Invalid buffer size for sparse output specified. You may use k, M, G, T, P or E suffixes "
                        "for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
  }
  if (bytes % 512 || bytes > kMaxSparse)
    throw Error(EINVAL, "Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to " +
                            std::to_string(kMaxSparse) +
                            ". Select 0 to disable sparse detection (fully allocates output).");
  return bytes;
}

const VerbRegistration kConvert{Verb{
    "convert", "Copy an image to a new or existing image (qemu-img convert)", [](CLI::App& app) {
      struct Args {
        DriveArgs src;
        // qemu-img's defaults: the target is written with cache=unsafe (no flush at the end).
        std::string out_format = "raw", target, sparse = "4k", cache = "unsafe", src_cache = "writeback";
        std::vector<std::string> options, objects;
        bool progress = false, no_create = false, out_of_order = false, compress = false, quiet = false,
             target_image_opts = false;
        std::string workers = "8";
      };
      auto a = std::make_shared<Args>();
      a->src.add_options(app);
      add_common_options(app, a->objects, &a->src.force_share);
      app.add_option("-O", a->out_format, "Output format (raw, qcow2)");
      app.add_option("-o", a->options, "Output format options, k=v,k=v; repeatable")->allow_extra_args(false);
      app.add_flag("-p", a->progress, "Show progress");
      app.add_flag("-q", a->quiet, "Quiet");
      app.add_flag("-n", a->no_create, "Do not create the target; write into the existing image");
      app.add_option("-m", a->workers, "Number of parallel copy coroutines (1-16)");
      app.add_flag("-W", a->out_of_order, "Allow out-of-order writes");
      app.add_option("-S", a->sparse, "Minimum run of zero bytes to leave unallocated (0: allocate all)");
      app.add_flag("-c", a->compress, "Compress the output (qcow2)");
      app.add_option("-t", a->cache, "Target cache mode: writeback, none, writethrough, directsync, unsafe (default)");
      app.add_option("-T", a->src_cache, "Source cache mode (default writeback)");
      app.add_flag("--target-image-opts", a->target_image_opts, "The target is a list of blockdev options (implies -n)");
      app.add_option("source", a->src.name, "Source image")->required();
      app.add_option("target", a->target, "Target image")->required();
      return [a]() {
        return run_verb([a]() -> Task<int> {
          define_objects(a->objects);
          const std::uint64_t sparse = sparse_option(a->sparse);
          const unsigned workers = parallel_requests_option(a->workers);
          DriveSpec src_spec = a->src.spec(true);
          // As qemu-img: nobody may write or resize the source while it is copied.
          src_spec.permissions = Permissions{kPermConsistentRead, kPermConsistentRead | kPermWriteUnchanged};
          default_cache_mode(src_spec, a->src_cache);
          auto src = co_await open_drive(src_spec);
          std::uint64_t size = src->size();
          DriveSpec dst_spec;
          if (a->target_image_opts) {
            if (!a->no_create) throw Error(EINVAL, "--target-image-opts requires -n");
            dst_spec = drive_from_image_opts(a->target);
          } else {
            if (!a->no_create) {
              std::string opts;
              for (const auto& o : a->options) opts += (opts.empty() ? "" : ",") + o;
              co_await create_image(a->out_format, a->target, opts, size);
            }
            dst_spec.filename = a->target;
            dst_spec.format = a->out_format;
          }
          default_cache_mode(dst_spec, a->cache);
          auto dst = co_await open_drive(dst_spec);
          if (dst->size() < size)
            throw Error(ENOSPC, a->target + ": target is smaller (" + std::to_string(dst->size()) +
                                    " bytes) than the source (" + std::to_string(size) + " bytes)");
          if (a->compress && !dst->caps().can_compress)
            throw Error(ENOTSUP, "Compression not supported for this file format");
          Progress progress(a->progress && !a->quiet, size);
          Executor ex = co_await asio::this_coro::executor;
          const bool in_order = !a->out_of_order && !dst->caps().any_write_order;
          Copy copy{*src, *dst, size, sparse, !a->no_create && dst->has_zero_init(), in_order, a->compress,
                    progress, AsyncCondition(ex)};
          co_await run_concurrently(
              workers, [&] { return copy.worker(); }, [&] { copy.fail(); });
          co_await dst->close();
          co_await src->close();
          progress.finish();
          co_return 0;
        });
      };
    }}};

}  // namespace
}  // namespace netblk::cli
