// The NBD client facing a hostile server: the input is everything the server sends —
// greeting, option replies, then transmission replies to a read, a block status, a write
// and a flush that the client has in flight. The client must end every request (with
// data, an error or a lost connection) without crashing, hanging or over-reading.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <system_error>

#include "protocols/nbd/nbd_connection.hpp"

using namespace netblk;
using namespace netblk::nbd_client;

namespace {

// Serves the fuzz input as the server's bytes; what the client writes is dropped.
class MemoryStream final : public Stream {
 public:
  MemoryStream(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  Task<std::size_t> read_some(std::span<std::byte> buf) override {
    if (closed_ || pos_ >= size_) throw std::system_error(asio::error::eof);
    // Short reads exercise the buffering as a real socket would.
    std::size_t n = std::min({buf.size(), size_ - pos_, std::size_t{1} + (pos_ * 7919) % 4096});
    std::memcpy(buf.data(), data_ + pos_, n);
    pos_ += n;
    co_return n;
  }
  Task<void> write(const std::vector<asio::const_buffer>&) override {
    if (closed_) throw std::system_error(asio::error::broken_pipe);
    co_return;
  }
  void close() override { closed_ = true; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
  bool closed_ = false;
};

Task<void> session(const std::uint8_t* data, std::size_t size) {
  Executor ex = co_await asio::this_coro::executor;
  std::shared_ptr<Stream> stream = std::make_shared<MemoryStream>(data, size);
  auto reader = std::make_unique<StreamReader>(stream);
  NbdConfig config;
  config.export_name = "x";
  ExportInfo info;
  try {
    info = co_await handshake(*reader, stream, config, "fuzz");
  } catch (const Error&) {
    co_return;
  } catch (const std::system_error&) {
    co_return;
  }
  auto conn = std::make_shared<Connection>(ex, stream, std::move(reader), info, "fuzz", std::chrono::seconds(60));
  conn->start();

  std::vector<std::byte> read_buf(4096), write_buf(512, std::byte{1});
  Pending read(ex), status(ex), write(ex), flush(ex);
  read.request.type = nbd::kCmdRead;
  read.request.offset = 4096;
  read.request.length = read_buf.size();
  read.read_buf = read_buf;
  status.request.type = nbd::kCmdBlockStatus;
  status.request.length = 1 << 20;
  write.request.type = nbd::kCmdWrite;
  write.request.length = write_buf.size();
  write.write_data = write_buf;
  flush.request.type = nbd::kCmdFlush;
  for (Pending* p : {&read, &status, &write, &flush}) conn->submit(*p);
  for (Pending* p : {&read, &status, &write, &flush}) co_await p->done.wait();
  conn->shutdown("done");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  run_sync<void>([&]() { return session(data, size); });
  return 0;
}
