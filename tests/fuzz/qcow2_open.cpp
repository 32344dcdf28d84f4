// Opens and reads a qcow2 image made of untrusted bytes (an in-memory file child): a
// crafted header, L1 size, refcount offset, L2 or compressed entry must be an Error, never
// an out-of-bounds access, a hang or a huge allocation.
#include <cstring>

#include "block/driver.hpp"
#include "formats/qcow2/qcow2.hpp"

namespace {

using namespace netblk;

class MemNode final : public Node {
 public:
  MemNode(Executor ex, const std::uint8_t* data, std::size_t size) : Node(std::move(ex)), data_(data, data + size) {
    size_ = size;
    caps_.read_only = true;
  }
  std::string_view driver() const override { return "file"; }
  Json options() const override { return Json{{"driver", "file"}, {"filename", "fuzz.qcow2"}}; }
  std::string plain_filename() const override { return "fuzz.qcow2"; }

 protected:
  Task<void> co_read(std::uint64_t offset, std::span<std::byte> buf) override {
    std::memcpy(buf.data(), data_.data() + offset, buf.size());
    co_return;
  }

 private:
  std::vector<std::uint8_t> data_;
};

Task<void> exercise(const std::uint8_t* data, std::size_t size) {
  Executor ex = co_await asio::this_coro::executor;
  OpenContext ctx;
  ctx.executor = ex;
  ctx.read_only = true;
  auto file = std::make_unique<MemNode>(ex, data, size);
  Json opts = Json::object();
  opts["backing"] = "";  // never open files named by the input
  spec::Options o(opts, spec::Options::Kind::format, "qcow2");
  std::unique_ptr<Node> node;
  try {
    node = co_await find_format("qcow2")->open(ctx, o, std::move(file), false);
  } catch (const Error&) {
    co_return;
  }
  std::vector<std::byte> buf(256 * 1024);
  const std::uint64_t vsize = node->size();
  for (std::uint64_t off : {std::uint64_t{0}, std::uint64_t{65536 - 100}, vsize / 2, vsize > 4096 ? vsize - 4096 : 0}) {
    if (off >= vsize) continue;
    std::uint64_t n = std::min<std::uint64_t>(buf.size(), vsize - off);
    try {
      co_await node->read(off, std::span<std::byte>(buf.data(), n));
      (void)co_await node->block_status(off, n);
    } catch (const Error&) {
    }
  }
  try {
    if (node->supports_check()) (void)co_await node->check(0);
  } catch (const Error&) {
  }
  try {
    co_await node->close();
  } catch (const Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  run_sync<void>([&]() { return exercise(data, size); });
  return 0;
}
