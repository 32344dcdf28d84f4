// The NBD codec: byte layouts checked against the protocol document, round trips, and
// rejection of malformed input.
#include <gtest/gtest.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "nbd/protocol.hpp"
#include "netblk/error.hpp"

using namespace netblk;
using namespace netblk::nbd;

namespace {

std::vector<std::byte> bytes(std::initializer_list<int> values) {
  std::vector<std::byte> out;
  for (int v : values) out.push_back(std::byte(v));
  return out;
}

template <class F>
int error_code(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.code();
  }
  return 0;
}

}  // namespace

TEST(NbdCodec, GreetingLayout) {
  std::array<std::byte, kServerGreetingSize> g;
  encode_server_greeting(g, kFlagFixedNewstyle | kFlagNoZeroes);
  EXPECT_EQ(std::memcmp(g.data(), "NBDMAGICIHAVEOPT", 16), 0);
  EXPECT_EQ(g[16], std::byte(0));
  EXPECT_EQ(g[17], std::byte(3));
  auto decoded = decode_server_greeting(g);
  EXPECT_FALSE(decoded.oldstyle);
  EXPECT_EQ(decoded.handshake_flags, 3);

  std::vector<std::byte> old(kOldstyleGreetingSize);
  store_be64(old.data(), kInitMagic);
  store_be64(old.data() + 8, kOldstyleMagic);
  store_be64(old.data() + 16, 1 << 20);
  store_be32(old.data() + 24, kFlagHasFlags | kFlagReadOnly);
  auto o = decode_server_greeting(old);
  EXPECT_TRUE(o.oldstyle);
  EXPECT_EQ(o.export_size, 1u << 20);
  EXPECT_EQ(o.transmission_flags, kFlagHasFlags | kFlagReadOnly);

  g[3] = std::byte('X');
  EXPECT_EQ(error_code([&] { decode_server_greeting(g); }), EPROTO);
}

TEST(NbdCodec, OptionHeaderAndInfoRequest) {
  InfoRequest req{"disk", {kInfoName, kInfoBlockSize}};
  auto payload = encode_info_request(req);
  // u32 name length, name, u16 count, u16 types.
  EXPECT_EQ(payload, bytes({0, 0, 0, 4, 'd', 'i', 's', 'k', 0, 2, 0, 1, 0, 3}));
  auto opt = encode_option(kOptGo, payload);
  ASSERT_EQ(opt.size(), kOptionHeaderSize + payload.size());
  auto header = decode_option_header(std::span(opt).first(kOptionHeaderSize));
  EXPECT_EQ(header.option, kOptGo);
  EXPECT_EQ(header.length, payload.size());
  auto back = decode_info_request(std::span(opt).subspan(kOptionHeaderSize));
  EXPECT_EQ(back.export_name, "disk");
  EXPECT_EQ(back.info_types, (std::vector<std::uint16_t>{kInfoName, kInfoBlockSize}));

  // Count disagreeing with the length, name longer than the payload, trailing bytes.
  EXPECT_EQ(error_code([] { decode_info_request(bytes({0, 0, 0, 0, 0, 3, 0, 1})); }), EPROTO);
  EXPECT_EQ(error_code([] { decode_info_request(bytes({0, 0, 0, 9, 'a'})); }), EPROTO);
  EXPECT_EQ(error_code([] { decode_info_request(bytes({0, 0, 0, 0, 0, 0, 7})); }), EPROTO);
  // A huge name length is rejected before anything is allocated.
  EXPECT_EQ(error_code([] { decode_info_request(bytes({0xff, 0xff, 0xff, 0xff, 0, 0})); }), EPROTO);
  // Embedded NUL in a name.
  EXPECT_EQ(error_code([] { decode_info_request(bytes({0, 0, 0, 2, 'a', 0, 0, 0})); }), EPROTO);

  auto bad = opt;
  bad[0] = std::byte(0);
  EXPECT_EQ(error_code([&] { decode_option_header(std::span(bad).first(kOptionHeaderSize)); }), EPROTO);
}

TEST(NbdCodec, MetaContextRequest) {
  MetaContextRequest req{"", {"base:allocation", "qemu:dirty-bitmap:x"}};
  auto payload = encode_meta_context_request(req);
  auto back = decode_meta_context_request(payload);
  EXPECT_EQ(back.export_name, "");
  EXPECT_EQ(back.queries, req.queries);
  // A query count that could never fit in the payload.
  EXPECT_EQ(error_code([] { decode_meta_context_request(bytes({0, 0, 0, 0, 0x10, 0, 0, 0})); }), EPROTO);
}

