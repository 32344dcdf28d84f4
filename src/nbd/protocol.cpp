// The NBD wire codec. See protocol.hpp for the conventions.
#include "nbd/protocol.hpp"

#include <cerrno>
#include <algorithm>
#include <cstring>

#include "core/text.hpp"
#include "netblk/error.hpp"

namespace netblk::nbd {
namespace {

[[noreturn]] void malformed(std::string_view what, std::string_view why) {
  throw Error(EPROTO, "NBD: malformed " + std::string(what) + ": " + std::string(why));
}

void need_out(std::span<std::byte> out, std::size_t n) {
  if (out.size() < n) throw Error(EINVAL, "NBD: output buffer too small");
}

void need_in(std::span<const std::byte> in, std::size_t n, std::string_view what) {
  if (in.size() != n)
    malformed(what, "expected " + std::to_string(n) + " bytes, got " + std::to_string(in.size()));
}

void check_string(std::string_view s, std::string_view what) {
  if (s.size() > kMaxStringLength) throw Error(EINVAL, "NBD: " + std::string(what) + " is longer than 4096 bytes");
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Reader and Writer (big-endian fields: core/endian.hpp)

void Reader::need(std::size_t n) const {
  if (remaining() < n) malformed(what_, "truncated");
}
std::uint8_t Reader::u8() {
  need(1);
  return std::to_integer<std::uint8_t>(data_[pos_++]);
}
std::uint16_t Reader::u16() {
  need(2);
  auto v = load_be16(data_.data() + pos_);
  pos_ += 2;
  return v;
}
std::uint32_t Reader::u32() {
  need(4);
  auto v = load_be32(data_.data() + pos_);
  pos_ += 4;
  return v;
}
std::uint64_t Reader::u64() {
  need(8);
  auto v = load_be64(data_.data() + pos_);
  pos_ += 8;
  return v;
}
std::span<const std::byte> Reader::bytes(std::size_t n) {
  need(n);
  auto s = data_.subspan(pos_, n);
  pos_ += n;
  return s;
}
std::string Reader::string(std::size_t n) {
  if (n > kMaxStringLength) malformed(what_, "string longer than 4096 bytes");
  auto b = bytes(n);
  std::string s(reinterpret_cast<const char*>(b.data()), b.size());
  if (s.find('\0') != std::string::npos) malformed(what_, "string contains NUL");
  return s;
}
void Reader::finish() const {
  if (remaining() != 0) malformed(what_, std::to_string(remaining()) + " unexpected trailing bytes");
}

namespace {
// resize + memcpy rather than vector::insert: GCC 12 reports a false stringop-overflow
// for inserts of a few bytes.
void append(std::vector<std::byte>& out, const void* p, std::size_t n) {
  if (n == 0) return;
  std::size_t old = out.size();
  out.resize(old + n);
  std::memcpy(out.data() + old, p, n);
}
}  // namespace

Writer& Writer::u16(std::uint16_t v) {
  std::byte b[2];
  store_be16(b, v);
  append(out_, b, 2);
  return *this;
}
Writer& Writer::u32(std::uint32_t v) {
  std::byte b[4];
  store_be32(b, v);
  append(out_, b, 4);
  return *this;
}
Writer& Writer::u64(std::uint64_t v) {
  std::byte b[8];
  store_be64(b, v);
  append(out_, b, 8);
  return *this;
}
Writer& Writer::bytes(std::span<const std::byte> b) {
  append(out_, b.data(), b.size());
  return *this;
}
Writer& Writer::string(std::string_view s) {
  append(out_, s.data(), s.size());
  return *this;
}

// ---------------------------------------------------------------------------------------
// Greeting

std::size_t encode_server_greeting(std::span<std::byte> out, std::uint16_t handshake_flags) {
  need_out(out, kServerGreetingSize);
  store_be64(out.data(), kInitMagic);
  store_be64(out.data() + 8, kOptMagic);
  store_be16(out.data() + 16, handshake_flags);
  return kServerGreetingSize;
}

bool greeting_is_oldstyle(std::span<const std::byte> first16) {
  if (first16.size() < 16) malformed("server greeting", "truncated");
  if (load_be64(first16.data()) != kInitMagic) malformed("server greeting", "not an NBD server (bad magic)");
  std::uint64_t second = load_be64(first16.data() + 8);
  if (second == kOldstyleMagic) return true;
  if (second == kOptMagic) return false;
  malformed("server greeting", "unknown magic " + hex(second));
}

ServerGreeting decode_server_greeting(std::span<const std::byte> in) {
  ServerGreeting g;
  g.oldstyle = greeting_is_oldstyle(in);
  if (g.oldstyle) {
    need_in(in, kOldstyleGreetingSize, "oldstyle greeting");
    g.export_size = load_be64(in.data() + 16);
    std::uint32_t flags = load_be32(in.data() + 24);
    g.transmission_flags = static_cast<std::uint16_t>(flags & 0xffff);
  } else {
    need_in(in, kServerGreetingSize, "server greeting");
    g.handshake_flags = load_be16(in.data() + 16);
  }
  return g;
}

std::size_t encode_client_flags(std::span<std::byte> out, std::uint32_t flags) {
  need_out(out, kClientFlagsSize);
  store_be32(out.data(), flags);
  return kClientFlagsSize;
}
std::uint32_t decode_client_flags(std::span<const std::byte> in) {
  need_in(in, kClientFlagsSize, "client flags");
  return load_be32(in.data());
}

// ---------------------------------------------------------------------------------------
// Options

std::size_t encode_option_header(std::span<std::byte> out, std::uint32_t option, std::uint32_t length) {
  need_out(out, kOptionHeaderSize);
  store_be64(out.data(), kOptMagic);
  store_be32(out.data() + 8, option);
  store_be32(out.data() + 12, length);
  return kOptionHeaderSize;
}

OptionHeader decode_option_header(std::span<const std::byte> in) {
  need_in(in, kOptionHeaderSize, "option header");
  if (load_be64(in.data()) != kOptMagic) malformed("option header", "bad magic " + hex(load_be64(in.data())));
  return {load_be32(in.data() + 8), load_be32(in.data() + 12)};
}

std::vector<std::byte> encode_option(std::uint32_t option, std::span<const std::byte> payload) {
  if (payload.size() > UINT32_MAX) throw Error(EINVAL, "NBD: option payload too long");
  std::vector<std::byte> out(kOptionHeaderSize);
  encode_option_header(out, option, static_cast<std::uint32_t>(payload.size()));
  append(out, payload.data(), payload.size());
  return out;
}

std::vector<std::byte> encode_info_request(const InfoRequest& request) {
  check_string(request.export_name, "export name");
  if (request.info_types.size() > UINT16_MAX) throw Error(EINVAL, "NBD: too many info requests");
  std::vector<std::byte> out;
  Writer w(out);
  w.u32(static_cast<std::uint32_t>(request.export_name.size())).string(request.export_name);
  w.u16(static_cast<std::uint16_t>(request.info_types.size()));
  for (auto t : request.info_types) w.u16(t);
  return out;
}

InfoRequest decode_info_request(std::span<const std::byte> payload) {
  Reader r(payload, "NBD_OPT_INFO/GO request");
  InfoRequest req;
  req.export_name = r.string(r.u32());
  std::uint16_t n = r.u16();
  if (r.remaining() != std::size_t{n} * 2) malformed("NBD_OPT_INFO/GO request", "info count does not match length");
  req.info_types.reserve(n);
  for (std::uint16_t i = 0; i < n; ++i) req.info_types.push_back(r.u16());
  r.finish();
  return req;
}

std::vector<std::byte> encode_meta_context_request(const MetaContextRequest& request) {
  check_string(request.export_name, "export name");
  std::vector<std::byte> out;
  Writer w(out);
  w.u32(static_cast<std::uint32_t>(request.export_name.size())).string(request.export_name);
  w.u32(static_cast<std::uint32_t>(request.queries.size()));
  for (const auto& q : request.queries) {
    check_string(q, "meta context query");
    w.u32(static_cast<std::uint32_t>(q.size())).string(q);
  }
  return out;
}

MetaContextRequest decode_meta_context_request(std::span<const std::byte> payload) {
  Reader r(payload, "meta context request");
  MetaContextRequest req;
  req.export_name = r.string(r.u32());
  std::uint32_t n = r.u32();
  // Each query takes at least 4 bytes: bound the count by what is there before reserving.
  if (std::uint64_t{n} * 4 > r.remaining()) malformed("meta context request", "query count exceeds length");
  req.queries.reserve(n);
  for (std::uint32_t i = 0; i < n; ++i) req.queries.push_back(r.string(r.u32()));
  r.finish();
  return req;
}

std::string decode_export_name(std::span<const std::byte> payload) {
  Reader r(payload, "NBD_OPT_EXPORT_NAME");
  return r.string(payload.size());
}

// ---------------------------------------------------------------------------------------
// Option replies

std::size_t encode_option_reply_header(std::span<std::byte> out, std::uint32_t option, std::uint32_t type,
                                       std::uint32_t length) {
  need_out(out, kOptionReplyHeaderSize);
  store_be64(out.data(), kRepMagic);
  store_be32(out.data() + 8, option);
  store_be32(out.data() + 12, type);
  store_be32(out.data() + 16, length);
  return kOptionReplyHeaderSize;
}

OptionReplyHeader decode_option_reply_header(std::span<const std::byte> in) {
  need_in(in, kOptionReplyHeaderSize, "option reply header");
  if (load_be64(in.data()) != kRepMagic) malformed("option reply header", "bad magic " + hex(load_be64(in.data())));
  return {load_be32(in.data() + 8), load_be32(in.data() + 12), load_be32(in.data() + 16)};
}

std::vector<std::byte> encode_option_reply(std::uint32_t option, std::uint32_t type,
                                           std::span<const std::byte> payload) {
  if (payload.size() > UINT32_MAX) throw Error(EINVAL, "NBD: option reply too long");
  std::vector<std::byte> out(kOptionReplyHeaderSize);
  encode_option_reply_header(out, option, type, static_cast<std::uint32_t>(payload.size()));
  append(out, payload.data(), payload.size());
  return out;
}

std::vector<std::byte> encode_option_error(std::uint32_t option, std::uint32_t type, std::string_view message) {
  if (message.size() > kMaxStringLength) message = message.substr(0, kMaxStringLength);
  auto* p = reinterpret_cast<const std::byte*>(message.data());
  return encode_option_reply(option, type, std::span<const std::byte>(p, message.size()));
}

std::vector<std::byte> encode_rep_server(const ServerEntry& entry) {
  check_string(entry.name, "export name");
  check_string(entry.description, "export description");
  std::vector<std::byte> out;
  Writer(out).u32(static_cast<std::uint32_t>(entry.name.size())).string(entry.name).string(entry.description);
  return out;
}

ServerEntry decode_rep_server(std::span<const std::byte> payload) {
  Reader r(payload, "NBD_REP_SERVER");
  ServerEntry e;
  e.name = r.string(r.u32());
  e.description = r.string(r.remaining());
  return e;
}

std::vector<std::byte> encode_info_export(std::uint64_t size, std::uint16_t transmission_flags) {
  std::vector<std::byte> out;
  Writer(out).u16(kInfoExport).u64(size).u16(transmission_flags);
  return out;
}
std::vector<std::byte> encode_info_name(std::string_view name) {
  check_string(name, "export name");
  std::vector<std::byte> out;
  Writer(out).u16(kInfoName).string(name);
  return out;
}
std::vector<std::byte> encode_info_description(std::string_view description) {
  check_string(description, "export description");
  std::vector<std::byte> out;
  Writer(out).u16(kInfoDescription).string(description);
  return out;
}
std::vector<std::byte> encode_info_block_size(const BlockSizes& sizes) {
  std::vector<std::byte> out;
  Writer(out).u16(kInfoBlockSize).u32(sizes.minimum).u32(sizes.preferred).u32(sizes.maximum);
  return out;
}

InfoReply decode_rep_info(std::span<const std::byte> payload) {
  Reader r(payload, "NBD_REP_INFO");
  InfoReply info;
  info.type = r.u16();
  switch (info.type) {
    case kInfoExport:
      info.export_size = r.u64();
      info.transmission_flags = r.u16();
      r.finish();
      break;
    case kInfoName:
    case kInfoDescription:
      info.text = r.string(r.remaining());
      break;
    case kInfoBlockSize:
      info.block_sizes.minimum = r.u32();
      info.block_sizes.preferred = r.u32();
      info.block_sizes.maximum = r.u32();
      r.finish();
      break;
    default:
      break;  // unknown: the client ignores it
  }
  return info;
}

std::vector<std::byte> encode_rep_meta_context(const MetaContext& context) {
  check_string(context.name, "meta context name");
  std::vector<std::byte> out;
  Writer(out).u32(context.id).string(context.name);
  return out;
}

MetaContext decode_rep_meta_context(std::span<const std::byte> payload) {
  Reader r(payload, "NBD_REP_META_CONTEXT");
  MetaContext c;
  c.id = r.u32();
  c.name = r.string(r.remaining());
  return c;
}

std::size_t encode_export_name_reply(std::span<std::byte> out, std::uint64_t size, std::uint16_t flags,
                                     bool no_zeroes) {
  std::size_t n = kExportNameReplySize + (no_zeroes ? 0 : kExportNameReplyZeroes);
  need_out(out, n);
  store_be64(out.data(), size);
  store_be16(out.data() + 8, flags);
  if (!no_zeroes) std::memset(out.data() + kExportNameReplySize, 0, kExportNameReplyZeroes);
  return n;
}

ExportNameReply decode_export_name_reply(std::span<const std::byte> in) {
  need_in(in, kExportNameReplySize, "NBD_OPT_EXPORT_NAME reply");
  return {load_be64(in.data()), load_be16(in.data() + 8)};
}

// ---------------------------------------------------------------------------------------
// Requests

std::size_t encode_request(std::span<std::byte> out, const Request& request, bool extended) {
  std::size_t n = request_size(extended);
  need_out(out, n);
  if (!extended && request.length > UINT32_MAX)
    throw Error(EINVAL, "NBD: request length needs extended headers");
  store_be32(out.data(), extended ? kExtendedRequestMagic : kRequestMagic);
  store_be16(out.data() + 4, request.flags);
  store_be16(out.data() + 6, request.type);
  store_be64(out.data() + 8, request.cookie);
  store_be64(out.data() + 16, request.offset);
  if (extended)
    store_be64(out.data() + 24, request.length);
  else
    store_be32(out.data() + 24, static_cast<std::uint32_t>(request.length));
  return n;
}

Request decode_request(std::span<const std::byte> in, bool extended) {
  need_in(in, request_size(extended), "request header");
  std::uint32_t magic = load_be32(in.data());
  if (magic != (extended ? kExtendedRequestMagic : kRequestMagic)) {
    if (magic == kRequestMagic || magic == kExtendedRequestMagic)
      malformed("request header", extended ? "compact header after extended headers were negotiated"
                                            : "extended header without negotiating extended headers");
    malformed("request header", "bad magic " + hex(magic));
  }
  Request r;
  r.flags = load_be16(in.data() + 4);
  r.type = load_be16(in.data() + 6);
  r.cookie = load_be64(in.data() + 8);
  r.offset = load_be64(in.data() + 16);
  r.length = extended ? load_be64(in.data() + 24) : load_be32(in.data() + 24);
  return r;
}

// ---------------------------------------------------------------------------------------
// Replies

std::size_t reply_header_size(std::uint32_t magic) noexcept {
  switch (magic) {
    case kSimpleReplyMagic:
      return kSimpleReplySize;
    case kStructuredReplyMagic:
      return kStructuredReplySize;
    case kExtendedReplyMagic:
      return kExtendedReplySize;
    default:
      return 0;
  }
}

ReplyHeader decode_reply_header(std::span<const std::byte> in) {
  if (in.size() < 4) malformed("reply header", "truncated");
  std::uint32_t magic = load_be32(in.data());
  std::size_t n = reply_header_size(magic);
  if (n == 0) malformed("reply header", "bad magic " + hex(magic));
  need_in(in, n, "reply header");
  ReplyHeader h;
  switch (magic) {
    case kSimpleReplyMagic:
      h.kind = ReplyKind::simple;
      h.error = load_be32(in.data() + 4);
      h.cookie = load_be64(in.data() + 8);
      break;
    case kStructuredReplyMagic:
      h.kind = ReplyKind::structured;
      h.flags = load_be16(in.data() + 4);
      h.type = load_be16(in.data() + 6);
      h.cookie = load_be64(in.data() + 8);
      h.length = load_be32(in.data() + 16);
      break;
    default:
      h.kind = ReplyKind::extended;
      h.flags = load_be16(in.data() + 4);
      h.type = load_be16(in.data() + 6);
      h.cookie = load_be64(in.data() + 8);
      h.offset = load_be64(in.data() + 16);
      h.length = load_be64(in.data() + 24);
      break;
  }
  return h;
}

std::size_t encode_simple_reply(std::span<std::byte> out, std::uint64_t cookie, std::uint32_t nbd_error) {
  need_out(out, kSimpleReplySize);
  store_be32(out.data(), kSimpleReplyMagic);
  store_be32(out.data() + 4, nbd_error);
  store_be64(out.data() + 8, cookie);
  return kSimpleReplySize;
}

std::size_t encode_chunk_header(std::span<std::byte> out, bool extended, std::uint16_t flags, std::uint16_t type,
                                std::uint64_t cookie, std::uint64_t offset, std::uint64_t payload_length) {
  if (extended) {
    need_out(out, kExtendedReplySize);
    store_be32(out.data(), kExtendedReplyMagic);
    store_be16(out.data() + 4, flags);
    store_be16(out.data() + 6, type);
    store_be64(out.data() + 8, cookie);
    store_be64(out.data() + 16, offset);
    store_be64(out.data() + 24, payload_length);
    return kExtendedReplySize;
  }
  need_out(out, kStructuredReplySize);
  if (payload_length > UINT32_MAX) throw Error(EINVAL, "NBD: chunk payload needs extended headers");
  store_be32(out.data(), kStructuredReplyMagic);
  store_be16(out.data() + 4, flags);
  store_be16(out.data() + 6, type);
  store_be64(out.data() + 8, cookie);
  store_be32(out.data() + 16, static_cast<std::uint32_t>(payload_length));
  return kStructuredReplySize;
}

std::size_t encode_offset_data_prefix(std::span<std::byte> out, std::uint64_t offset) {
  need_out(out, kOffsetDataPrefixSize);
  store_be64(out.data(), offset);
  return kOffsetDataPrefixSize;
}

std::size_t encode_offset_hole(std::span<std::byte> out, std::uint64_t offset, std::uint32_t length) {
  need_out(out, kOffsetHoleSize);
  store_be64(out.data(), offset);
  store_be32(out.data() + 8, length);
  return kOffsetHoleSize;
}

OffsetData decode_offset_data(std::span<const std::byte> payload) {
  if (payload.size() <= kOffsetDataPrefixSize) malformed("NBD_REPLY_TYPE_OFFSET_DATA", "no data");
  return {load_be64(payload.data()), payload.subspan(kOffsetDataPrefixSize)};
}

OffsetHole decode_offset_hole(std::span<const std::byte> payload) {
  need_in(payload, kOffsetHoleSize, "NBD_REPLY_TYPE_OFFSET_HOLE");
  OffsetHole h{load_be64(payload.data()), load_be32(payload.data() + 8)};
  if (h.length == 0) malformed("NBD_REPLY_TYPE_OFFSET_HOLE", "zero length");
  return h;
}

void encode_block_status(std::vector<std::byte>& out, const BlockStatusChunk& chunk, bool extended) {
  Writer w(out);
  w.u32(chunk.context_id);
  if (extended) {
    if (chunk.extents.size() > UINT32_MAX) throw Error(EINVAL, "NBD: too many extents");
    w.u32(static_cast<std::uint32_t>(chunk.extents.size()));
    for (const auto& e : chunk.extents) w.u64(e.length).u64(e.flags);
  } else {
    for (const auto& e : chunk.extents) {
      if (e.length > UINT32_MAX || e.flags > UINT32_MAX)
        throw Error(EINVAL, "NBD: extent does not fit a compact block status descriptor");
      w.u32(static_cast<std::uint32_t>(e.length)).u32(static_cast<std::uint32_t>(e.flags));
    }
  }
}

BlockStatusChunk decode_block_status(std::span<const std::byte> payload, std::uint16_t type) {
  const char* what = type == kReplyTypeBlockStatusExt ? "NBD_REPLY_TYPE_BLOCK_STATUS_EXT" : "NBD_REPLY_TYPE_BLOCK_STATUS";
  Reader r(payload, what);
  BlockStatusChunk c;
  c.context_id = r.u32();
  if (type == kReplyTypeBlockStatusExt) {
    std::uint32_t count = r.u32();
    if (r.remaining() != std::uint64_t{count} * 16) malformed(what, "descriptor count does not match length");
    if (count == 0) malformed(what, "no descriptors");
    c.extents.reserve(count);
    for (std::uint32_t i = 0; i < count; ++i) {
      std::uint64_t length = r.u64();
      std::uint64_t flags = r.u64();
      c.extents.push_back({length, flags});
    }
  } else if (type == kReplyTypeBlockStatus) {
    if (r.remaining() == 0 || r.remaining() % 8 != 0) malformed(what, "length is not a whole number of descriptors");
    c.extents.reserve(r.remaining() / 8);
    while (r.remaining()) {
      std::uint32_t length = r.u32();
      std::uint32_t flags = r.u32();
      c.extents.push_back({length, flags});
    }
  } else {
    malformed(what, "not a block status chunk");
  }
  for (const auto& e : c.extents)
    if (e.length == 0) malformed(what, "zero-length extent");
  return c;
}

void encode_error_chunk(std::vector<std::byte>& out, const ErrorChunk& chunk) {
  std::string_view msg = chunk.message;
  if (msg.size() > kMaxStringLength) msg = msg.substr(0, kMaxStringLength);
  Writer w(out);
  w.u32(chunk.error).u16(static_cast<std::uint16_t>(msg.size())).string(msg);
  if (chunk.offset) w.u64(*chunk.offset);
}

ErrorChunk decode_error_chunk(std::span<const std::byte> payload, std::uint16_t type) {
  Reader r(payload, "NBD_REPLY_TYPE_ERROR");
  ErrorChunk c;
  c.error = r.u32();
  std::uint16_t n = r.u16();
  // Peers may send messages longer than our own bound; keep what fits and stay in sync.
  auto bytes = r.bytes(n);
  c.message.assign(reinterpret_cast<const char*>(bytes.data()), std::min<std::size_t>(bytes.size(), kMaxStringLength));
  if (type == kReplyTypeErrorOffset) c.offset = r.u64();
  r.finish();
  if (c.error == 0) malformed("NBD_REPLY_TYPE_ERROR", "error value is zero");
  return c;
}

// ---------------------------------------------------------------------------------------
// Errors and names

std::uint32_t errno_to_nbd(int err) noexcept {
  switch (err) {
    case 0:
      return 0;
    case EPERM:
    case EROFS:
    case EACCES:
      return kEperm;
    case EIO:
      return kEio;
    case ENOMEM:
      return kEnomem;
    case EINVAL:
      return kEinval;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return kEnospc;
    case EOVERFLOW:
      return kEoverflow;
    case ENOTSUP:
      return kEnotsup;
    case ESHUTDOWN:
      return kEshutdown;
    default:
      return kEio;
  }
}

int nbd_to_errno(std::uint32_t nbd_error) noexcept {
  switch (nbd_error) {
    case 0:
      return 0;
    case kEperm:
      return EPERM;
    case kEio:
      return EIO;
    case kEnomem:
      return ENOMEM;
    case kEinval:
      return EINVAL;
    case kEnospc:
      return ENOSPC;
    case kEoverflow:
      return EOVERFLOW;
    case kEnotsup:
      return ENOTSUP;
    case kEshutdown:
      return ESHUTDOWN;
    default:
      return EINVAL;
  }
}

std::string option_name(std::uint32_t option) {
  switch (option) {
    case kOptExportName: return "NBD_OPT_EXPORT_NAME";
    case kOptAbort: return "NBD_OPT_ABORT";
    case kOptList: return "NBD_OPT_LIST";
    case kOptPeekExport: return "NBD_OPT_PEEK_EXPORT";
    case kOptStartTls: return "NBD_OPT_STARTTLS";
    case kOptInfo: return "NBD_OPT_INFO";
    case kOptGo: return "NBD_OPT_GO";
    case kOptStructuredReply: return "NBD_OPT_STRUCTURED_REPLY";
    case kOptListMetaContext: return "NBD_OPT_LIST_META_CONTEXT";
    case kOptSetMetaContext: return "NBD_OPT_SET_META_CONTEXT";
    case kOptExtendedHeaders: return "NBD_OPT_EXTENDED_HEADERS";
    default: return "option " + std::to_string(option);
  }
}

std::string rep_name(std::uint32_t rep) {
  switch (rep) {
    case kRepAck: return "NBD_REP_ACK";
    case kRepServer: return "NBD_REP_SERVER";
    case kRepInfo: return "NBD_REP_INFO";
    case kRepMetaContext: return "NBD_REP_META_CONTEXT";
    case kRepErrUnsup: return "NBD_REP_ERR_UNSUP";
    case kRepErrPolicy: return "NBD_REP_ERR_POLICY";
    case kRepErrInvalid: return "NBD_REP_ERR_INVALID";
    case kRepErrPlatform: return "NBD_REP_ERR_PLATFORM";
    case kRepErrTlsReqd: return "NBD_REP_ERR_TLS_REQD";
    case kRepErrUnknown: return "NBD_REP_ERR_UNKNOWN";
    case kRepErrShutdown: return "NBD_REP_ERR_SHUTDOWN";
    case kRepErrBlockSizeReqd: return "NBD_REP_ERR_BLOCK_SIZE_REQD";
    case kRepErrTooBig: return "NBD_REP_ERR_TOO_BIG";
    case kRepErrExtHeaderReqd: return "NBD_REP_ERR_EXT_HEADER_REQD";
    default: return "reply " + hex(rep);
  }
}

std::string command_name(std::uint16_t command) {
  switch (command) {
    case kCmdRead: return "NBD_CMD_READ";
    case kCmdWrite: return "NBD_CMD_WRITE";
    case kCmdDisc: return "NBD_CMD_DISC";
    case kCmdFlush: return "NBD_CMD_FLUSH";
    case kCmdTrim: return "NBD_CMD_TRIM";
    case kCmdCache: return "NBD_CMD_CACHE";
    case kCmdWriteZeroes: return "NBD_CMD_WRITE_ZEROES";
    case kCmdBlockStatus: return "NBD_CMD_BLOCK_STATUS";
    case kCmdResize: return "NBD_CMD_RESIZE";
    default: return "command " + std::to_string(command);
  }
}

std::string reply_type_name(std::uint16_t type) {
  switch (type) {
    case kReplyTypeNone: return "NBD_REPLY_TYPE_NONE";
    case kReplyTypeOffsetData: return "NBD_REPLY_TYPE_OFFSET_DATA";
    case kReplyTypeOffsetHole: return "NBD_REPLY_TYPE_OFFSET_HOLE";
    case kReplyTypeBlockStatus: return "NBD_REPLY_TYPE_BLOCK_STATUS";
    case kReplyTypeBlockStatusExt: return "NBD_REPLY_TYPE_BLOCK_STATUS_EXT";
    case kReplyTypeError: return "NBD_REPLY_TYPE_ERROR";
    case kReplyTypeErrorOffset: return "NBD_REPLY_TYPE_ERROR_OFFSET";
    default: return "chunk type " + std::to_string(type);
  }
}

std::string info_name(std::uint16_t info) {
  switch (info) {
    case kInfoExport: return "NBD_INFO_EXPORT";
    case kInfoName: return "NBD_INFO_NAME";
    case kInfoDescription: return "NBD_INFO_DESCRIPTION";
    case kInfoBlockSize: return "NBD_INFO_BLOCK_SIZE";
    default: return "info " + std::to_string(info);
  }
}

}  // namespace netblk::nbd
