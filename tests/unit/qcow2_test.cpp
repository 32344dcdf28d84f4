// qcow2 metadata logic: header parsing and validation, refcount entry widths, compressed
// descriptors, compression round trips, and the node's allocation under concurrency
// (checked by its own `check`).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <random>

#include "formats/qcow2/compress.hpp"
#include "formats/qcow2/header.hpp"
#include "formats/qcow2/pull.hpp"
#include "formats/qcow2/qcow2.hpp"
#include "netblk/open.hpp"

using namespace netblk;
using namespace netblk::qcow2;

namespace {

std::vector<std::byte> valid_image_head(Header h = {}) {
  h.version = 3;
  h.cluster_bits = 16;
  h.size = 1u << 20;
  h.l1_size = 1;
  h.l1_table_offset = 3u << 16;
  h.refcount_table_offset = 1u << 16;
  h.refcount_table_clusters = 1;
  return build_header(h);
}

constexpr std::uint64_t kFileSize = 4u << 16;

int error_code(const std::function<void()>& f, std::string* message = nullptr) {
  try {
    f();
  } catch (const Error& e) {
    if (message) *message = e.what();
    return e.code();
  }
  return 0;
}

TEST(Qcow2Header, RoundTrip) {
  Header h;
  h.backing_file = "json:{\"driver\":\"raw\"}";
  h.backing_format = "raw";
  h.compatible = kCompatLazyRefcounts;
  auto bytes = valid_image_head(h);
  Header p = parse_header(bytes, kFileSize, "img");
  EXPECT_EQ(p.version, 3u);
  EXPECT_EQ(p.cluster_size(), 65536u);
  EXPECT_EQ(p.backing_file, h.backing_file);
  EXPECT_EQ(p.backing_format, "raw");
  EXPECT_EQ(p.compatible, kCompatLazyRefcounts);
  EXPECT_EQ(p.header_length, 112u);
  EXPECT_FALSE(p.features.empty());
}

TEST(Qcow2Header, RejectsMalformed) {
  auto head = valid_image_head();
  std::string msg;
  auto parse = [&](std::vector<std::byte> b, std::uint64_t fsz = kFileSize) {
    return error_code([&] { parse_header(b, fsz, "img"); }, &msg);
  };
  auto b = head;
  b[0] = std::byte{0};
  EXPECT_EQ(parse(b), EINVAL);
  b = head;
  store_be32(b.data() + 4, 4);
  EXPECT_EQ(parse(b), ENOTSUP);
  EXPECT_NE(msg.find("Unsupported qcow2 version 4"), std::string::npos);
  for (std::uint32_t bits : {8u, 22u, 63u}) {
    b = head;
    store_be32(b.data() + 20, bits);
    EXPECT_EQ(parse(b), EINVAL) << bits;
  }
  b = head;
  store_be32(b.data() + 36, (32u << 20) / 8 + 1);  // L1 larger than QEMU's limit
  EXPECT_EQ(parse(b), EFBIG);
  b = head;
  store_be32(b.data() + 56, 1000);  // refcount table beyond the file and the limit
  EXPECT_NE(parse(b), 0);
  b = head;
  store_be64(b.data() + 40, 7u << 16);  // L1 beyond the end of the file
  EXPECT_EQ(parse(b), EINVAL);
  b = head;
  store_be64(b.data() + 40, 100);  // unaligned L1
  EXPECT_EQ(parse(b), EINVAL);
  b = head;
  store_be32(b.data() + 36, 0);  // L1 too small for the size
  EXPECT_EQ(parse(b), EINVAL);
  b = head;
  store_be64(b.data() + 24, ~std::uint64_t{0});
  EXPECT_NE(parse(b), 0);
  b = head;
  store_be32(b.data() + 32, 1);  // AES encryption
  EXPECT_EQ(parse(b), ENOTSUP);
  EXPECT_NE(msg.find("encrypted"), std::string::npos);
  b = head;
  store_be64(b.data() + 72, kIncompatDataFile);
  EXPECT_EQ(parse(b), ENOTSUP);
  EXPECT_NE(msg.find("external data file"), std::string::npos);
  b = head;
  store_be64(b.data() + 72, 1u << 4);  // extended L2 needs clusters of 16 KiB or more
  store_be32(b.data() + 20, 12);
  EXPECT_NE(parse(b), 0);
  // A header extension whose length runs past the cluster.
  b = head;
  store_be32(b.data() + 112, 0x12345678);
  store_be32(b.data() + 116, 0xffffff00);
  EXPECT_EQ(parse(b), EINVAL);
  // Truncated input.
  EXPECT_NE(parse(std::vector<std::byte>(head.begin(), head.begin() + 80)), 0);
}

TEST(Qcow2Header, NamesUnknownIncompatibleFeatures) {
  auto b = valid_image_head();
  store_be64(b.data() + 72, 1u << 3 | 1u << 9);  // compression type (known) + bit 9
  std::string msg;
  EXPECT_EQ(error_code([&] { parse_header(b, kFileSize, "img"); }, &msg), ENOTSUP);
  EXPECT_NE(msg.find("Unknown incompatible feature: 0x200"), std::string::npos) << msg;
}

TEST(Qcow2Refcounts, EveryWidthKeepsItsNeighbours) {
  std::mt19937_64 rng(5);
  for (std::uint32_t order = 0; order <= 6; ++order) {
    const std::uint64_t bits = 1u << order;
    const std::uint64_t max = bits == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << bits) - 1;
    const std::size_t entries = 512 * 8 / bits;
    std::vector<std::byte> block(512, std::byte{0});
    std::vector<std::uint64_t> model(entries, 0);
    for (int i = 0; i < 5000; ++i) {
      std::size_t idx = rng() % entries;
      std::uint64_t v = rng() & max;
      set_refcount_entry(block.data(), idx, order, v);
      model[idx] = v;
    }
    for (std::size_t i = 0; i < entries; ++i) ASSERT_EQ(get_refcount_entry(block.data(), i, order), model[i]) << order;
  }
  // QEMU's layout: 16-bit entries are big-endian.
  std::vector<std::byte> block(512, std::byte{0});
  set_refcount_entry(block.data(), 1, 4, 0x0102);
  EXPECT_EQ(block[2], std::byte{1});
  EXPECT_EQ(block[3], std::byte{2});
}

