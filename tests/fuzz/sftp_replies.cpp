// The SFTP codec facing a hostile server: the input is the byte stream of the channel, cut
// into replies by ReplyReader in uneven pieces (as libssh hands them over), with three
// reads of different sizes awaiting DATA. Every reply is decoded as the driver would
// (status, handle, attributes, extensions, limits). Malformed input must end in
// Error(EPROTO), never a crash or a write outside the reads' buffers.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <vector>

#include "netblk/error.hpp"
#include "protocols/ssh/sftp_codec.hpp"

using namespace netblk;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // Reads in flight: id -> buffer of exactly the length asked for.
  std::map<std::uint32_t, std::vector<std::byte>> reads;
  reads[1].resize(1);
  reads[2].resize(4096);
  reads[3].resize(70000);
  sftp::ReplyReader reader([&](std::uint32_t id, std::uint32_t length) -> std::span<std::byte> {
    auto it = reads.find(id);
    if (it == reads.end() || length > it->second.size()) throw Error(EPROTO, "unexpected DATA");
    return std::span<std::byte>(it->second).first(length);
  });
  std::size_t pos = 0;
  try {
    while (pos < size) {
      auto buf = reader.buffer();
      if (buf.empty()) __builtin_trap();  // the reader must always want bytes
      const std::size_t n = std::min({buf.size(), size - pos, std::size_t{1} + (pos * 7919) % 977});
      std::memcpy(buf.data(), data + pos, n);
      pos += n;
      if (!reader.stored(n)) continue;
      const sftp::Reply& r = reader.reply();
      try {
        switch (r.type) {
          case sftp::kStatusReply:
            (void)sftp::status_text(sftp::decode_status(r.body));
            break;
          case sftp::kHandleReply:
            (void)sftp::decode_handle(r.body);
            break;
          case sftp::kAttrsReply:
            (void)sftp::decode_attrs(r.body);
            break;
          case sftp::kVersionReply:
            (void)sftp::decode_extensions(r.body);
            break;
          case sftp::kExtendedReply:
            (void)sftp::decode_limits(r.body);
            break;
          case sftp::kDataReply:
            if (r.data_length > reads[r.id].size()) __builtin_trap();
            break;
          default:
            break;
        }
      } catch (const Error& e) {
        if (e.code() != EPROTO) __builtin_trap();
      }
    }
  } catch (const Error& e) {
    if (e.code() != EPROTO) __builtin_trap();
  }
  return 0;
}
