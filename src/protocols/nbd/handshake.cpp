// The client side of the handshake: fixed newstyle with NBD_OPT_GO (falling back to
// NBD_OPT_EXPORT_NAME), plain newstyle and oldstyle; STARTTLS, structured replies,
// extended headers and base:allocation when the server offers them.
#include <algorithm>
#include <cstring>

#include "core/log.hpp"
#include "protocols/nbd/nbd_connection.hpp"
#include "protocols/nbd/nbd_tls.hpp"

namespace netblk::nbd_client {
namespace {

// Longest option reply payload accepted (replies are a few bytes; messages <= 4 KiB).
constexpr std::uint32_t kMaxOptionReply = 1u << 20;

// Server text (error messages) made safe to print on one line.
std::string printable(std::span<const std::byte> bytes) {
  std::string s;
  for (std::byte b : bytes.first(std::min<std::size_t>(bytes.size(), 512))) {
    char c = static_cast<char>(b);
    s += (c >= 0x20 && c < 0x7f) ? c : '?';
  }
  return s;
}

[[noreturn]] void handshake_protocol_error(const std::string& name, const std::string& what) {
  throw Error(EPROTO, name + ": NBD handshake failed: " + what);
}

struct OptionReply {
  nbd::OptionReplyHeader header;
  std::vector<std::byte> payload;
};

Task<void> send_option(Stream& stream, std::uint32_t option, std::span<const std::byte> payload) {
  std::vector<std::byte> bytes = nbd::encode_option(option, payload);
  std::vector<asio::const_buffer> buffers{asio::buffer(bytes.data(), bytes.size())};
  co_await stream.write(buffers);
}

Task<OptionReply> read_option_reply(StreamReader& reader, std::uint32_t option, const std::string& name) {
  std::array<std::byte, nbd::kOptionReplyHeaderSize> raw;
  co_await reader.read_exact(raw);
  OptionReply r;
  try {
    r.header = nbd::decode_option_reply_header(raw);
  } catch (const Error& e) {
    handshake_protocol_error(name, e.what());
  }
  if (r.header.option != option)
    handshake_protocol_error(name, "reply to " + nbd::option_name(r.header.option) + " while waiting for " +
                                       nbd::option_name(option));
  if (r.header.length > kMaxOptionReply)
    handshake_protocol_error(name, "option reply of " + std::to_string(r.header.length) + " bytes");
  r.payload.resize(r.header.length);
  co_await reader.read_exact(r.payload);
  co_return r;
}

std::string error_text(const OptionReply& r) {
  std::string text = printable(r.payload);
  return text.empty() ? nbd::rep_name(r.header.type) : text;
}

// Sends an option without payload that is answered by ACK or an error; returns true on ACK.
Task<bool> simple_option(StreamReader& reader, Stream& stream, std::uint32_t option, const std::string& name) {
  const std::span<const std::byte> no_payload;
  co_await send_option(stream, option, no_payload);
  OptionReply r = co_await read_option_reply(reader, option, name);
  if (r.header.type == nbd::kRepAck) co_return true;
  if (nbd::is_rep_error(r.header.type)) co_return false;
  handshake_protocol_error(name, "unexpected " + nbd::rep_name(r.header.type) + " to " + nbd::option_name(option));
}

Task<void> set_meta_context(StreamReader& reader, Stream& stream, const std::string& export_name, ExportInfo& info,
                            const std::string& name) {
  nbd::MetaContextRequest req;
  req.export_name = export_name;
  req.queries.emplace_back(nbd::kMetaBaseAllocation);
  std::vector<std::byte> payload = nbd::encode_meta_context_request(req);
  co_await send_option(stream, nbd::kOptSetMetaContext, payload);
  while (true) {
    OptionReply r = co_await read_option_reply(reader, nbd::kOptSetMetaContext, name);
    if (r.header.type == nbd::kRepAck) co_return;
    if (nbd::is_rep_error(r.header.type)) {
      NETBLK_LOG(debug, "{}: no block status: {}", name, error_text(r));
      info.base_allocation.reset();
      co_return;
    }
    if (r.header.type != nbd::kRepMetaContext)
      handshake_protocol_error(name, "unexpected " + nbd::rep_name(r.header.type) + " to NBD_OPT_SET_META_CONTEXT");
    nbd::MetaContext mc;
    try {
      mc = nbd::decode_rep_meta_context(r.payload);
    } catch (const Error& e) {
      handshake_protocol_error(name, e.what());
    }
    if (mc.name == nbd::kMetaBaseAllocation) info.base_allocation = mc.id;
  }
}

void check_block_sizes(const nbd::BlockSizes& s, const std::string& name) {
  auto pow2 = [](std::uint32_t v) { return v && !(v & (v - 1)); };
  if (!pow2(s.minimum) || s.minimum > 64 * 1024 || !pow2(s.preferred) || s.preferred < s.minimum ||
      s.maximum < s.minimum || (s.maximum != 0xffffffffu && s.maximum % s.minimum))
    handshake_protocol_error(name, "invalid block sizes " + std::to_string(s.minimum) + "/" +
                                       std::to_string(s.preferred) + "/" + std::to_string(s.maximum));
}

// NBD_OPT_GO; false when the server does not know it (then NBD_OPT_EXPORT_NAME is used).
Task<bool> go(StreamReader& reader, Stream& stream, const std::string& export_name, ExportInfo& info,
              const std::string& name) {
  nbd::InfoRequest req;
  req.export_name = export_name;
  req.info_types.push_back(nbd::kInfoBlockSize);
  std::vector<std::byte> payload = nbd::encode_info_request(req);
  co_await send_option(stream, nbd::kOptGo, payload);
  bool have_export = false;
  while (true) {
    OptionReply r = co_await read_option_reply(reader, nbd::kOptGo, name);
    const std::uint32_t type = r.header.type;
    if (type == nbd::kRepAck) break;
    if (type == nbd::kRepInfo) {
      nbd::InfoReply ir;
      try {
        ir = nbd::decode_rep_info(r.payload);
      } catch (const Error& e) {
        handshake_protocol_error(name, e.what());
      }
      if (ir.type == nbd::kInfoExport) {
        info.size = ir.export_size;
        info.flags = ir.transmission_flags;
        have_export = true;
      } else if (ir.type == nbd::kInfoBlockSize) {
        check_block_sizes(ir.block_sizes, name);
        info.block_sizes = ir.block_sizes;
        info.have_block_sizes = true;
      }
      continue;
    }
    if (type == nbd::kRepErrUnsup) co_return false;
    const std::string quoted = "'" + export_name + "'";
    if (type == nbd::kRepErrUnknown)
      throw Error(ENOENT, name + ": server refused export " + quoted + ": " + error_text(r));
    if (type == nbd::kRepErrTlsReqd)
      throw Error(EACCES, name + ": server requires TLS for export " + quoted + " (use nbds:// or tls-creds)");
    if (type == nbd::kRepErrPolicy)
      throw Error(EACCES, name + ": server refused export " + quoted + " by policy: " + error_text(r));
    if (nbd::is_rep_error(type))
      throw Error(EIO, name + ": server refused export " + quoted + ": " + error_text(r));
    handshake_protocol_error(name, "unexpected " + nbd::rep_name(type) + " to NBD_OPT_GO");
  }
  if (!have_export) handshake_protocol_error(name, "NBD_OPT_GO succeeded without NBD_INFO_EXPORT");
  co_return true;
}

Task<void> export_name_option(StreamReader& reader, Stream& stream, const std::string& export_name, bool no_zeroes,
                              ExportInfo& info, const std::string& name) {
  std::vector<std::byte> payload(export_name.size());
  std::memcpy(payload.data(), export_name.data(), export_name.size());
  co_await send_option(stream, nbd::kOptExportName, payload);
  std::array<std::byte, nbd::kExportNameReplySize> raw;
  try {
    co_await reader.read_exact(raw);
  } catch (const std::exception&) {
    // The only way a server refuses NBD_OPT_EXPORT_NAME is to hang up.
    throw Error(ENOENT, name + ": server refused export '" + export_name + "' (it closed the connection)");
  }
  nbd::ExportNameReply r = nbd::decode_export_name_reply(raw);
  info.size = r.size;
  info.flags = r.transmission_flags;
  if (!no_zeroes) co_await reader.skip(nbd::kExportNameReplyZeroes);
}

}  // namespace

Task<ExportInfo> handshake(StreamReader& reader, std::shared_ptr<Stream>& stream_ptr, const NbdConfig& config,
                           const std::string& name) {
  ExportInfo info;
  const std::string export_name = config.export_name.value_or("");
  std::array<std::byte, nbd::kOldstyleGreetingSize> greeting;
  co_await reader.read_exact(std::span<std::byte>(greeting.data(), 16));
  nbd::ServerGreeting g;
  try {
    if (nbd::greeting_is_oldstyle(std::span<const std::byte>(greeting.data(), 16))) {
      co_await reader.read_exact(std::span<std::byte>(greeting.data() + 16, nbd::kOldstyleGreetingSize - 16));
      g = nbd::decode_server_greeting(greeting);
    } else {
      co_await reader.read_exact(std::span<std::byte>(greeting.data() + 16, nbd::kServerGreetingSize - 16));
      g = nbd::decode_server_greeting(std::span<const std::byte>(greeting.data(), nbd::kServerGreetingSize));
    }
  } catch (const Error& e) {
    if (e.code() != EPROTO) throw;
    handshake_protocol_error(name, e.what());
  }
  if (g.oldstyle) {
    if (config.tls) throw Error(ENOTSUP, name + ": the server speaks the oldstyle protocol, which has no TLS");
    info.size = g.export_size;
    info.flags = g.transmission_flags;
  } else {
    const bool fixed = g.handshake_flags & nbd::kFlagFixedNewstyle;
    const bool no_zeroes = g.handshake_flags & nbd::kFlagNoZeroes;
    std::uint32_t client_flags = (fixed ? nbd::kClientFlagFixedNewstyle : 0) | (no_zeroes ? nbd::kClientFlagNoZeroes : 0);
    std::array<std::byte, nbd::kClientFlagsSize> flags_bytes;
    nbd::encode_client_flags(flags_bytes, client_flags);
    std::vector<asio::const_buffer> buffers{asio::buffer(flags_bytes.data(), flags_bytes.size())};
    co_await stream_ptr->write(buffers);
    if (config.tls) {
      if (!fixed) throw Error(ENOTSUP, name + ": the server does not support TLS (no fixed newstyle handshake)");
      const std::span<const std::byte> no_payload;
      co_await send_option(*stream_ptr, nbd::kOptStartTls, no_payload);
      OptionReply r = co_await read_option_reply(reader, nbd::kOptStartTls, name);
      if (r.header.type != nbd::kRepAck) {
        if (nbd::is_rep_error(r.header.type))
          throw Error(ENOTSUP, name + ": the server does not support TLS: " + error_text(r));
        handshake_protocol_error(name, "unexpected " + nbd::rep_name(r.header.type) + " to NBD_OPT_STARTTLS");
      }
      std::shared_ptr<Stream> tls = co_await start_tls(stream_ptr, config, name);
      if (!reader.reset_stream(tls)) handshake_protocol_error(name, "bytes after the NBD_OPT_STARTTLS reply");
      stream_ptr = tls;
    }
    Stream& stream = *stream_ptr;
    bool went = false;
    if (fixed) {
      info.extended = co_await simple_option(reader, stream, nbd::kOptExtendedHeaders, name);
      info.structured = info.extended || co_await simple_option(reader, stream, nbd::kOptStructuredReply, name);
      if (info.structured) co_await set_meta_context(reader, stream, export_name, info, name);
      went = co_await go(reader, stream, export_name, info, name);
    }
    if (!went) co_await export_name_option(reader, stream, export_name, no_zeroes, info, name);
  }
  if (!(info.flags & nbd::kFlagHasFlags)) info.flags = nbd::kFlagHasFlags;  // the spec says it is always set
  if (info.size > static_cast<std::uint64_t>(INT64_MAX))
    handshake_protocol_error(name, "export size " + std::to_string(info.size) + " is too large");
  if (!info.structured) info.base_allocation.reset();
  co_return info;
}

}  // namespace netblk::nbd_client
