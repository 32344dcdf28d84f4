// Fuzzes the NBD export server with hostile bytes from a client: the handshake (client
// flags, options) and then transmission requests, over a socketpair to a real Server on an
// in-memory node. The server must answer or disconnect, never crash or hang.
#include <asio/local/connect_pair.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/read.hpp>
#include <asio/write.hpp>
#include <cstring>
#include <vector>

#include "exports/nbd/server.hpp"
#include "netblk/node.hpp"

namespace {

class MemoryNode final : public netblk::Node {
 public:
  explicit MemoryNode(netblk::Executor ex) : Node(std::move(ex)), data_(1 << 20) {
    size_ = data_.size();
    caps_.can_flush = true;
    caps_.can_zero = true;
    caps_.can_discard = true;
    caps_.has_block_status = true;
    caps_.can_multi_conn = true;
  }
  std::string_view driver() const override { return "memory"; }
  netblk::Json options() const override { return {{"driver", "memory"}}; }

 protected:
  netblk::Task<void> co_read(std::uint64_t offset, std::span<std::byte> buf) override {
    std::memcpy(buf.data(), data_.data() + offset, buf.size());
    co_return;
  }
  netblk::Task<void> co_write(std::uint64_t offset, std::span<const std::byte> buf, unsigned) override {
    std::memcpy(data_.data() + offset, buf.data(), buf.size());
    co_return;
  }
  netblk::Task<netblk::BlockStatus> co_block_status(std::uint64_t offset, std::uint64_t length) override {
    // Alternating 64 KiB data / zero regions.
    std::uint64_t region = 64 << 10;
    std::uint64_t len = std::min(length, region - offset % region);
    unsigned flags = (offset / region) % 2 ? netblk::kStatusZero : (netblk::kStatusData | netblk::kStatusAllocated);
    co_return netblk::BlockStatus{len, flags};
  }

 private:
  std::vector<std::byte> data_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  asio::io_context ctx;
  MemoryNode node(ctx.get_executor());
  netblk::nbd::ExportConfig config;
  config.name = "";
  config.max_clients = 0;
  config.persistent = false;
  config.handshake_limit = std::chrono::milliseconds(2000);
  config.stop_grace = std::chrono::milliseconds(0);
  netblk::nbd::Server server(ctx.get_executor(), node, config);

  asio::local::stream_protocol::socket server_side(ctx), client_side(ctx);
  asio::local::connect_pair(server_side, client_side);
  server.adopt(asio::generic::stream_protocol::socket(std::move(server_side)));

  std::vector<std::byte> input(reinterpret_cast<const std::byte*>(data), reinterpret_cast<const std::byte*>(data) + size);
  std::vector<std::byte> sink(1 << 16);
  // Write the whole input, then half-close; read replies until the server closes.
  asio::async_write(client_side, asio::buffer(input), [&](std::error_code, std::size_t) {
    std::error_code ec;
    client_side.shutdown(asio::socket_base::shutdown_send, ec);
  });
  std::function<void()> read_more = [&] {
    client_side.async_read_some(asio::buffer(sink), [&](std::error_code ec, std::size_t) {
      if (!ec) read_more();
    });
  };
  read_more();
  ctx.run();
  return 0;
}
