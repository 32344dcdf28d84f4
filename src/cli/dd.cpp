// netblk dd: qemu-img dd [-f FMT] [-O FMT] bs=N count=N skip=N if=IN of=OUT. As qemu-img
// (7.2), count limits the input's end, not the amount copied: with skip=S count=C the copy
// is blocks S..C-1, and the new image is that long.
#include <climits>
#include <iostream>

#include "cli/verbs.hpp"
#include "core/parse.hpp"
#include "netblk/buffer.hpp"

namespace netblk::cli {
namespace {

struct Operands {
  std::string input, output;
  std::uint64_t block = 512;
  std::optional<std::uint64_t> count, skip;
};

Operands parse_operands(const std::vector<std::string>& words) {
  Operands o;
  auto number = [](const std::string& value, const std::string& what) {
    try {
      return parse_size(value, what);
    } catch (const Error&) {
      throw Error(EINVAL, "Invalid " + what +
                              " specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, "
                              "gigabytes, terabytes, petabytes and exabytes.");
    }
  };
  for (const auto& w : words) {
    const auto eq = w.find('=');
    const std::string key = w.substr(0, eq), value = eq == std::string::npos ? std::string() : w.substr(eq + 1);
    if (eq == std::string::npos) throw Error(EINVAL, "unrecognized operand " + w);
    if (key == "if") o.input = value;
    else if (key == "of") o.output = value;
    else if (key == "count") o.count = number(value, "count");
    else if (key == "skip") o.skip = number(value, "skip");
    else if (key == "bs") {
      std::uint64_t bs = 0;
      try {
        bs = parse_size(value, "bs");
      } catch (const Error&) {
      }
      if (bs == 0 || bs > INT_MAX) throw Error(EINVAL, "Invalid bs specified. Must be between 1 and 2147483647.");
      o.block = bs;
    } else {
      throw Error(EINVAL, "unrecognized operand " + key);
    }
  }
  if (o.input.empty() || o.output.empty()) throw Error(EINVAL, "Must specify both input and output files");
  return o;
}

const VerbRegistration kDd{Verb{
    "dd", "Copy blocks of an image into a new image (qemu-img dd)", [](CLI::App& app) {
      struct Args {
        DriveArgs src;
        std::string out_format = "raw";
        std::vector<std::string> operands, objects;
      };
      auto a = std::make_shared<Args>();
      a->src.add_options(app);
      add_common_options(app, a->objects, &a->src.force_share);
      app.add_option("-O", a->out_format, "Output format (raw, qcow2)");
      app.add_option("operands", a->operands, "if=INPUT of=OUTPUT [bs=BYTES] [count=BLOCKS] [skip=BLOCKS]");
      return [a]() {
        return run_verb([a]() -> Task<int> {
          define_objects(a->objects);
          const Operands o = parse_operands(a->operands);
          a->src.name = o.input;
          auto src = co_await open_drive(a->src.spec(true));
          std::uint64_t end = src->size();
          if (o.count && *o.count <= std::numeric_limits<std::int64_t>::max() / o.block && end > *o.count * o.block)
            end = *o.count * o.block;
          const std::uint64_t bs = o.block;
          std::uint64_t pos = 0;
          bool skip_failed = false;
          if (o.skip) {
            if (*o.skip > std::numeric_limits<std::int64_t>::max() / bs || end < *o.skip * bs) skip_failed = true;
            else pos = *o.skip * bs;
          }
          co_await create_image(a->out_format, o.output, "", end - (skip_failed ? end : pos));
          DriveSpec out_spec;
          out_spec.filename = o.output;
          out_spec.format = a->out_format;
          auto dst = co_await open_drive(out_spec);
          // As qemu-img: reported, and nothing is copied, but not a failure.
          if (skip_failed) print_error(o.input + ": cannot skip to specified offset");
          else {
            Buffer buf(static_cast<std::size_t>(std::min(bs, std::max<std::uint64_t>(end - pos, 1))));
            for (std::uint64_t out = 0; pos < end;) {
              const std::uint64_t n = std::min<std::uint64_t>(bs, end - pos);
              auto data = buf.span().first(n);
              co_await src->read(pos, data);
              co_await dst->write(out, data);
              pos += n;
              out += n;
            }
          }
          co_await dst->close();
          co_await src->close();
          co_return 0;
        });
      };
    }}};

}  // namespace
}  // namespace netblk::cli