TEST(Qcow2Compressed, DescriptorRoundTrip) {
  for (std::uint32_t cb = 9; cb <= 21; ++cb) {
    const std::uint64_t max_sectors = std::uint64_t{1} << (cb - 8);
    for (std::uint64_t sectors : {std::uint64_t{1}, max_sectors}) {
      std::uint64_t off = (std::uint64_t{1} << 40) + 512 * 3 + 17;
      std::uint64_t e = encode_compressed(off, sectors, cb);
      EXPECT_TRUE(e & kOflagCompressed);
      EXPECT_FALSE(e & kOflagCopied);
      CompressedDescriptor d = decode_compressed(e, cb);
      EXPECT_EQ(d.offset, off);
      EXPECT_EQ(d.sectors, sectors);
    }
  }
}

TEST(Qcow2Compressed, RoundTripAndGarbage) {
  std::vector<std::byte> in(65536);
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = static_cast<std::byte>((i * 7) % 13);
  for (int type : {kCompressionZlib, kCompressionZstd}) {
    std::vector<std::byte> out(in.size() - 1), back(in.size());
    auto n = compress(type, in, out);
    ASSERT_TRUE(n) << type;
    EXPECT_LT(*n, in.size());
    ASSERT_TRUE(decompress(type, std::span<const std::byte>(out.data(), *n), back));
    EXPECT_EQ(back, in);
    std::vector<std::byte> junk(100, std::byte{0x5a});
    EXPECT_FALSE(decompress(type, junk, back));
    EXPECT_FALSE(decompress(type, std::span<const std::byte>(out.data(), *n / 2), back));  // truncated
  }
  // Random data does not fit in less than a cluster.
  std::mt19937 rng(1);
  for (auto& b : in) b = static_cast<std::byte>(rng());
  std::vector<std::byte> small(in.size() / 2);
  EXPECT_FALSE(compress(kCompressionZlib, in, small));
}

// A temporary qcow2 image through the library, written concurrently.
struct TempImageDir {
  std::string dir, path;
  TempImageDir() {
    char tmpl[] = "/tmp/qcow2-unit-XXXXXX";
    dir = mkdtemp(tmpl);
    path = dir + "/t.qcow2";
  }
  ~TempImageDir() {
    std::string cmd = "rm -rf '" + dir + "'";
    if (std::system(cmd.c_str())) {
    }
  }
};

// A new 1 MiB qcow2 image made with `opts` in `img`, opened; `spec` is set to name it.
Task<std::unique_ptr<Node>> new_image(const TempImageDir& img, const std::string& opts, DriveSpec& spec) {
  co_await create_image("qcow2", img.path, opts, 1u << 20);
  spec.filename = img.path;
  spec.format = "qcow2";
  co_return co_await open_drive(spec);
}

