#include "formats/qcow2/compress.hpp"

#include <zlib.h>
#include <zstd.h>

#include "formats/qcow2/header.hpp"

namespace netblk::qcow2 {
namespace {

bool inflate_raw(std::span<const std::byte> in, std::span<std::byte> out) {
  z_stream s{};
  if (inflateInit2(&s, -12) != Z_OK) return false;
  s.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
  s.avail_in = static_cast<uInt>(in.size());
  s.next_out = reinterpret_cast<Bytef*>(out.data());
  s.avail_out = static_cast<uInt>(out.size());
  int ret = inflate(&s, Z_FINISH);
  bool ok = (ret == Z_STREAM_END || (ret == Z_BUF_ERROR && s.avail_out == 0)) && s.avail_out == 0;
  inflateEnd(&s);
  return ok;
}

bool zstd_decompress(std::span<const std::byte> in, std::span<std::byte> out) {
  ZSTD_DCtx* ctx = ZSTD_createDCtx();
  if (!ctx) return false;
  ZSTD_inBuffer input{in.data(), in.size(), 0};
  ZSTD_outBuffer output{out.data(), out.size(), 0};
  bool ok = true;
  // Several frames may follow one another; stop once the cluster is full.
  while (output.pos < output.size) {
    std::size_t before_in = input.pos, before_out = output.pos;
    std::size_t ret = ZSTD_decompressStream(ctx, &output, &input);
    if (ZSTD_isError(ret)) {
      ok = false;
      break;
    }
    if (input.pos == before_in && output.pos == before_out) {
      ok = false;  // no progress: truncated input
      break;
    }
  }
  ZSTD_freeDCtx(ctx);
  return ok && output.pos == output.size;
}

}  // namespace

bool decompress(int type, std::span<const std::byte> in, std::span<std::byte> out) {
  if (type == kCompressionZstd) return zstd_decompress(in, out);
  return inflate_raw(in, out);
}

std::optional<std::size_t> compress(int type, std::span<const std::byte> in, std::span<std::byte> out) {
  if (type == kCompressionZstd) {
    std::size_t n = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), ZSTD_CLEVEL_DEFAULT);
    if (ZSTD_isError(n)) return std::nullopt;
    return n;
  }
  z_stream s{};
  if (deflateInit2(&s, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK) return std::nullopt;
  s.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
  s.avail_in = static_cast<uInt>(in.size());
  s.next_out = reinterpret_cast<Bytef*>(out.data());
  s.avail_out = static_cast<uInt>(out.size());
  int ret = deflate(&s, Z_FINISH);
  std::optional<std::size_t> result;
  if (ret == Z_STREAM_END) result = out.size() - s.avail_out;
  deflateEnd(&s);
  return result;
}

}  // namespace netblk::qcow2
