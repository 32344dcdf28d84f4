// The SFTP v3 codec. See sftp_codec.hpp.
#include "protocols/ssh/sftp_codec.hpp"

#include <cerrno>
#include <cstring>

#include "core/endian.hpp"
#include "netblk/error.hpp"

namespace netblk::sftp {
namespace {

[[noreturn]] void bad(const std::string& why) { throw Error(EPROTO, "SFTP: malformed reply: " + why); }

// Builds one packet: the length prefix is filled in by done().
class Packet {
 public:
  Packet(std::uint8_t type, std::uint32_t id) : out_(4) {
    out_.push_back(std::byte{type});
    u32(id);
  }
  Packet& u32(std::uint32_t v) {
    store_be32(grow(4), v);
    return *this;
  }
  Packet& u64(std::uint64_t v) {
    store_be64(grow(8), v);
    return *this;
  }
  Packet& str(std::string_view s) {
    u32(static_cast<std::uint32_t>(s.size()));
    if (!s.empty()) std::memcpy(grow(s.size()), s.data(), s.size());
    return *this;
  }
  // `trailing`: bytes the caller sends after the packet's head (WRITE data).
  std::vector<std::byte> done(std::uint32_t trailing = 0) {
    store_be32(out_.data(), static_cast<std::uint32_t>(out_.size() - 4 + trailing));
    return std::move(out_);
  }

 private:
  std::byte* grow(std::size_t n) {
    out_.resize(out_.size() + n);
    return out_.data() + out_.size() - n;
  }
  std::vector<std::byte> out_;
};

// Big-endian fields of a reply body, bounds-checked.
class Fields {
 public:
  explicit Fields(std::span<const std::byte> in) : in_(in) {}
  std::uint32_t u32() { return load_be32(take(4).data()); }
  std::uint64_t u64() { return load_be64(take(8).data()); }
  std::string str(std::size_t max, const char* what) {
    const std::uint32_t n = u32();
    if (n > max) bad(std::string(what) + " longer than " + std::to_string(max) + " bytes");
    const auto b = take(n);
    return {reinterpret_cast<const char*>(b.data()), b.size()};
  }
  std::size_t left() const noexcept { return in_.size() - pos_; }

