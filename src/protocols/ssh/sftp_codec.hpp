// The SFTP version 3 subset netblk speaks (draft-ietf-secsh-filexfer-02, and OpenSSH's
// fsync@openssh.com and limits@openssh.com extensions): requests encoded into bytes, and
// the server's byte stream cut into replies. Pure: no sockets and no SSH library, so the
// driver and the fuzz target run the same code.
//
// Conventions: every integer is big-endian; a string is a uint32 length and its bytes.
// Malformed input from the server throws Error(EPROTO, "SFTP: ...").
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace netblk::sftp {

inline constexpr std::uint32_t kVersion = 3;

// Packet types.
inline constexpr std::uint8_t kInit = 1, kVersionReply = 2, kOpen = 3, kClose = 4, kRead = 5, kWrite = 6,
                              kFstat = 8, kFsetstat = 10, kStatusReply = 101, kHandleReply = 102, kDataReply = 103,
                              kAttrsReply = 105, kExtended = 200, kExtendedReply = 201;

// Status codes.
inline constexpr std::uint32_t kOk = 0, kEof = 1, kNoSuchFile = 2, kPermissionDenied = 3, kFailure = 4,
                               kBadMessage = 5, kOpUnsupported = 8;

// SSH_FXP_OPEN flags.
inline constexpr std::uint32_t kOpenRead = 0x01, kOpenWrite = 0x02, kOpenCreate = 0x08, kOpenTruncate = 0x10;

// Attribute flags.
inline constexpr std::uint32_t kAttrSize = 0x01, kAttrUidGid = 0x02, kAttrPermissions = 0x04, kAttrTimes = 0x08,
                               kAttrExtended = 0x80000000u;

// Bytes of a WRITE request before its data, with a handle of `handle_size` bytes.
constexpr std::size_t write_header_size(std::size_t handle_size) { return 4 + 1 + 4 + 4 + handle_size + 8 + 4; }

// What a server without limits@openssh.com is assumed to take: the 32 KiB every SFTP
// server must accept (and OpenSSH before 8.6 takes 256 KiB packets).
inline constexpr std::uint32_t kDefaultReadWrite = 32768;
// The largest reply netblk keeps in memory (DATA goes straight into the reader's buffer).
inline constexpr std::uint32_t kMaxBufferedReply = 256u << 10;
// The longest handle a server may send (draft-02: 256 bytes).
inline constexpr std::size_t kMaxHandle = 256;

// ---------------------------------------------------------------------------------------
// Requests: each returns the whole packet, length prefix included.

std::vector<std::byte> encode_init();
std::vector<std::byte> encode_open(std::uint32_t id, std::string_view path, std::uint32_t flags,
                                   std::optional<std::uint32_t> permissions);
std::vector<std::byte> encode_close(std::uint32_t id, std::string_view handle);
std::vector<std::byte> encode_read(std::uint32_t id, std::string_view handle, std::uint64_t offset,
                                   std::uint32_t length);
// The WRITE packet up to its data; the caller sends `length` bytes of data after it.
std::vector<std::byte> encode_write_header(std::uint32_t id, std::string_view handle, std::uint64_t offset,
                                           std::uint32_t length);
std::vector<std::byte> encode_fstat(std::uint32_t id, std::string_view handle);
// FSETSTAT with only the size: truncate or extend the open file.
std::vector<std::byte> encode_fsetstat_size(std::uint32_t id, std::string_view handle, std::uint64_t size);
// An EXTENDED request: "fsync@openssh.com" (the handle), "limits@openssh.com" (nothing).
std::vector<std::byte> encode_fsync(std::uint32_t id, std::string_view handle);
std::vector<std::byte> encode_limits(std::uint32_t id);

// ---------------------------------------------------------------------------------------
// Replies

struct Reply {
  std::uint8_t type = 0;
  // The request id (for VERSION: the server's protocol version).
  std::uint32_t id = 0;
  // DATA: the number of bytes stored in the span the sink gave. Other types: the bytes
  // after the id.
  std::uint32_t data_length = 0;
  std::vector<std::byte> body;
};

// Cuts the server's stream into replies. The owner reads into buffer() and reports what it
// stored with stored(); a DATA reply's payload goes straight into the span `sink(id,
// length)` returns (exactly `length` bytes), so file data is copied once. The sink throws
// (Error EPROTO) when no read awaits that id or the payload is longer than asked.
class ReplyReader {
 public:
  using Sink = std::function<std::span<std::byte>(std::uint32_t id, std::uint32_t length)>;
  explicit ReplyReader(Sink sink) : sink_(std::move(sink)) {}

  // Where the next bytes of the stream go (never empty).
  std::span<std::byte> buffer();
  // `n` bytes were stored at the start of buffer(). True when a reply is complete: reply()
  // holds it until the next call.
  bool stored(std::size_t n);
  const Reply& reply() const noexcept { return reply_; }
  // Starts over (a new connection).
  void reset();

 private:
  enum class State { header, data_length, data, body };
  void header_done();
  bool finish();
  Sink sink_;
  State state_ = State::header;
  std::byte header_[13] = {};
  std::size_t have_ = 0;     // bytes of the current part stored
  std::uint32_t length_ = 0; // the packet's length field
  std::span<std::byte> data_;
  Reply reply_;
};

// Decoders of one reply's body (Reply::body); each throws Error(EPROTO) when malformed.
struct Status {
  std::uint32_t code = kOk;
  std::string message;  // the server's words, printable ASCII only (others become '?')
};
Status decode_status(std::span<const std::byte> body);
std::string decode_handle(std::span<const std::byte> body);
struct Attrs {
  std::uint32_t flags = 0;
  std::optional<std::uint64_t> size;
  std::optional<std::uint32_t> permissions;
};
Attrs decode_attrs(std::span<const std::byte> body);
// VERSION's body: extension pairs (name, data).
std::vector<std::pair<std::string, std::string>> decode_extensions(std::span<const std::byte> body);
// limits@openssh.com's EXTENDED_REPLY: 0 in a field means "no limit stated".
struct Limits {
  std::uint64_t max_packet = 0, max_read = 0, max_write = 0, max_open_handles = 0;
};
Limits decode_limits(std::span<const std::byte> body);

// An errno for a status code, and a short text for messages ("no such file").
int status_errno(std::uint32_t code);
std::string status_text(const Status& s);

}  // namespace netblk::sftp