TEST(NbdCodec, OptionReplies) {
  auto rep = encode_option_reply(kOptList, kRepServer, encode_rep_server({"disk", "a disk"}));
  auto h = decode_option_reply_header(std::span(rep).first(kOptionReplyHeaderSize));
  EXPECT_EQ(h.option, kOptList);
  EXPECT_EQ(h.type, kRepServer);
  auto entry = decode_rep_server(std::span(rep).subspan(kOptionReplyHeaderSize));
  EXPECT_EQ(entry.name, "disk");
  EXPECT_EQ(entry.description, "a disk");
  // Magic is 0x3e889045565a9.
  EXPECT_EQ(rep[0], std::byte(0));
  EXPECT_EQ(rep[1], std::byte(0x03));
  EXPECT_EQ(rep[2], std::byte(0xe8));

  auto info = decode_rep_info(encode_info_export(12345, kFlagHasFlags | kFlagSendFlush));
  EXPECT_EQ(info.type, kInfoExport);
  EXPECT_EQ(info.export_size, 12345u);
  EXPECT_EQ(info.transmission_flags, kFlagHasFlags | kFlagSendFlush);
  auto bs = decode_rep_info(encode_info_block_size({512, 4096, 1u << 25}));
  EXPECT_EQ(bs.block_sizes.minimum, 512u);
  EXPECT_EQ(bs.block_sizes.preferred, 4096u);
  EXPECT_EQ(bs.block_sizes.maximum, 1u << 25);
  EXPECT_EQ(decode_rep_info(encode_info_name("n")).text, "n");
  EXPECT_EQ(decode_rep_info(encode_info_description("d")).text, "d");
  EXPECT_EQ(decode_rep_info(bytes({0, 99, 1, 2, 3})).type, 99);  // unknown: ignored
  EXPECT_EQ(error_code([] { decode_rep_info(bytes({0, 0, 1})); }), EPROTO);

  auto mc = decode_rep_meta_context(encode_rep_meta_context({7, "base:allocation"}));
  EXPECT_EQ(mc.id, 7u);
  EXPECT_EQ(mc.name, "base:allocation");

  std::array<std::byte, 134> en;
  EXPECT_EQ(encode_export_name_reply(en, 1 << 30, kFlagHasFlags, false), 134u);
  EXPECT_EQ(encode_export_name_reply(en, 1 << 30, kFlagHasFlags, true), 10u);
  auto enr = decode_export_name_reply(std::span(en).first(10));
  EXPECT_EQ(enr.size, 1u << 30);
  EXPECT_EQ(enr.transmission_flags, kFlagHasFlags);
}

TEST(NbdCodec, Requests) {
  Request r{kCmdFlagFua, kCmdWrite, 0x1122334455667788ull, 4096, 512};
  std::array<std::byte, kExtendedRequestSize> buf;
  ASSERT_EQ(encode_request(buf, r, false), kRequestSize);
  EXPECT_EQ(std::vector<std::byte>(buf.begin(), buf.begin() + 8), bytes({0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1}));
  auto back = decode_request(std::span(buf).first(kRequestSize), false);
  EXPECT_EQ(back.flags, r.flags);
  EXPECT_EQ(back.type, r.type);
  EXPECT_EQ(back.cookie, r.cookie);
  EXPECT_EQ(back.offset, r.offset);
  EXPECT_EQ(back.length, r.length);

  r.length = 1ull << 33;
  EXPECT_EQ(error_code([&] { encode_request(buf, r, false); }), EINVAL);
  ASSERT_EQ(encode_request(buf, r, true), kExtendedRequestSize);
  EXPECT_EQ(decode_request(buf, true).length, 1ull << 33);
  // The other header style's magic is a protocol error either way.
  EXPECT_EQ(error_code([&] { decode_request(std::span(buf).first(kRequestSize), false); }), EPROTO);
  encode_request(buf, Request{0, kCmdRead, 1, 0, 512}, false);
  EXPECT_EQ(error_code([&] { decode_request(buf, true); }), EPROTO);
}

TEST(NbdCodec, Replies) {
  std::array<std::byte, kMaxReplyHeaderSize> buf;
  ASSERT_EQ(encode_simple_reply(buf, 42, kEio), kSimpleReplySize);
  EXPECT_EQ(reply_header_size(load_be32(buf.data())), kSimpleReplySize);
  auto s = decode_reply_header(std::span(buf).first(kSimpleReplySize));
  EXPECT_EQ(s.kind, ReplyKind::simple);
  EXPECT_EQ(s.cookie, 42u);
  EXPECT_EQ(s.error, kEio);

  ASSERT_EQ(encode_chunk_header(buf, false, kReplyFlagDone, kReplyTypeOffsetData, 7, 0, 4104), kStructuredReplySize);
  auto st = decode_reply_header(std::span(buf).first(kStructuredReplySize));
  EXPECT_EQ(st.kind, ReplyKind::structured);
  EXPECT_EQ(st.flags, kReplyFlagDone);
  EXPECT_EQ(st.type, kReplyTypeOffsetData);
  EXPECT_EQ(st.length, 4104u);

  ASSERT_EQ(encode_chunk_header(buf, true, 0, kReplyTypeBlockStatusExt, 9, 1 << 20, 1ull << 32), kExtendedReplySize);
  auto ex = decode_reply_header(buf);
  EXPECT_EQ(ex.kind, ReplyKind::extended);
  EXPECT_EQ(ex.offset, 1u << 20);
  EXPECT_EQ(ex.length, 1ull << 32);
  EXPECT_EQ(error_code([&] { encode_chunk_header(buf, false, 0, 0, 0, 0, 1ull << 32); }), EINVAL);

  store_be32(buf.data(), 0xdeadbeef);
  EXPECT_EQ(reply_header_size(0xdeadbeef), 0u);
  EXPECT_EQ(error_code([&] { decode_reply_header(buf); }), EPROTO);
}

