#include "protocols/nbd/nbd_connection.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <asio/connect.hpp>
#include <asio/generic/stream_protocol.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/read.hpp>
#include <asio/write.hpp>
#include <cstring>

#include <fcntl.h>
#include <unistd.h>

#include "core/file_io.hpp"
#include "core/log.hpp"
#include "protocols/nbd/nbd_tls.hpp"

namespace netblk::nbd_client {
namespace {

using Clock = std::chrono::steady_clock;
using GenericSocket = asio::generic::stream_protocol::socket;

// Longest option reply payload accepted (replies are a few bytes; messages <= 4 KiB).
constexpr std::uint32_t kMaxOptionReply = 1u << 20;
// Longest block-status reply payload accepted (a 2^32-byte request at 4 KiB extents
// would be 8 MiB of descriptors; servers send far fewer).
constexpr std::uint64_t kMaxStatusPayload = 16u << 20;
// Longest error chunk: error, message length, message, offset.
constexpr std::uint64_t kMaxErrorPayload = 4 + 2 + nbd::kMaxStringLength + 8;

class SocketStream final : public Stream {
 public:
  explicit SocketStream(const Executor& ex) : socket_(ex) {}
  GenericSocket& socket() { return socket_; }

  Task<std::size_t> read_some(std::span<std::byte> buf) override {
    co_return co_await socket_.async_read_some(asio::buffer(buf.data(), buf.size()), asio::use_awaitable);
  }
  Task<void> write(const std::vector<asio::const_buffer>& buffers) override {
    co_await asio::async_write(socket_, buffers, asio::use_awaitable);
  }
  void close() override {
    std::error_code ec;
    socket_.shutdown(asio::socket_base::shutdown_both, ec);
    socket_.close(ec);
  }
  int native_handle() override { return socket_.is_open() ? socket_.native_handle() : -1; }
  int plain_socket() override { return native_handle(); }
  Task<void> wait_ready(bool write) override {
    co_await socket_.async_wait(write ? GenericSocket::wait_write : GenericSocket::wait_read, asio::use_awaitable);
  }

