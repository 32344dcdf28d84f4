// The server side of the handshake: fixed newstyle options until NBD_OPT_GO or
// NBD_OPT_EXPORT_NAME, STARTTLS, structured replies, extended headers, meta contexts.
#include "exports/nbd/connection.hpp"

#include <algorithm>

#include "core/log.hpp"

namespace netblk::nbd::server_detail {

// Handshake replies (transmission replies go through push_out() or write_batch_tls()).
Task<void> Connection::write_all(std::span<const std::byte> bytes) {
  const std::vector<asio::const_buffer> buffers{asio::const_buffer(bytes.data(), bytes.size())};
  co_await stream_->write(buffers);
}

Task<void> Connection::send_option_reply(std::uint32_t option, std::uint32_t type, std::span<const std::byte> payload) {
  auto bytes = encode_option_reply(option, type, payload);
  co_await write_all(bytes);
}

Task<void> Connection::send_option_error(std::uint32_t option, std::uint32_t type, const std::string& message) {
  NETBLK_LOG(debug, "nbd: {} -> {}: {}", option_name(option), rep_name(type), message);
  auto bytes = encode_option_error(option, type, message);
  co_await write_all(bytes);
}

// Returns true to enter transmission, false to close.
Task<bool> Connection::negotiate() {
  std::array<std::byte, kServerGreetingSize> greeting;
  encode_server_greeting(greeting, kFlagFixedNewstyle | kFlagNoZeroes);
  co_await write_all(greeting);
  co_await reader_.fill(kClientFlagsSize);
  std::uint32_t client_flags = decode_client_flags(reader_.take(kClientFlagsSize));
  if (client_flags & ~(kClientFlagFixedNewstyle | kClientFlagNoZeroes))
    throw Disconnect{"unknown client flags " + std::to_string(client_flags)};
  no_zeroes_ = client_flags & kClientFlagNoZeroes;

  std::vector<std::byte> payload;
  while (true) {
    co_await reader_.fill(kOptionHeaderSize);
    OptionHeader header = decode_option_header(reader_.take(kOptionHeaderSize));
    // A client that only connects (a readiness probe) does not count as served.
    server_->served_any = true;
    if (header.length > kMaxOptionLength) {
      if (header.option == kOptExportName || header.length > 16 * kMaxOptionLength)
        throw Disconnect{option_name(header.option) + " of " + std::to_string(header.length) + " bytes"};
      co_await reader_.skip(header.length);
      co_await send_option_error(header.option, kRepErrTooBig, "option too long");
      continue;
    }
    co_await reader_.fill(header.length);
    auto bytes = reader_.take(header.length);
    payload.assign(bytes.begin(), bytes.end());
    NETBLK_LOG(debug, "nbd: client sent {} ({} bytes)", option_name(header.option), header.length);

    if (config_.tls && !tls_ && header.option != kOptStartTls && header.option != kOptAbort) {
      if (header.option == kOptExportName) throw Disconnect{"NBD_OPT_EXPORT_NAME without TLS"};
      co_await send_option_error(header.option, kRepErrTlsReqd, "TLS is required on this server");
      continue;
    }
    switch (header.option) {
      case kOptExportName: {
        std::string name;
        try {
          name = decode_export_name(payload);
        } catch (const Error&) {
          throw Disconnect{"malformed NBD_OPT_EXPORT_NAME"};
        }
        if (!export_matches(name)) throw Disconnect{"client asked for unknown export '" + name + "'"};
        std::array<std::byte, kExportNameReplySize + kExportNameReplyZeroes> reply;
        std::size_t n = encode_export_name_reply(reply, node_.size(), server_->transmission_flags(structured_),
                                                 no_zeroes_);
        co_await write_all(std::span<const std::byte>(reply.data(), n));
        co_return true;
      }
      case kOptAbort:
        // The client may not wait for it; ignore a failure to send.
        try {
          co_await send_option_reply(header.option, kRepAck);
        } catch (const std::system_error&) {
        }
        co_return false;
      case kOptList: {
        if (!payload.empty()) {
          co_await send_option_error(header.option, kRepErrInvalid, "NBD_OPT_LIST with data");
          break;
        }
        auto entry = encode_rep_server(ServerEntry{config_.name, config_.description});
        co_await send_option_reply(header.option, kRepServer, entry);
        co_await send_option_reply(header.option, kRepAck);
        break;
      }
      case kOptStartTls:
        if (!config_.tls) {
          co_await send_option_error(header.option, kRepErrPolicy, "TLS is not configured on this server");
        } else if (tls_) {
          co_await send_option_error(header.option, kRepErrInvalid, "TLS is already on");
        } else if (!payload.empty()) {
          co_await send_option_error(header.option, kRepErrInvalid, "NBD_OPT_STARTTLS with data");
        } else {
          co_await send_option_reply(header.option, kRepAck);
          co_await start_tls();
        }
        break;
      case kOptInfo:
      case kOptGo: {
        InfoRequest request;
        std::string malformed;
        try {
          request = decode_info_request(payload);
        } catch (const Error& e) {
          malformed = e.what();
        }
        if (!malformed.empty()) {
          co_await send_option_error(header.option, kRepErrInvalid, malformed);
          break;
        }
        if (!export_matches(request.export_name)) {
          co_await send_option_error(header.option, kRepErrUnknown,
                                     "export '" + request.export_name + "' not present");
          break;
        }
        bool want_name = false, want_description = false;
        for (auto t : request.info_types) {
          if (t == kInfoName) want_name = true;
          if (t == kInfoDescription) want_description = true;
        }
        auto info = encode_info_export(node_.size(), server_->transmission_flags(structured_));
        co_await send_option_reply(header.option, kRepInfo, info);
        if (want_name) {
          auto b = encode_info_name(config_.name);
          co_await send_option_reply(header.option, kRepInfo, b);
        }
        if (want_description && !config_.description.empty()) {
          auto b = encode_info_description(config_.description);
          co_await send_option_reply(header.option, kRepInfo, b);
        }
        auto sizes = encode_info_block_size(block_sizes());
        co_await send_option_reply(header.option, kRepInfo, sizes);
        co_await send_option_reply(header.option, kRepAck);
        if (header.option == kOptGo) co_return true;
        break;
      }
      case kOptStructuredReply:
        if (!payload.empty()) {
          co_await send_option_error(header.option, kRepErrInvalid, "NBD_OPT_STRUCTURED_REPLY with data");
        } else if (structured_ && !extended_) {
          co_await send_option_error(header.option, kRepErrInvalid, "structured replies already negotiated");
        } else {
          structured_ = true;
          co_await send_option_reply(header.option, kRepAck);
        }
        break;
      case kOptExtendedHeaders:
        if (!payload.empty()) {
          co_await send_option_error(header.option, kRepErrInvalid, "NBD_OPT_EXTENDED_HEADERS with data");
        } else if (extended_) {
          co_await send_option_error(header.option, kRepErrInvalid, "extended headers already negotiated");
        } else {
          extended_ = true;
          structured_ = true;
          co_await send_option_reply(header.option, kRepAck);
        }
        break;
      case kOptListMetaContext:
      case kOptSetMetaContext:
        co_await meta_context(header.option, payload);
        break;
      default:
        co_await send_option_error(header.option, kRepErrUnsup, "unsupported option " + option_name(header.option));
        break;
    }
  }
}

// After NBD_OPT_STARTTLS was acknowledged: the TLS handshake, then every byte both ways
// goes through the session.
Task<void> Connection::start_tls() {
  // Bytes sent after STARTTLS but before the handshake would be taken as protected.
  if (reader_.buffered()) throw Disconnect{"data after NBD_OPT_STARTTLS before the TLS handshake"};
  auto session = std::make_unique<tls::Session>(
      true, socket_.native_handle(),
      [this](bool write) -> Task<void> {
        co_await socket_.async_wait(write ? Socket::wait_write : Socket::wait_read, asio::use_awaitable);
      },
      "nbd server");
  config_.tls->apply(*session);
  try {
    co_await session->handshake();
    config_.tls->check_client(*session);
  } catch (const Error& e) {
    throw Disconnect{e.what()};
  }
  tls_ = std::move(session);
  // Whatever was negotiated in the clear is forgotten (the NBD spec's rule).
  structured_ = extended_ = base_allocation_ = false;
  NETBLK_LOG(debug, "nbd: TLS is on");
}

Task<void> Connection::meta_context(std::uint32_t option, std::span<const std::byte> payload) {
  bool set = option == kOptSetMetaContext;
  MetaContextRequest request;
  std::string malformed;
  try {
    request = decode_meta_context_request(payload);
  } catch (const Error& e) {
    malformed = e.what();
  }
  if (!malformed.empty()) {
    co_await send_option_error(option, kRepErrInvalid, malformed);
    co_return;
  }
  if (set && !structured_) {
    co_await send_option_error(option, kRepErrInvalid, "structured replies are required for meta contexts");
    co_return;
  }
  if (!export_matches(request.export_name)) {
    co_await send_option_error(option, kRepErrUnknown, "export '" + request.export_name + "' not present");
    co_return;
  }
  bool selected = false;
  bool list_all = !set && request.queries.empty();
  for (const auto& q : request.queries)
    if (q == kMetaBaseAllocation || (!set && q == "base:")) selected = true;
  if (selected || list_all) {
    auto b = encode_rep_meta_context(MetaContext{kBaseAllocationId, std::string(kMetaBaseAllocation)});
    co_await send_option_reply(option, kRepMetaContext, b);
  }
  if (set) base_allocation_ = selected;
  co_await send_option_reply(option, kRepAck);
}

BlockSizes Connection::block_sizes() const {
  BlockSizes s;
  s.minimum = std::max<std::uint32_t>(1, node_.limits().request_alignment);
  s.preferred = std::max<std::uint32_t>(4096, s.minimum);
  s.maximum = kMaxBlockSize;
  return s;
}

}  // namespace netblk::nbd::server_detail