TEST(NbdCodec, ChunkPayloads) {
  std::array<std::byte, 16> b;
  encode_offset_hole(b, 8192, 4096);
  auto hole = decode_offset_hole(std::span(b).first(kOffsetHoleSize));
  EXPECT_EQ(hole.offset, 8192u);
  EXPECT_EQ(hole.length, 4096u);
  EXPECT_EQ(error_code([] { decode_offset_hole(bytes({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})); }), EPROTO);

  auto data_payload = bytes({0, 0, 0, 0, 0, 0, 0x10, 0, 'x', 'y'});
  auto d = decode_offset_data(data_payload);
  EXPECT_EQ(d.offset, 4096u);
  EXPECT_EQ(d.data.size(), 2u);
  EXPECT_EQ(error_code([] { decode_offset_data(bytes({0, 0, 0, 0, 0, 0, 0, 0})); }), EPROTO);

  BlockStatusChunk chunk{1, {{65536, kStateHole | kStateZero}, {4096, 0}}};
  std::vector<std::byte> compact, ext;
  encode_block_status(compact, chunk, false);
  encode_block_status(ext, chunk, true);
  EXPECT_EQ(compact.size(), 4u + 2 * 8);
  EXPECT_EQ(ext.size(), 8u + 2 * 16);
  for (auto& [payload, type] : {std::pair{compact, kReplyTypeBlockStatus}, std::pair{ext, kReplyTypeBlockStatusExt}}) {
    auto back = decode_block_status(payload, type);
    EXPECT_EQ(back.context_id, 1u);
    ASSERT_EQ(back.extents.size(), 2u);
    EXPECT_EQ(back.extents[0].length, 65536u);
    EXPECT_EQ(back.extents[0].flags, kStateHole | kStateZero);
    EXPECT_EQ(back.extents[1].length, 4096u);
  }
  EXPECT_EQ(error_code([&] { decode_block_status(std::span(compact).first(10), kReplyTypeBlockStatus); }), EPROTO);
  BlockStatusChunk huge{1, {{1ull << 33, 0}}};
  std::vector<std::byte> tmp;
  EXPECT_EQ(error_code([&] { encode_block_status(tmp, huge, false); }), EINVAL);

  std::vector<std::byte> err;
  encode_error_chunk(err, ErrorChunk{kEperm, "read-only", std::nullopt});
  auto e = decode_error_chunk(err, kReplyTypeError);
  EXPECT_EQ(e.error, kEperm);
  EXPECT_EQ(e.message, "read-only");
  EXPECT_FALSE(e.offset);
  err.clear();
  encode_error_chunk(err, ErrorChunk{kEio, "bad sector", 512});
  auto eo = decode_error_chunk(err, kReplyTypeErrorOffset);
  EXPECT_EQ(eo.offset.value_or(0), 512u);
  EXPECT_EQ(error_code([] { decode_error_chunk(bytes({0, 0, 0, 5, 0, 9, 'a'}), kReplyTypeError); }), EPROTO);
}

TEST(NbdCodec, ErrnoMapping) {
  EXPECT_EQ(errno_to_nbd(EPERM), kEperm);
  EXPECT_EQ(errno_to_nbd(EROFS), kEperm);
  EXPECT_EQ(errno_to_nbd(ENOSPC), kEnospc);
  EXPECT_EQ(errno_to_nbd(ENOTSUP), kEnotsup);
  EXPECT_EQ(errno_to_nbd(EOVERFLOW), kEoverflow);
  EXPECT_EQ(errno_to_nbd(ECONNRESET), kEio);
  for (int e : {EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN})
    EXPECT_EQ(nbd_to_errno(errno_to_nbd(e)), e);
  EXPECT_EQ(nbd_to_errno(12345), EINVAL);
  EXPECT_EQ(option_name(kOptGo), "NBD_OPT_GO");
  EXPECT_EQ(rep_name(kRepErrUnknown), "NBD_REP_ERR_UNKNOWN");
  EXPECT_EQ(command_name(kCmdBlockStatus), "NBD_CMD_BLOCK_STATUS");
  EXPECT_EQ(command_name(99), "command 99");
}