 private:
  GenericSocket socket_;
};

int pwrite_zeroes(int fd, std::uint64_t n, std::uint64_t offset) {
  static const std::array<std::byte, 64 * 1024> zeroes{};
  while (n) {
    const std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(n, zeroes.size()));
    if (int e = pwrite_fully(fd, zeroes.data(), k, offset)) return e;
    offset += k;
    n -= k;
  }
  return 0;
}

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

Task<std::shared_ptr<Stream>> connect_stream(const NbdAddress& address, Clock::time_point deadline,
                                             const std::string& name) {
  Executor ex = co_await asio::this_coro::executor;
  auto stream = std::make_shared<SocketStream>(ex);
  auto resolver = std::make_shared<asio::ip::tcp::resolver>(ex);
  auto expired = std::make_shared<bool>(false);
  asio::steady_timer timer(ex, deadline);
  timer.async_wait([stream, resolver, expired](std::error_code ec) {
    if (ec || *expired) return;
    *expired = true;
    resolver->cancel();
    stream->close();
  });
  struct Cancel {
    asio::steady_timer& t;
    std::shared_ptr<bool> done;
    ~Cancel() {
      *done = true;  // a timer that already fired must not close the new socket
      t.cancel();
    }
  } cancel{timer, expired};

  std::string where;
  std::error_code last = asio::error::host_not_found;
  if (address.type == NbdAddress::Type::unix_socket) {
    where = address.path;
    asio::local::stream_protocol::endpoint ep(address.path);
    stream->socket().open(asio::generic::stream_protocol(AF_UNIX, SOCK_STREAM));
    asio::generic::stream_protocol::endpoint gep(ep);
    std::error_code ec;
    co_await stream->socket().async_connect(gep, asio::redirect_error(asio::use_awaitable, ec));
    last = ec;
  } else {
    where = (address.host.find(':') != std::string::npos ? "[" + address.host + "]" : address.host) + ":" + address.port;
    std::error_code rec;
    auto results =
        co_await resolver->async_resolve(address.host, address.port, asio::redirect_error(asio::use_awaitable, rec));
    if (rec) {
      if (*expired) throw Error(ETIMEDOUT, name + ": connecting to " + where + " timed out");
      throw Error(EHOSTUNREACH, name + ": address resolution failed for " + where + ": " + rec.message());
    }
    for (const auto& entry : results) {
      auto ep = entry.endpoint();
      if ((address.ipv4_only && !ep.address().is_v4()) || (address.ipv6_only && !ep.address().is_v6())) continue;
      if (*expired) break;
      std::error_code ignored;
      stream->socket().close(ignored);
      asio::generic::stream_protocol::endpoint gep(ep);
      stream->socket().open(gep.protocol(), ignored);
      if (ignored) {
        last = ignored;
        continue;
      }
      std::error_code ec;
      co_await stream->socket().async_connect(gep, asio::redirect_error(asio::use_awaitable, ec));
      last = ec;
      if (!ec) break;
    }
    if (!last) {
      int one = 1;
      setsockopt(stream->socket().native_handle(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
  }
  if (*expired) throw Error(ETIMEDOUT, name + ": connecting to " + where + " timed out");
  if (last) {
    int err = last.category() == std::system_category() ? last.value() : ECONNREFUSED;
    throw Error(err, name + ": Failed to connect to '" + where + "': " + std::strerror(err));
  }
  co_return stream;
}

Task<void> StreamReader::read_exact(std::span<std::byte> out) {
  std::size_t done = std::min(out.size(), end_ - pos_);
  if (done) {
    std::memcpy(out.data(), buf_.data() + pos_, done);
    pos_ += done;
  }
  while (done < out.size()) {
    const std::size_t want = out.size() - done;
    if (want >= buf_.size() / 2) {
      // Large payloads go straight to their destination.
      done += co_await stream_->read_some(out.subspan(done));
      continue;
    }
    pos_ = 0;
    const std::size_t fill = readahead_limit_ ? std::min(buf_.size(), std::max(want, readahead_limit_)) : buf_.size();
    end_ = co_await stream_->read_some(std::span(buf_).first(fill));
    std::size_t n = std::min(want, end_);
    std::memcpy(out.data() + done, buf_.data(), n);
    pos_ = n;
    done += n;
  }
}

Task<void> StreamReader::skip(std::uint64_t n) {
  std::array<std::byte, 4096> sink;
  while (n) {
    std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(n, sink.size()));
    co_await read_exact(std::span<std::byte>(sink.data(), k));
    n -= k;
  }
}

Task<int> StreamReader::read_to_file(int fd, std::uint64_t fd_offset, std::uint64_t n) {
  int error = 0;
  const auto keep = [&](int e) {
    if (!error) error = e;
  };
  const int socket = splice_works_ ? stream_->plain_socket() : -1;
  if (socket < 0) {
    while (n) {
      if (pos_ == end_) {
        pos_ = 0;
        end_ = co_await stream_->read_some(std::span(buf_).first(std::min<std::uint64_t>(n, buf_.size())));
      }
      const std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(n, end_ - pos_));
      if (!error) keep(pwrite_fully(fd, buf_.data() + pos_, k, fd_offset));
      pos_ += k;
      fd_offset += k;
      n -= k;
    }
    co_return error;
  }
  if (!pipe_) pipe_ = PayloadPipe::open();
  PayloadPipe& pipe = *pipe_;
  // The pipe's bytes go to the file at fd_offset; `n` more are to come after them.
  const auto drain = [&] {
    const std::size_t k = pipe.held;
    keep(pipe.drain_to(fd, fd_offset));
    if (pipe.broken()) {
      pipe_.reset();
      throw std::system_error(EIO, std::generic_category(), "emptying a pipe");
    }
    fd_offset += k;
  };
  while (n && pos_ < end_) {
    if (pipe.held >= pipe.room()) drain();
    const std::size_t k = std::min({static_cast<std::size_t>(n), end_ - pos_, pipe.room() - pipe.held});
    const ssize_t w = ::write(pipe.write_end(), buf_.data() + pos_, k);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) throw std::system_error(w < 0 ? errno : EIO, std::generic_category(), "writing to a pipe");
    pos_ += static_cast<std::size_t>(w);
    pipe.held += static_cast<std::size_t>(w);
    n -= static_cast<std::uint64_t>(w);
  }
  while (n) {
    if (pipe.held >= pipe.room()) drain();
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(n, pipe.room() - pipe.held));
    const ssize_t got =
        ::splice(socket, nullptr, pipe.write_end(), nullptr, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (got > 0) {
      pipe.held += static_cast<std::size_t>(got);
      n -= static_cast<std::uint64_t>(got);
      continue;
    }
    if (got == 0) throw std::system_error(asio::error::eof);
    if (errno == EINTR) continue;
    if (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP) {
      // A socket that takes no splice: the rest goes through the buffer, as later reads do.
      splice_works_ = false;
      drain();
      keep(co_await read_to_file(fd, fd_offset, n));
      co_return error;
    }
    if (errno != EAGAIN) throw std::system_error(errno, std::generic_category(), "splice");
    // EAGAIN: the socket is empty (empty the pipe meanwhile), or the pipe is full (its
    // pages only partly used).
    if (pipe.held) {
      drain();
      continue;
    }
    co_await stream_->wait_ready(false);
  }
  drain();
  co_return error;
}

bool StreamReader::reset_stream(std::shared_ptr<Stream> stream) {
  if (pos_ != end_) return false;
  stream_ = std::move(stream);
  return true;
}

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

// ---------------------------------------------------------------------------------------
// Transmission

Connection::Connection(Executor ex, std::shared_ptr<Stream> stream, std::unique_ptr<StreamReader> reader,
                       ExportInfo info, std::string name, std::chrono::seconds io_timeout)
    : ex_(std::move(ex)),
      stream_(std::move(stream)),
      reader_(std::move(reader)),
      info_(info),
      name_(std::move(name)),
      io_timeout_(io_timeout),
      send_ready_(ex_),
      watchdog_(ex_),
      last_activity_(Clock::now()) {}

Connection::~Connection() {
  if (stream_) stream_->close();
}

void Connection::start() {
  auto self = shared_from_this();
  auto ignore = [self](std::exception_ptr) {};
  asio::co_spawn(ex_, [self]() { return self->reader_loop(); }, ignore);
  asio::co_spawn(ex_, [self]() { return self->writer_loop(); }, ignore);
  asio::co_spawn(ex_, [self]() { return self->watchdog_loop(); }, ignore);
}

void Connection::protocol_error(const std::string& what) const {
  throw Error(EPROTO, name_ + ": NBD protocol error: " + what);
}

void Connection::submit(Pending& p) {
  p.reset();
  if (!alive_) {
    p.lost = true;
    p.message = "the connection was closed";
    p.done.set();
    return;
  }
  if (pending_.empty()) last_activity_ = Clock::now();
  p.request.cookie = next_cookie_++;
  p.header_size = nbd::encode_request(p.header, p.request, info_.extended);
  pending_.emplace(p.request.cookie, &p);
  if (p.read_fd >= 0) ++file_reads_;
  p.queued = true;
  send_queue_.push_back(&p);
  if (send_queue_.size() == 1) send_ready_.notify_all();
}

void Connection::finish(Pending& p) {
  p.replied = true;
  // A payload still being sent must not be released before the write is done.
  if (!p.queued) p.done.set();
}

void Connection::fail_all(const std::string& why, bool fatal) {
  // First what is being written: after this no pointer to a request is kept that its
  // owner could free once it is told.
  release_written();
  if (!alive_ && pending_.empty()) return;
  alive_ = false;
  stream_->close();
  watchdog_.cancel();
  send_ready_.notify_all();
  auto pending = std::move(pending_);
  pending_.clear();
  file_reads_ = 0;
  send_queue_.clear();
  for (auto& [cookie, p] : pending) {
    p->queued = false;
    if (fatal) {
      p->error = EIO;
      p->message = why;
    } else {
      p->lost = true;
      p->message = why;
    }
    p->done.set();
  }
  if (!notified_) {
    notified_ = true;
    if (on_dead) on_dead(why);
  }
}

void Connection::shutdown(const std::string& why) {
  notified_ = true;  // the owner asked: no callback
  fail_all(why, false);
}

Task<void> Connection::disconnect() {
  if (!alive_) co_return;
  if (pending_.empty()) {
    nbd::Request r;
    r.type = nbd::kCmdDisc;
    std::array<std::byte, nbd::kExtendedRequestSize> raw;
    std::size_t n = nbd::encode_request(raw, r, info_.extended);
    std::vector<asio::const_buffer> buffers{asio::buffer(raw.data(), n)};
    try {
      if (send_queue_.empty()) co_await stream_->write(buffers);
    } catch (const std::exception&) {
      // The server is gone already; nothing to say goodbye to.
    }
  }
  shutdown("connection closed");
}

Task<void> Connection::writer_loop() {
  auto self = shared_from_this();
  std::vector<asio::const_buffer> buffers;
  try {
    while (alive_) {
      if (send_queue_.empty()) {
        co_await send_ready_.wait();
        continue;
      }
      // Gather what is queued into one write: headers and payloads, bounded.
      buffers.clear();
      writing_.clear();
      std::size_t bytes = 0;
      std::size_t n = 0;
      for (; n < send_queue_.size() && n < 64 && bytes < (8u << 20); ++n) {
        Pending* p = send_queue_[n];
        buffers.emplace_back(p->header.data(), p->header_size);
        bytes += p->header_size;
        if (!p->write_data.empty()) {
          buffers.emplace_back(p->write_data.data(), p->write_data.size());
          bytes += p->write_data.size();
        }
        writing_.push_back(p);
      }
      send_queue_.erase(send_queue_.begin(), send_queue_.begin() + static_cast<std::ptrdiff_t>(n));
      co_await stream_->write(buffers);
      last_activity_ = Clock::now();
      release_written();
    }
  } catch (const std::exception& e) {
    fail_all(std::string("sending failed: ") + e.what(), false);
  }
}

void Connection::release_written() {
  // Requests answered while their payload was still going out may complete now.
  for (Pending* p : writing_) {
    p->queued = false;
    if (p->replied) p->done.set();
  }
  writing_.clear();
}

Task<void> Connection::watchdog_loop() {
  auto self = shared_from_this();
  const auto tick = std::max<Clock::duration>(std::chrono::milliseconds(250), io_timeout_ / 4);
  while (alive_) {
    watchdog_.expires_after(tick);
    std::error_code ec;
    co_await watchdog_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (!alive_) break;
    if (!pending_.empty() && Clock::now() - last_activity_ > io_timeout_) {
      NETBLK_LOG(warn, "{}: no answer from the server for {} s; reconnecting", name_, io_timeout_.count());
      fail_all("the server stopped answering", false);
    }
  }
}

Task<void> Connection::read_to_file(Pending& p, std::uint64_t at, std::uint64_t n) {
  failed_file_write(p, co_await reader_->read_to_file(p.read_fd, p.read_fd_offset + at, n));
}

void Connection::failed_file_write(Pending& p, int error) {
  if (!error || p.error) return;
  p.error = error;
  p.file_write_failed = true;
  p.message = std::string("writing the data to its file failed: ") + std::strerror(error);
}

Task<void> Connection::read_chunk(Pending& p, const nbd::ReplyHeader& h) {
  const std::uint16_t cmd = p.request.type;
  const std::uint64_t req_end = p.request.offset + p.request.length;
  switch (h.type) {
    case nbd::kReplyTypeNone:
      if (h.length != 0) protocol_error("NONE chunk with a payload");
      if (!(h.flags & nbd::kReplyFlagDone)) protocol_error("NONE chunk without the DONE flag");
      co_return;
    case nbd::kReplyTypeOffsetData: {
      if (cmd != nbd::kCmdRead) protocol_error("data chunk in reply to " + nbd::command_name(cmd));
      if (h.length < nbd::kOffsetDataPrefixSize) protocol_error("data chunk too short");
      std::array<std::byte, nbd::kOffsetDataPrefixSize> raw;
      co_await reader_->read_exact(raw);
      const std::uint64_t offset = netblk::load_be64(raw.data());
      const std::uint64_t n = h.length - nbd::kOffsetDataPrefixSize;
      if (offset < p.request.offset || offset > req_end || n > req_end - offset)
        protocol_error("data chunk outside the request");
      if (p.read_fd >= 0) {
        co_await read_to_file(p, offset - p.request.offset, n);
      } else {
        co_await reader_->read_exact(p.read_buf.subspan(offset - p.request.offset, n));
      }
      co_return;
    }
    case nbd::kReplyTypeOffsetHole: {
      if (cmd != nbd::kCmdRead) protocol_error("hole chunk in reply to " + nbd::command_name(cmd));
      if (h.length != nbd::kOffsetHoleSize) protocol_error("hole chunk of the wrong size");
      std::array<std::byte, nbd::kOffsetHoleSize> raw;
      co_await reader_->read_exact(raw);
      nbd::OffsetHole hole = nbd::decode_offset_hole(raw);
      if (hole.offset < p.request.offset || hole.offset > req_end || hole.length > req_end - hole.offset)
        protocol_error("hole chunk outside the request");
      if (p.read_fd >= 0) {
        failed_file_write(p, pwrite_zeroes(p.read_fd, hole.length, p.read_fd_offset + (hole.offset - p.request.offset)));
      } else {
        std::memset(p.read_buf.data() + (hole.offset - p.request.offset), 0, hole.length);
      }
      co_return;
    }
    case nbd::kReplyTypeBlockStatus:
    case nbd::kReplyTypeBlockStatusExt: {
      if (cmd != nbd::kCmdBlockStatus) protocol_error("block status chunk in reply to " + nbd::command_name(cmd));
      if (h.length > kMaxStatusPayload) protocol_error("block status chunk too long");
      std::vector<std::byte> payload(h.length);
      co_await reader_->read_exact(payload);
      nbd::BlockStatusChunk chunk = nbd::decode_block_status(payload, h.type);
      if (info_.base_allocation && chunk.context_id == *info_.base_allocation && p.extents.empty())
        p.extents = std::move(chunk.extents);
      co_return;
    }
    default:
      break;
  }
  if (!nbd::is_error_chunk(h.type)) protocol_error("unknown chunk type " + std::to_string(h.type));
  if (h.length > kMaxErrorPayload) protocol_error("error chunk too long");
  std::vector<std::byte> payload(h.length);
  co_await reader_->read_exact(payload);
  std::uint32_t nbd_error = nbd::kEio;
  std::string message;
  if (h.type == nbd::kReplyTypeError || h.type == nbd::kReplyTypeErrorOffset) {
    nbd::ErrorChunk e = nbd::decode_error_chunk(payload, h.type);
    nbd_error = e.error;
    message = e.message;
  } else if (payload.size() >= 4) {
    nbd_error = netblk::load_be32(payload.data());  // an error type we do not know: keep its errno
  }
  if (nbd_error == 0) protocol_error("error chunk without an error");
  if (!p.error) {
    p.error = nbd::nbd_to_errno(nbd_error);
    p.message = message;
  }
}

Task<void> Connection::reader_loop() {
  auto self = shared_from_this();
  std::array<std::byte, nbd::kMaxReplyHeaderSize> raw;
  // A reply's header and a data chunk's offset: what to read before a payload for a file.
  const std::size_t header_bytes =
      info_.extended ? nbd::kExtendedReplySize + nbd::kOffsetDataPrefixSize
                     : (info_.structured ? nbd::kStructuredReplySize + nbd::kOffsetDataPrefixSize : nbd::kSimpleReplySize);
  try {
    while (alive_) {
      reader_->limit_readahead(file_reads_ ? header_bytes : 0);
      co_await reader_->read_exact(std::span<std::byte>(raw.data(), 4));
      const std::size_t size = nbd::reply_header_size(netblk::load_be32(raw.data()));
      if (size == 0) protocol_error("invalid reply magic");
      co_await reader_->read_exact(std::span<std::byte>(raw.data() + 4, size - 4));
      const nbd::ReplyHeader h = nbd::decode_reply_header(std::span<const std::byte>(raw.data(), size));
      last_activity_ = Clock::now();
      auto it = pending_.find(h.cookie);
      if (it == pending_.end()) protocol_error("reply for an unknown cookie " + std::to_string(h.cookie));
      Pending& p = *it->second;
      bool last = true;
      if (h.kind == nbd::ReplyKind::simple) {
        if (info_.extended) protocol_error("simple reply after extended headers were negotiated");
        if (h.error) {
          p.error = nbd::nbd_to_errno(h.error);
        } else if (p.request.type == nbd::kCmdRead && p.read_fd >= 0) {
          co_await read_to_file(p, 0, p.request.length);
        } else if (p.request.type == nbd::kCmdRead) {
          co_await reader_->read_exact(p.read_buf);
        }
      } else {
        if (!info_.structured) protocol_error("structured reply that was not negotiated");
        if ((h.kind == nbd::ReplyKind::extended) != info_.extended) protocol_error("reply header of the wrong kind");
        co_await read_chunk(p, h);
        last = h.flags & nbd::kReplyFlagDone;
      }
      if (last) {
        pending_.erase(h.cookie);
        if (p.read_fd >= 0) --file_reads_;
        finish(p);
      }
    }
  } catch (const Error& e) {
    fail_all(e.what(), e.code() == EPROTO);
  } catch (const std::system_error& e) {
    const bool eof = e.code() == asio::error::eof;
    fail_all(eof ? "the server closed the connection" : std::string("receiving failed: ") + e.code().message(), false);
  } catch (const std::exception& e) {
    fail_all(std::string("receiving failed: ") + e.what(), false);
  }
}

}  // namespace netblk::nbd_client