 private:
  std::span<const std::byte> take(std::size_t n) {
    if (left() < n) bad("truncated");
    const auto s = in_.subspan(pos_, n);
    pos_ += n;
    return s;
  }
  std::span<const std::byte> in_;
  std::size_t pos_ = 0;
};

constexpr std::size_t kHeaderSize = 9;       // length, type, id
constexpr std::size_t kDataHeaderSize = 13;  // and DATA's length
constexpr std::size_t kMaxServerString = 64u << 10;

}  // namespace

std::vector<std::byte> encode_init() { return Packet(kInit, kVersion).done(); }

std::vector<std::byte> encode_open(std::uint32_t id, std::string_view path, std::uint32_t flags,
                                   std::optional<std::uint32_t> permissions) {
  Packet p(kOpen, id);
  p.str(path).u32(flags);
  if (permissions) p.u32(kAttrPermissions).u32(*permissions);
  else p.u32(0);
  return p.done();
}

std::vector<std::byte> encode_close(std::uint32_t id, std::string_view handle) {
  return Packet(kClose, id).str(handle).done();
}

std::vector<std::byte> encode_read(std::uint32_t id, std::string_view handle, std::uint64_t offset,
                                   std::uint32_t length) {
  return Packet(kRead, id).str(handle).u64(offset).u32(length).done();
}

std::vector<std::byte> encode_write_header(std::uint32_t id, std::string_view handle, std::uint64_t offset,
                                           std::uint32_t length) {
  return Packet(kWrite, id).str(handle).u64(offset).u32(length).done(length);
}

std::vector<std::byte> encode_fstat(std::uint32_t id, std::string_view handle) {
  return Packet(kFstat, id).str(handle).done();
}

std::vector<std::byte> encode_fsetstat_size(std::uint32_t id, std::string_view handle, std::uint64_t size) {
  return Packet(kFsetstat, id).str(handle).u32(kAttrSize).u64(size).done();
}

std::vector<std::byte> encode_fsync(std::uint32_t id, std::string_view handle) {
  return Packet(kExtended, id).str("fsync@openssh.com").str(handle).done();
}

std::vector<std::byte> encode_limits(std::uint32_t id) {
  return Packet(kExtended, id).str("limits@openssh.com").done();
}

// ---------------------------------------------------------------------------------------
// ReplyReader

std::span<std::byte> ReplyReader::buffer() {
  switch (state_) {
    case State::header:
      return {header_ + have_, kHeaderSize - have_};
    case State::data_length:
      return {header_ + have_, kDataHeaderSize - have_};
    case State::data:
      return data_.subspan(have_);
    case State::body:
      break;
  }
  return std::span<std::byte>(reply_.body).subspan(have_);
}

bool ReplyReader::stored(std::size_t n) {
  have_ += n;
  switch (state_) {
    case State::header:
      if (have_ < kHeaderSize) return false;
      header_done();
      if (state_ == State::header) return finish();
      return false;
    case State::data_length: {
      if (have_ < kDataHeaderSize) return false;
      const std::uint32_t n_data = load_be32(header_ + kHeaderSize);
      if (n_data != length_ - (kDataHeaderSize - 4))
        bad("DATA of " + std::to_string(n_data) + " bytes in a packet of " + std::to_string(length_));
      data_ = sink_(reply_.id, n_data);
      if (data_.size() != n_data) bad("no room for the DATA reply");
      reply_.data_length = n_data;
      have_ = 0;
      if (n_data == 0) return finish();
      state_ = State::data;
      return false;
    }
    case State::data:
      return have_ >= data_.size() && finish();
    case State::body:
      return have_ >= reply_.body.size() && finish();
  }
  return false;
}

void ReplyReader::header_done() {
  length_ = load_be32(header_);
  reply_.type = std::to_integer<std::uint8_t>(header_[4]);
  reply_.id = load_be32(header_ + 5);
  reply_.data_length = 0;
  reply_.body.clear();
  if (length_ < kHeaderSize - 4) bad("a packet of " + std::to_string(length_) + " bytes");
  if (reply_.type == kDataReply) {
    if (length_ < kDataHeaderSize - 4) bad("a DATA packet of " + std::to_string(length_) + " bytes");
    state_ = State::data_length;
    return;
  }
  const std::uint32_t body = length_ - (kHeaderSize - 4);
  if (body > kMaxBufferedReply) bad("a reply of " + std::to_string(length_) + " bytes");
  reply_.body.resize(body);
  have_ = 0;
  state_ = body ? State::body : State::header;
}

bool ReplyReader::finish() {
  state_ = State::header;
  have_ = 0;
  return true;
}

void ReplyReader::reset() {
  state_ = State::header;
  have_ = 0;
  data_ = {};
  reply_ = Reply{};
}

// ---------------------------------------------------------------------------------------
// Decoders

Status decode_status(std::span<const std::byte> body) {
  Fields f(body);
  Status s;
  s.code = f.u32();
  // The message (and its language tag) are optional in practice.
  if (f.left() >= 4) s.message = f.str(kMaxServerString, "status message");
  for (char& c : s.message)
    if (c < 0x20 || c > 0x7e) c = '?';
  return s;
}

std::string decode_handle(std::span<const std::byte> body) {
  Fields f(body);
  std::string h = f.str(kMaxHandle, "handle");
  if (f.left() != 0) bad("bytes after the handle");
  return h;
}

Attrs decode_attrs(std::span<const std::byte> body) {
  Fields f(body);
  Attrs a;
  a.flags = f.u32();
  if (a.flags & kAttrSize) a.size = f.u64();
  if (a.flags & kAttrUidGid) f.u64();
  if (a.flags & kAttrPermissions) a.permissions = f.u32();
  if (a.flags & kAttrTimes) f.u64();
  if (a.flags & kAttrExtended) {
    const std::uint32_t count = f.u32();
    // Each pair takes at least two length fields: a count beyond that is a lie.
    if (count > f.left() / 8) bad("attribute extension count " + std::to_string(count));
    for (std::uint32_t i = 0; i < count; ++i) {
      f.str(kMaxServerString, "attribute extension name");
      f.str(kMaxServerString, "attribute extension data");
    }
  }
  return a;
}

std::vector<std::pair<std::string, std::string>> decode_extensions(std::span<const std::byte> body) {
  Fields f(body);
  std::vector<std::pair<std::string, std::string>> out;
  while (f.left() > 0) {
    std::string name = f.str(kMaxServerString, "extension name");
    std::string data = f.str(kMaxServerString, "extension data");
    out.emplace_back(std::move(name), std::move(data));
  }
  return out;
}

Limits decode_limits(std::span<const std::byte> body) {
  Fields f(body);
  Limits l;
  l.max_packet = f.u64();
  l.max_read = f.u64();
  l.max_write = f.u64();
  l.max_open_handles = f.u64();
  return l;
}

int status_errno(std::uint32_t code) {
  switch (code) {
    case kOk:
      return 0;
    case kNoSuchFile:
      return ENOENT;
    case kPermissionDenied:
      return EACCES;
    case kBadMessage:
      return EPROTO;
    case kOpUnsupported:
      return ENOTSUP;
    default:
      return EIO;
  }
}

std::string status_text(const Status& s) {
  if (!s.message.empty()) return s.message;
  switch (s.code) {
    case kEof:
      return "end of file";
    case kNoSuchFile:
      return "no such file";
    case kPermissionDenied:
      return "permission denied";
    case kOpUnsupported:
      return "operation unsupported";
    default:
      return "failure (SFTP status " + std::to_string(s.code) + ")";
  }
}

}  // namespace netblk::sftp
