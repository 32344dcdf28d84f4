// The NBD wire protocol (NetworkBlockDevice/nbd doc/proto.md), shared by the client driver
// (src/protocols/nbd) and the export server (src/exports/nbd): constants, and pure
// encode/decode functions over byte spans. No sockets here, so both sides and the fuzzers
// use the same code.
//
// Conventions:
//  - Every integer on the wire is big-endian.
//  - encode_* functions that write a fixed-size header take an output span at least that
//    large and return the number of bytes written; those whose size varies append to a
//    std::vector<std::byte> (or return one).
//  - decode_* functions take exactly the bytes of one message (a header, or an option /
//    chunk payload whose length the header gave) and throw Error(EPROTO, "NBD: ...") when
//    the bytes are malformed (bad magic, truncated, trailing bytes, a length that does not
//    add up). Callers prefix the drive name with with_context().
//  - Strings (export names, descriptions, messages) are bounded by kMaxStringLength.
#pragma once
#include "core/endian.hpp"
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace netblk::nbd {

// ---------------------------------------------------------------------------------------
// Constants

inline constexpr std::uint16_t kDefaultPort = 10809;

// Handshake magics.
inline constexpr std::uint64_t kInitMagic = 0x4e42444d41474943ull;      // "NBDMAGIC"
inline constexpr std::uint64_t kOptMagic = 0x49484156454f5054ull;       // "IHAVEOPT" (newstyle)
inline constexpr std::uint64_t kOldstyleMagic = 0x0000420281861253ull;  // oldstyle greeting
inline constexpr std::uint64_t kRepMagic = 0x0003e889045565a9ull;       // option replies

// Transmission magics.
inline constexpr std::uint32_t kRequestMagic = 0x25609513u;
inline constexpr std::uint32_t kExtendedRequestMagic = 0x21e41c71u;
inline constexpr std::uint32_t kSimpleReplyMagic = 0x67446698u;
inline constexpr std::uint32_t kStructuredReplyMagic = 0x668e33efu;
inline constexpr std::uint32_t kExtendedReplyMagic = 0x6e8a278cu;

// Handshake flags (server, 16 bits).
inline constexpr std::uint16_t kFlagFixedNewstyle = 1u << 0;
inline constexpr std::uint16_t kFlagNoZeroes = 1u << 1;
// Client flags (32 bits).
inline constexpr std::uint32_t kClientFlagFixedNewstyle = 1u << 0;
inline constexpr std::uint32_t kClientFlagNoZeroes = 1u << 1;

// Transmission flags (per export, 16 bits).
inline constexpr std::uint16_t kFlagHasFlags = 1u << 0;
inline constexpr std::uint16_t kFlagReadOnly = 1u << 1;
inline constexpr std::uint16_t kFlagSendFlush = 1u << 2;
inline constexpr std::uint16_t kFlagSendFua = 1u << 3;
inline constexpr std::uint16_t kFlagRotational = 1u << 4;
inline constexpr std::uint16_t kFlagSendTrim = 1u << 5;
inline constexpr std::uint16_t kFlagSendWriteZeroes = 1u << 6;
inline constexpr std::uint16_t kFlagSendDf = 1u << 7;
inline constexpr std::uint16_t kFlagCanMultiConn = 1u << 8;
inline constexpr std::uint16_t kFlagSendResize = 1u << 9;
inline constexpr std::uint16_t kFlagSendCache = 1u << 10;
inline constexpr std::uint16_t kFlagSendFastZero = 1u << 11;
inline constexpr std::uint16_t kFlagBlockStatusPayload = 1u << 12;

// Options (NBD_OPT_*).
inline constexpr std::uint32_t kOptExportName = 1;
inline constexpr std::uint32_t kOptAbort = 2;
inline constexpr std::uint32_t kOptList = 3;
inline constexpr std::uint32_t kOptPeekExport = 4;
inline constexpr std::uint32_t kOptStartTls = 5;
inline constexpr std::uint32_t kOptInfo = 6;
inline constexpr std::uint32_t kOptGo = 7;
inline constexpr std::uint32_t kOptStructuredReply = 8;
inline constexpr std::uint32_t kOptListMetaContext = 9;
inline constexpr std::uint32_t kOptSetMetaContext = 10;
inline constexpr std::uint32_t kOptExtendedHeaders = 11;

// Option reply types (NBD_REP_*). Errors have bit 31 set.
inline constexpr std::uint32_t kRepAck = 1;
inline constexpr std::uint32_t kRepServer = 2;
inline constexpr std::uint32_t kRepInfo = 3;
inline constexpr std::uint32_t kRepMetaContext = 4;
inline constexpr std::uint32_t kRepFlagError = 1u << 31;
inline constexpr std::uint32_t kRepErrUnsup = kRepFlagError | 1;
inline constexpr std::uint32_t kRepErrPolicy = kRepFlagError | 2;
inline constexpr std::uint32_t kRepErrInvalid = kRepFlagError | 3;
inline constexpr std::uint32_t kRepErrPlatform = kRepFlagError | 4;
inline constexpr std::uint32_t kRepErrTlsReqd = kRepFlagError | 5;
inline constexpr std::uint32_t kRepErrUnknown = kRepFlagError | 6;
inline constexpr std::uint32_t kRepErrShutdown = kRepFlagError | 7;
inline constexpr std::uint32_t kRepErrBlockSizeReqd = kRepFlagError | 8;
inline constexpr std::uint32_t kRepErrTooBig = kRepFlagError | 9;
inline constexpr std::uint32_t kRepErrExtHeaderReqd = kRepFlagError | 10;
inline constexpr bool is_rep_error(std::uint32_t rep) { return (rep & kRepFlagError) != 0; }

// Info types in NBD_OPT_INFO/GO requests and NBD_REP_INFO replies.
inline constexpr std::uint16_t kInfoExport = 0;
inline constexpr std::uint16_t kInfoName = 1;
inline constexpr std::uint16_t kInfoDescription = 2;
inline constexpr std::uint16_t kInfoBlockSize = 3;

// Commands (NBD_CMD_*).
inline constexpr std::uint16_t kCmdRead = 0;
inline constexpr std::uint16_t kCmdWrite = 1;
inline constexpr std::uint16_t kCmdDisc = 2;
inline constexpr std::uint16_t kCmdFlush = 3;
inline constexpr std::uint16_t kCmdTrim = 4;
inline constexpr std::uint16_t kCmdCache = 5;
inline constexpr std::uint16_t kCmdWriteZeroes = 6;
inline constexpr std::uint16_t kCmdBlockStatus = 7;
inline constexpr std::uint16_t kCmdResize = 8;

// Command flags (NBD_CMD_FLAG_*).
inline constexpr std::uint16_t kCmdFlagFua = 1u << 0;
inline constexpr std::uint16_t kCmdFlagNoHole = 1u << 1;
inline constexpr std::uint16_t kCmdFlagDf = 1u << 2;
inline constexpr std::uint16_t kCmdFlagReqOne = 1u << 3;
inline constexpr std::uint16_t kCmdFlagFastZero = 1u << 4;
inline constexpr std::uint16_t kCmdFlagPayloadLen = 1u << 5;

// Structured reply flags and chunk types (NBD_REPLY_*).
inline constexpr std::uint16_t kReplyFlagDone = 1u << 0;
inline constexpr std::uint16_t kReplyTypeNone = 0;
inline constexpr std::uint16_t kReplyTypeOffsetData = 1;
inline constexpr std::uint16_t kReplyTypeOffsetHole = 2;
inline constexpr std::uint16_t kReplyTypeBlockStatus = 5;
inline constexpr std::uint16_t kReplyTypeBlockStatusExt = 6;
inline constexpr std::uint16_t kReplyTypeErrorBit = 1u << 15;
inline constexpr std::uint16_t kReplyTypeError = kReplyTypeErrorBit | 1;
inline constexpr std::uint16_t kReplyTypeErrorOffset = kReplyTypeErrorBit | 2;
inline constexpr bool is_error_chunk(std::uint16_t type) { return (type & kReplyTypeErrorBit) != 0; }

// NBD error values (the wire's errno subset).
inline constexpr std::uint32_t kEperm = 1;
inline constexpr std::uint32_t kEio = 5;
inline constexpr std::uint32_t kEnomem = 12;
inline constexpr std::uint32_t kEinval = 22;
inline constexpr std::uint32_t kEnospc = 28;
inline constexpr std::uint32_t kEoverflow = 75;
inline constexpr std::uint32_t kEnotsup = 95;
inline constexpr std::uint32_t kEshutdown = 108;

// The base:allocation meta context and its status flags.
inline constexpr std::string_view kMetaBaseAllocation = "base:allocation";
inline constexpr std::uint32_t kStateHole = 1u << 0;
inline constexpr std::uint32_t kStateZero = 1u << 1;

// Sizes of fixed messages.
inline constexpr std::size_t kServerGreetingSize = 18;      // NBDMAGIC, IHAVEOPT, flags16
inline constexpr std::size_t kOldstyleGreetingSize = 152;   // NBDMAGIC, magic, size, flags32, 124 zeroes
inline constexpr std::size_t kClientFlagsSize = 4;
inline constexpr std::size_t kOptionHeaderSize = 16;        // IHAVEOPT, option, length
inline constexpr std::size_t kOptionReplyHeaderSize = 20;   // magic, option, type, length
inline constexpr std::size_t kExportNameReplySize = 10;     // size, flags (+124 zeroes unless NO_ZEROES)
inline constexpr std::size_t kExportNameReplyZeroes = 124;
inline constexpr std::size_t kRequestSize = 28;
inline constexpr std::size_t kExtendedRequestSize = 32;
inline constexpr std::size_t kSimpleReplySize = 16;
inline constexpr std::size_t kStructuredReplySize = 20;
inline constexpr std::size_t kExtendedReplySize = 32;
inline constexpr std::size_t kMaxReplyHeaderSize = 32;

// Bounds.
inline constexpr std::size_t kMaxStringLength = 4096;      // names, descriptions, messages
inline constexpr std::uint32_t kMaxBlockSize = 32u << 20;  // the largest payload we send or accept
// Largest option payload the server reads (a list of meta-context queries is the biggest
// legitimate one); longer options are answered with NBD_REP_ERR_TOO_BIG after skipping.
inline constexpr std::uint32_t kMaxOptionLength = 64u << 10;

// ---------------------------------------------------------------------------------------
// Cursors over big-endian fields (core/endian.hpp)

// Reads big-endian fields from a span; throws Error(EPROTO) when it runs past the end.
class Reader {
 public:
  explicit Reader(std::span<const std::byte> data, std::string_view what = "message")
      : data_(data), what_(what) {}
  std::uint8_t u8();
  std::uint16_t u16();
  std::uint32_t u32();
  std::uint64_t u64();
  std::span<const std::byte> bytes(std::size_t n);
  // A string of n bytes; rejects n > kMaxStringLength and embedded NULs.
  std::string string(std::size_t n);
  std::size_t remaining() const noexcept { return data_.size() - pos_; }
  // Throws unless every byte was consumed.
  void finish() const;

 private:
  void need(std::size_t n) const;
  std::span<const std::byte> data_;
  std::size_t pos_ = 0;
  std::string_view what_;
};

// Appends big-endian fields to a byte vector.
class Writer {
 public:
  explicit Writer(std::vector<std::byte>& out) : out_(out) {}
  Writer& u16(std::uint16_t v);
  Writer& u32(std::uint32_t v);
  Writer& u64(std::uint64_t v);
  Writer& bytes(std::span<const std::byte> b);
  Writer& string(std::string_view s);

 private:
  std::vector<std::byte>& out_;
};

// ---------------------------------------------------------------------------------------
// Handshake: greeting and client flags

struct ServerGreeting {
  bool oldstyle = false;
  std::uint16_t handshake_flags = 0;  // newstyle
  // Oldstyle only (the rest of the 152-byte greeting; see decode_oldstyle_greeting).
  std::uint64_t export_size = 0;
  std::uint16_t transmission_flags = 0;
};

// Server: NBDMAGIC, IHAVEOPT, handshake flags (kServerGreetingSize bytes).
std::size_t encode_server_greeting(std::span<std::byte> out, std::uint16_t handshake_flags);
// Client: decodes the first 16 bytes (NBDMAGIC + second magic) to tell newstyle from
// oldstyle: greeting_is_oldstyle() looks at those 16 bytes; then pass the whole greeting
// to decode_server_greeting (18 bytes for newstyle, kOldstyleGreetingSize for oldstyle).
bool greeting_is_oldstyle(std::span<const std::byte> first16);
ServerGreeting decode_server_greeting(std::span<const std::byte> in);

std::size_t encode_client_flags(std::span<std::byte> out, std::uint32_t flags);
std::uint32_t decode_client_flags(std::span<const std::byte> in);

// ---------------------------------------------------------------------------------------
// Options (client -> server)

struct OptionHeader {
  std::uint32_t option = 0;
  std::uint32_t length = 0;  // payload bytes that follow
};
std::size_t encode_option_header(std::span<std::byte> out, std::uint32_t option, std::uint32_t length);
OptionHeader decode_option_header(std::span<const std::byte> in);  // kOptionHeaderSize bytes
// Header + payload in one buffer.
std::vector<std::byte> encode_option(std::uint32_t option, std::span<const std::byte> payload = {});

// NBD_OPT_INFO / NBD_OPT_GO payload: export name and the info types asked for.
struct InfoRequest {
  std::string export_name;
  std::vector<std::uint16_t> info_types;
};
std::vector<std::byte> encode_info_request(const InfoRequest& request);
InfoRequest decode_info_request(std::span<const std::byte> payload);

// NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT payload.
struct MetaContextRequest {
  std::string export_name;
  std::vector<std::string> queries;
};
std::vector<std::byte> encode_meta_context_request(const MetaContextRequest& request);
MetaContextRequest decode_meta_context_request(std::span<const std::byte> payload);

// NBD_OPT_EXPORT_NAME payload is the bare name.
std::string decode_export_name(std::span<const std::byte> payload);

// ---------------------------------------------------------------------------------------
// Option replies (server -> client)

struct OptionReplyHeader {
  std::uint32_t option = 0;
  std::uint32_t type = 0;    // kRep*
  std::uint32_t length = 0;  // payload bytes that follow
};
std::size_t encode_option_reply_header(std::span<std::byte> out, std::uint32_t option, std::uint32_t type,
                                       std::uint32_t length);
OptionReplyHeader decode_option_reply_header(std::span<const std::byte> in);  // 20 bytes
// Header + payload in one buffer.
std::vector<std::byte> encode_option_reply(std::uint32_t option, std::uint32_t type,
                                           std::span<const std::byte> payload = {});
// An error reply with a human-readable message (the spec allows a UTF-8 string payload).
std::vector<std::byte> encode_option_error(std::uint32_t option, std::uint32_t type, std::string_view message);

// NBD_REP_SERVER payload (NBD_OPT_LIST): name, then optional description.
struct ServerEntry {
  std::string name;
  std::string description;
};
std::vector<std::byte> encode_rep_server(const ServerEntry& entry);
ServerEntry decode_rep_server(std::span<const std::byte> payload);

// NBD_REP_INFO payload.
struct BlockSizes {
  std::uint32_t minimum = 1;
  std::uint32_t preferred = 4096;
  std::uint32_t maximum = kMaxBlockSize;
};
struct InfoReply {
  std::uint16_t type = 0;  // kInfo*
  // kInfoExport
  std::uint64_t export_size = 0;
  std::uint16_t transmission_flags = 0;
  // kInfoName / kInfoDescription
  std::string text;
  // kInfoBlockSize
  BlockSizes block_sizes;
};
std::vector<std::byte> encode_info_export(std::uint64_t size, std::uint16_t transmission_flags);
std::vector<std::byte> encode_info_name(std::string_view name);
std::vector<std::byte> encode_info_description(std::string_view description);
std::vector<std::byte> encode_info_block_size(const BlockSizes& sizes);
// Unknown info types decode with only `type` set (clients must ignore them).
InfoReply decode_rep_info(std::span<const std::byte> payload);

// NBD_REP_META_CONTEXT payload.
struct MetaContext {
  std::uint32_t id = 0;
  std::string name;
};
std::vector<std::byte> encode_rep_meta_context(const MetaContext& context);
MetaContext decode_rep_meta_context(std::span<const std::byte> payload);

// The reply to NBD_OPT_EXPORT_NAME: size, transmission flags and, unless the client set
// NO_ZEROES, 124 zero bytes. Returns the bytes written (10 or 134).
std::size_t encode_export_name_reply(std::span<std::byte> out, std::uint64_t size, std::uint16_t flags,
                                     bool no_zeroes);
struct ExportNameReply {
  std::uint64_t size = 0;
  std::uint16_t transmission_flags = 0;
};
ExportNameReply decode_export_name_reply(std::span<const std::byte> in);  // the first 10 bytes

// ---------------------------------------------------------------------------------------
// Transmission: requests (client -> server)

struct Request {
  std::uint16_t flags = 0;  // kCmdFlag*
  std::uint16_t type = 0;   // kCmd*
  std::uint64_t cookie = 0;
  std::uint64_t offset = 0;
  // Compact headers carry 32 bits; extended headers 64 (for WRITE with extended headers,
  // and for a BLOCK_STATUS with kCmdFlagPayloadLen, the payload length).
  std::uint64_t length = 0;
};
inline constexpr std::size_t request_size(bool extended) { return extended ? kExtendedRequestSize : kRequestSize; }
// Writes a compact (28-byte) or extended (32-byte) header. Throws Error(EINVAL) when a
// compact header cannot hold `length`.
std::size_t encode_request(std::span<std::byte> out, const Request& request, bool extended);
// Decodes request_size(extended) bytes; throws Error(EPROTO) on a wrong magic (the magic
// of the other header style included).
Request decode_request(std::span<const std::byte> in, bool extended);

// ---------------------------------------------------------------------------------------
// Transmission: replies (server -> client)

enum class ReplyKind { simple, structured, extended };

// A reply header of any kind, normalized.
struct ReplyHeader {
  ReplyKind kind = ReplyKind::simple;
  std::uint64_t cookie = 0;
  std::uint32_t error = 0;   // simple replies only (NBD error value)
  std::uint16_t flags = 0;   // structured/extended: kReplyFlag*
  std::uint16_t type = 0;    // structured/extended: kReplyType*
  std::uint64_t offset = 0;  // extended only: the request's offset
  std::uint64_t length = 0;  // structured/extended: payload bytes that follow
};

// The total header size for a reply starting with `magic` (16, 20 or 32), or 0 if the
// magic is unknown.
std::size_t reply_header_size(std::uint32_t magic) noexcept;
// Decodes a whole header (reply_header_size(magic) bytes, magic included).
ReplyHeader decode_reply_header(std::span<const std::byte> in);

std::size_t encode_simple_reply(std::span<std::byte> out, std::uint64_t cookie, std::uint32_t nbd_error);
// A structured (20-byte) or, with `extended`, an extended (32-byte) chunk header.
// Throws Error(EINVAL) if a structured header cannot hold `payload_length`.
std::size_t encode_chunk_header(std::span<std::byte> out, bool extended, std::uint16_t flags, std::uint16_t type,
                                std::uint64_t cookie, std::uint64_t offset, std::uint64_t payload_length);

// Chunk payloads. OFFSET_DATA: the 8-byte offset precedes the data.
inline constexpr std::size_t kOffsetDataPrefixSize = 8;
inline constexpr std::size_t kOffsetHoleSize = 12;
std::size_t encode_offset_data_prefix(std::span<std::byte> out, std::uint64_t offset);
std::size_t encode_offset_hole(std::span<std::byte> out, std::uint64_t offset, std::uint32_t length);

struct OffsetData {
  std::uint64_t offset = 0;
  std::span<const std::byte> data;  // points into the payload
};
OffsetData decode_offset_data(std::span<const std::byte> payload);
struct OffsetHole {
  std::uint64_t offset = 0;
  std::uint32_t length = 0;
};
OffsetHole decode_offset_hole(std::span<const std::byte> payload);

// BLOCK_STATUS (32-bit descriptors) and BLOCK_STATUS_EXT (count + 64-bit descriptors).
struct Extent {
  std::uint64_t length = 0;
  std::uint64_t flags = 0;  // kState* for base:allocation
};
struct BlockStatusChunk {
  std::uint32_t context_id = 0;
  std::vector<Extent> extents;
};
// Appends the payload; `extended` picks BLOCK_STATUS_EXT's layout. Throws Error(EINVAL)
// when a compact descriptor cannot hold a length or flags value.
void encode_block_status(std::vector<std::byte>& out, const BlockStatusChunk& chunk, bool extended);
// `type` is the chunk type (kReplyTypeBlockStatus or kReplyTypeBlockStatusExt).
BlockStatusChunk decode_block_status(std::span<const std::byte> payload, std::uint16_t type);

// ERROR and ERROR_OFFSET payloads.
struct ErrorChunk {
  std::uint32_t error = 0;  // NBD error value
  std::string message;
  std::optional<std::uint64_t> offset;  // ERROR_OFFSET only
};
void encode_error_chunk(std::vector<std::byte>& out, const ErrorChunk& chunk);  // type from `offset`
ErrorChunk decode_error_chunk(std::span<const std::byte> payload, std::uint16_t type);

// ---------------------------------------------------------------------------------------
// Errors and names

// errno -> NBD error value (anything unknown becomes EINVAL as the spec says; EIO-like
// failures stay EIO).
std::uint32_t errno_to_nbd(int err) noexcept;
// NBD error value -> errno (unknown values become EINVAL).
int nbd_to_errno(std::uint32_t nbd_error) noexcept;

// Names for messages and logs ("NBD_OPT_GO", "NBD_CMD_READ", "NBD_REP_ERR_UNKNOWN", ...);
// unknown values print as a number.
std::string option_name(std::uint32_t option);
std::string rep_name(std::uint32_t rep);
std::string command_name(std::uint16_t command);
std::string reply_type_name(std::uint16_t type);
std::string info_name(std::uint16_t info);

}  // namespace netblk::nbd
