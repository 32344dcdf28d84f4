// netblk compare: exit 0 when the images read the same, 1 when they differ, 2 on error,
// with qemu-img compare's messages. Without -s, the tail of the larger image must read as
// zeroes.
#include <cinttypes>
#include <cstring>
#include <iostream>

#include "cli/progress.hpp"
#include "cli/status_cache.hpp"
#include "cli/verbs.hpp"
#include "netblk/buffer.hpp"

namespace netblk::cli {
namespace {

constexpr std::uint64_t kCompareChunk = 1u << 20;
constexpr unsigned kWorkers = 8;

// The first differing 512-byte sector's offset, as qemu-img reports it.
std::uint64_t first_difference(const std::byte* a, const std::byte* b, std::uint64_t n) {
  for (std::uint64_t i = 0; i < n; i += 512) {
    std::uint64_t m = std::min<std::uint64_t>(512, n - i);
    if (std::memcmp(a + i, b + i, m) != 0) return i;
  }
  return n;
}

struct Comparison {
  Node& a;
  Node& b;
  std::uint64_t common;
  Progress& progress;
  std::uint64_t next = 0;
  std::uint64_t mismatch = ~std::uint64_t{0};
  StatusCache status_a{a}, status_b{b};

  Task<bool> zero_in_both(std::uint64_t off, std::uint64_t len) {
    for (std::uint64_t p = off; p < off + len;) {
      ChainStatus sa = co_await status_a.at(p, off + len - p);
      if (!(sa.status.flags & kStatusZero)) co_return false;
      ChainStatus sb = co_await status_b.at(p, sa.status.length);
      if (!(sb.status.flags & kStatusZero)) co_return false;
      p += sb.status.length;
    }
    co_return true;
  }

  Task<void> worker() {
    Buffer ba(kCompareChunk), bb(kCompareChunk);
    while (true) {
      std::uint64_t off = next;
      if (off >= common || off >= mismatch) break;
      std::uint64_t len = std::min<std::uint64_t>(kCompareChunk, common - off);
      next += len;
      if (!co_await zero_in_both(off, len)) {
        co_await a.read(off, ba.span().subspan(0, len));
        co_await b.read(off, bb.span().subspan(0, len));
        std::uint64_t d = first_difference(ba.data(), bb.data(), len);
        if (d < len) mismatch = std::min(mismatch, off + d);
      }
      progress.add(len);
    }
  }
};

// The first offset in [from, to) of `n` that does not read as zero, or `to`.
Task<std::uint64_t> first_nonzero(Node& n, std::uint64_t from, std::uint64_t to) {
  Buffer buf(kCompareChunk);
  StatusCache status(n);
  for (std::uint64_t p = from; p < to;) {
    ChainStatus s = co_await status.at(p, to - p);
    std::uint64_t len = std::min<std::uint64_t>(s.status.length, kCompareChunk);
    if (!(s.status.flags & kStatusZero)) {
      co_await n.read(p, buf.span().subspan(0, len));
      for (std::uint64_t i = 0; i < len; i += 512) {
        std::uint64_t m = std::min<std::uint64_t>(512, len - i);
        if (!is_zero(std::span<const std::byte>(buf.data() + i, m))) co_return p + i;
      }
    }
    p += len;
  }
  co_return to;
}

const VerbRegistration kCompare{Verb{
    "compare", "Compare the contents of two images (qemu-img compare)", [](CLI::App& app) {
      struct Args {
        DriveArgs a, b;
        bool strict = false, progress = false, quiet = false;
        std::vector<std::string> objects;
      };
      auto x = std::make_shared<Args>();
      x->a.add_options(app, "-f");
      app.add_option("-F", x->b.format, "Format of the second image");
      add_common_options(app, x->objects, &x->a.force_share);
      app.add_flag("-s", x->strict, "Strict mode: images of different sizes differ");
      app.add_flag("-p", x->progress, "Show progress");
      app.add_flag("-q", x->quiet, "Quiet");
      app.add_option("image1", x->a.name, "First image")->required();
      app.add_option("image2", x->b.name, "Second image")->required();
      return [x]() {
        return run_verb(
            [x]() -> Task<int> {
              define_objects(x->objects);
              DriveArgs second = x->b;
              second.image_opts = x->a.image_opts;
              second.force_share = x->a.force_share;
              auto a = co_await open_drive(x->a.spec(true));
              auto b = co_await open_drive(second.spec(true));
              std::uint64_t common = std::min(a->size(), b->size());
              Progress progress(x->progress && !x->quiet, std::max(a->size(), b->size()));
              Comparison cmp{*a, *b, common, progress};
              co_await run_concurrently(
                  kWorkers, [&] { return cmp.worker(); }, [&] { cmp.next = ~std::uint64_t{0}; });
              int result = 0;
              if (cmp.mismatch != ~std::uint64_t{0}) {
                if (!x->quiet) std::printf("Content mismatch at offset %" PRIu64 "!\n", cmp.mismatch);
                result = 1;
              } else if (a->size() != b->size()) {
                if (x->strict) {
                  if (!x->quiet) std::printf("Strict mode: Image size mismatch!\n");
                  result = 1;
                } else {
                  if (!x->quiet) std::printf("Warning: Image size mismatch!\n");
                  Node& larger = a->size() > b->size() ? *a : *b;
                  std::uint64_t nz = co_await first_nonzero(larger, common, larger.size());
                  if (nz < larger.size()) {
                    if (!x->quiet) std::printf("Content mismatch at offset %" PRIu64 "!\n", nz);
                    result = 1;
                  }
                }
              }
              progress.finish();
              if (result == 0 && !x->quiet) std::printf("Images are identical.\n");
              co_await a->close();
              co_await b->close();
              co_return result;
            },
            2);
      };
    }}};

}  // namespace
}  // namespace netblk::cli