Task<void> concurrent_writes(Node& node, std::vector<std::byte>& model, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::pair<std::uint64_t, std::vector<std::byte>>> writes;
  for (int i = 0; i < 64; ++i) {
    // Many writers aim at the same few unallocated clusters at once.
    std::uint64_t len = 1 + rng() % 20000;
    std::uint64_t off = (rng() % 6) * 65536 + rng() % 70000;
    off = std::min<std::uint64_t>(off, model.size() - len);
    // Non-overlapping writes only, so the final content does not depend on timing.
    bool overlaps = false;
    for (std::uint64_t k = off; k < off + len && !overlaps; ++k) overlaps = model[k] != std::byte{0};
    if (overlaps) continue;
    std::fill_n(model.begin() + static_cast<std::ptrdiff_t>(off), len, static_cast<std::byte>(i + 1));
    writes.emplace_back(off, std::vector<std::byte>(len, static_cast<std::byte>(i + 1)));
  }
  std::size_t next = 0;
  co_await run_concurrently(
      static_cast<unsigned>(writes.size()),
      [&]() -> Task<void> {
        const auto& [off, data] = writes[next++];
        co_await node.write(off, data);
      },
      [] {});
}

TEST(Qcow2Node, ConcurrentAllocationsNeverDoubleAllocate) {
  for (std::string opts : {"cluster_size=64k", "cluster_size=512,refcount_bits=1", "compat=0.10,cluster_size=4k",
                           "extended_l2=on,cluster_size=32k"}) {
    SCOPED_TRACE(opts);
    TempImageDir img;
    run_sync<void>([&]() -> Task<void> {
      DriveSpec spec;
      auto node = co_await new_image(img, opts, spec);
      std::vector<std::byte> model(1u << 20, std::byte{0});
      co_await concurrent_writes(*node, model, 3);
      // Zeroes and a discard over what was written, then a compressed cluster.
      co_await node->write_zeroes(65536, 65536, kZeroMayUnmap);
      std::fill(model.begin() + 65536, model.begin() + 131072, std::byte{0});
      co_await node->write_zeroes(200000, 3000, 0);
      std::fill(model.begin() + 200000, model.begin() + 203000, std::byte{0});
      std::vector<std::byte> same(65536, std::byte{0x33});
      if (node->image_info().cluster_size == 65536) {
        co_await node->write(5 * 65536, same, kWriteCompressed);
        std::copy(same.begin(), same.end(), model.begin() + 5 * 65536);
      }
      co_await node->flush();
      std::vector<std::byte> back(model.size());
      co_await node->read(0, back);
      EXPECT_TRUE(back == model);
      EXPECT_TRUE(node->supports_check());
      CheckResult r = co_await node->check(0);
      EXPECT_EQ(r.corruptions, 0);
      EXPECT_EQ(r.leaks, 0);
      for (const auto& m : r.messages) ADD_FAILURE() << m;
      co_await node->close();
      // Reopened: the same bytes.
      auto again = co_await open_drive(spec);
      co_await again->read(0, back);
      EXPECT_TRUE(back == model);
      co_await again->close();
    });
  }
}

// A checkpoint taken while writers, flushes and other checkpoints go on leaves the file,
// as a killed process would, holding every write that finished before it: a copy of the
// file opened on its own reads them back and is sound (leaks allowed).
TEST(Qcow2Node, CheckpointRecordsWhatWasWrittenWhileWritersGoOn) {
  for (std::string opts : {"cluster_size=64k", "cluster_size=4k,refcount_bits=2"}) {
    SCOPED_TRACE(opts);
    TempImageDir img;
    run_sync<void>([&]() -> Task<void> {
      DriveSpec spec;
      auto node = co_await new_image(img, opts, spec);
      Qcow2Node* q = qcow2_under(*node);
      EXPECT_NE(q, nullptr);
      std::vector<std::byte> model(1u << 20, std::byte{0});
      bool writing = true;
      int task = 0;
      co_await run_concurrently(
          3,
          [&]() -> Task<void> {
            const int me = task++;
            if (me == 0) {
              co_await concurrent_writes(*node, model, 7);
              writing = false;
            } else {
              while (writing) {
                if (me == 1) co_await q->checkpoint();
                else co_await node->flush();
              }
            }
          },
          [] {});
      co_await q->checkpoint();
      const std::string copy = img.dir + "/copy.qcow2";
      EXPECT_EQ(std::system(("cp '" + img.path + "' '" + copy + "'").c_str()), 0);
      DriveSpec copied = spec;
      copied.filename = copy;
      auto reopened = co_await open_drive(copied);
      std::vector<std::byte> back(model.size());
      co_await reopened->read(0, back);
      EXPECT_TRUE(back == model);
      CheckResult r = co_await reopened->check(0);
      EXPECT_EQ(r.corruptions, 0);
      co_await reopened->close();
      co_await node->close();
    });
  }
}


}  // namespace
