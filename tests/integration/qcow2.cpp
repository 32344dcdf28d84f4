// qcow2, differential against qemu-img and qemu-io: every image netblk writes passes
// `qemu-img check` and `qemu-img compare`; netblk reads what QEMU writes with each option;
// `info` agrees with qemu-img; `check` reports and repairs like qemu-img; backing chains
// with relative names; copy-on-read pulls a chain into the overlay.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "netblk/open.hpp"
#include "nginx.hpp"
#include "netblk_serve.hpp"
#include "servers.hpp"

using namespace netblk::test;
using nlohmann::json;

namespace {

RunResult nb(const std::vector<std::string>& args) { return netblk::test::netblk(args, std::chrono::seconds(300)); }

void must(const RunResult& r, const std::string& what) {
  ASSERT_EQ(r.exit_code, 0) << what << "\nstdout: " << r.out << "\nstderr: " << r.err;
}

// A raw image with random data, a hole, a run of written zeroes and an odd tail.
void make_source(const std::string& path, std::uint64_t size = 12u << 20) {
  write_pattern_file(path, size, 7);
  FILE* f = std::fopen(path.c_str(), "r+b");
  ASSERT_TRUE(f);
  std::string zeros(3u << 20, '\0');
  std::fseek(f, 4 << 20, SEEK_SET);
  std::fwrite(zeros.data(), 1, zeros.size(), f);
  std::fclose(f);
}

void qemu_check_clean(const std::string& image) {
  RunResult r = run({"qemu-img", "check", image});
  EXPECT_EQ(r.exit_code, 0) << image << "\n" << r.out << r.err;
}

void qemu_same(const std::string& a, const std::string& b) {
  RunResult r = run({"qemu-img", "compare", a, b});
  EXPECT_EQ(r.exit_code, 0) << a << " vs " << b << "\n" << r.out << r.err;
}

// Raw bytes of an image as qemu-img reads them.
std::uint64_t qemu_hash(TempDir& dir, const std::string& image, const std::string& name) {
  std::string out = dir / (name + ".qemu.raw");
  must(run({"qemu-img", "convert", "-m", "1", "-O", "raw", image, out}), "qemu-img convert " + image);
  return file_hash(out);
}

std::uint64_t netblk_hash(TempDir& dir, const std::string& image, const std::string& name) {
  std::string out = dir / (name + ".netblk.raw");
  must(nb({"convert", "-O", "raw", image, out}), "netblk convert " + image);
  return file_hash(out);
}

json info_json(const RunResult& r) { return json::parse(r.out); }

TEST(Qcow2, WrittenImagesPassQemuCheckAndCompare) {
  TempDir dir;
  std::string src = dir / "src.raw";
  make_source(src);
  const std::vector<std::vector<std::string>> variants = {
      {},
      {"-o", "cluster_size=512"},
      {"-o", "cluster_size=4k"},
      {"-o", "cluster_size=2M"},
      {"-o", "compat=0.10"},
      {"-o", "compat=v2,cluster_size=1k"},
      {"-o", "refcount_bits=1"},
      {"-o", "refcount_bits=2,cluster_size=1k"},
      {"-o", "refcount_bits=4"},
      {"-o", "refcount_bits=8"},
      {"-o", "refcount_bits=32"},
      {"-o", "refcount_bits=64,cluster_size=512"},
      {"-o", "lazy_refcounts=on"},
      {"-o", "extended_l2=on"},
      {"-o", "extended_l2=on,cluster_size=16k"},
      {"-o", "preallocation=metadata"},
      {"-o", "preallocation=metadata,compat=0.10,cluster_size=4k"},
      {"-c"},
      {"-c", "-o", "compression_type=zstd"},
      {"-c", "-o", "cluster_size=512"},
      {"-c", "-o", "compat=0.10,cluster_size=2M"},
  };
  int i = 0;
  for (const auto& v : variants) {
    std::string out = dir / ("out" + std::to_string(i++) + ".qcow2");
    std::vector<std::string> args = {"convert", "-O", "qcow2"};
    args.insert(args.end(), v.begin(), v.end());
    args.push_back(src);
    args.push_back(out);
    std::string label;
    for (const auto& a : v) label += a + " ";
    SCOPED_TRACE(label);
    must(nb(args), "netblk convert " + label);
    qemu_check_clean(out);
    qemu_same(src, out);
  }
}

TEST(Qcow2, RewritesAndZeroesOnQemuImages) {
  // netblk writing into images qemu-img made: partial clusters, compressed clusters
  // overwritten, zero clusters overwritten; the result checks clean and reads right.
  TempDir dir;
  std::string src = dir / "src.raw";
  make_source(src, 8u << 20);
  for (std::string opts : {"cluster_size=64k", "cluster_size=4k,refcount_bits=8", "compat=0.10",
                           "extended_l2=on,cluster_size=32k", "compression_type=zstd"}) {
    SCOPED_TRACE(opts);
    std::string img = dir / "q.qcow2";
    std::remove(img.c_str());
    must(run({"qemu-img", "convert", "-c", "-O", "qcow2", "-o", opts, src, img}), "qemu-img convert -c");
    must(run({"qemu-io", "-c", "write -z 1M 256k", "-c", "write -P 0x5a 2M 3k", img}), "qemu-io");
    // netblk rewrites an unaligned range over compressed, zero and allocated clusters.
    std::string patch = dir / "patch.raw";
    write_pattern_file(patch, 8u << 20, 99);
    std::string raw_copy = dir / "expected.raw";
    must(run({"qemu-img", "convert", "-O", "raw", img, raw_copy}), "expected");
    must(nb({"convert", "-n", "-f", "raw", "-O", "qcow2", patch, img}), "netblk convert -n");
    qemu_check_clean(img);
    qemu_same(patch, img);
  }
}

TEST(Qcow2, ReadsWhatQemuWrites) {
  TempDir dir;
  std::string src = dir / "src.raw";
  make_source(src, 6u << 20);
  struct Case {
    std::string create_opts;
    bool compressed;
  };
  const std::vector<Case> cases = {
      {"cluster_size=64k", false},       {"cluster_size=512", false},       {"cluster_size=2M", false},
      {"compat=0.10", false},            {"refcount_bits=1", false},        {"refcount_bits=64", false},
      {"lazy_refcounts=on", false},      {"extended_l2=on", false},         {"extended_l2=on,cluster_size=16k", false},
      {"preallocation=metadata", false}, {"cluster_size=64k", true},        {"compression_type=zstd", true},
      {"cluster_size=512", true},        {"cluster_size=2M", true},         {"compat=0.10", true},
  };
  int i = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.create_opts + (c.compressed ? " -c" : ""));
    std::string img = dir / ("q" + std::to_string(i++) + ".qcow2");
    if (c.compressed) {
      must(run({"qemu-img", "convert", "-c", "-O", "qcow2", "-o", c.create_opts, src, img}), "qemu-img convert -c");
    } else {
      must(run({"qemu-img", "create", "-f", "qcow2", "-o", c.create_opts, img, "6M"}), "qemu-img create");
      // Data, zero clusters (write -z), partial subclusters, discards.
      must(run({"qemu-io", "-c", "write -P 0xab 0 64k", "-c", "write -z 1M 512k", "-c", "write -P 0xcd 1100k 3k",
                "-c", "write -P 0x11 3M 1M", "-c", "discard 3M 128k", "-c", "write -P 0x77 5M 4096", img}),
           "qemu-io");
    }
    EXPECT_EQ(netblk_hash(dir, img, "n"), qemu_hash(dir, img, "q"));
    RunResult cmp = nb({"compare", img, dir / "q.qemu.raw"});
    EXPECT_EQ(cmp.exit_code, 0) << cmp.out << cmp.err;
  }
}

TEST(Qcow2, InfoMatchesQemuImg) {
  TempDir dir;
  must(run({"qemu-img", "create", "-f", "raw", dir / "base.raw", "5M"}), "base");
  struct Case {
    std::vector<std::string> args;
  };
  const std::vector<std::vector<std::string>> cases = {
      {"-o", "cluster_size=4k", "SIZE"},
      {"-o", "compat=0.10", "SIZE"},
      {"-o", "compat=1.1,lazy_refcounts=on,refcount_bits=8", "SIZE"},
      {"-o", "compression_type=zstd,extended_l2=on", "SIZE"},
      {"-b", "base.raw", "-F", "raw"},
      {"-o", "backing_file=base.raw,backing_fmt=raw,cluster_size=2M", "3M"},
  };
  int i = 0;
  for (auto args : cases) {
    std::string img = dir / ("i" + std::to_string(i++) + ".qcow2");
    for (auto& a : args)
      if (a == "SIZE") a = "7M";
    std::vector<std::string> n = {"create", "-f", "qcow2"};
    n.insert(n.end(), args.begin(), args.end());
    n.insert(n.end() - (args.back() == "raw" ? 0 : 1), img);
    must(nb(n), "netblk create");
    json q = info_json(run({"qemu-img", "info", "--output=json", img}));
    json m = info_json(nb({"info", "--output=json", img}));
    for (const char* key : {"virtual-size", "format", "cluster-size", "backing-filename", "backing-filename-format",
                            "format-specific", "dirty-flag"})
      EXPECT_EQ(q.value(key, json()), m.value(key, json())) << img << " key " << key;
    qemu_check_clean(img);
  }
}

TEST(Qcow2, CreateRejectsLikeQemu) {
  TempDir dir;
  std::string img = dir / "x.qcow2";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"compat=0.10,lazy_refcounts=on", "Lazy refcounts only supported"},
      {"cluster_size=1000", "Cluster size must be a power of two"},
      {"compat=1.2", "does not accept value '1.2'"},
      {"refcount_bits=3", "Refcount width must be a power of two"},
      {"compression_type=lz4", "does not accept value 'lz4'"},
      {"cluster_size=4k,extended_l2=on", "at least 16384 bytes"},
      {"compat=0.10,refcount_bits=8", "Different refcount widths"},
      {"backing_fmt=raw", "Backing format cannot be used without backing file"},
      {"backing_file=x.raw", "Backing file specified without backing format"},
      {"foo=bar", "foo"},
  };
  for (const auto& [opts, msg] : cases) {
    RunResult r = nb({"create", "-f", "qcow2", "-o", opts, img, "1M"});
    EXPECT_NE(r.exit_code, 0) << opts;
    EXPECT_NE(r.err.find(msg), std::string::npos) << opts << ": " << r.err;
    EXPECT_NE(run({"qemu-img", "create", "-f", "qcow2", "-o", opts, img, "1M"}).exit_code, 0) << opts;
  }
}

TEST(Qcow2, BackingChainWithRelativeNames) {
  TempDir dir;
  ASSERT_EQ(mkdir((dir / "a").c_str(), 0755), 0);
  ASSERT_EQ(mkdir((dir / "a/b").c_str(), 0755), 0);
  write_pattern_file(dir / "base.raw", 4u << 20, 3);
  // a/mid.qcow2 -> ../base.raw ; a/b/top.qcow2 -> ../mid.qcow2 ; created from another cwd.
  must(nb({"create", "-f", "qcow2", "-b", "../base.raw", "-F", "raw", dir / "a/mid.qcow2"}), "mid");
  must(run({"qemu-io", "-c", "write -P 0x42 1M 100k", dir / "a/mid.qcow2"}), "mid write");
  must(nb({"create", "-f", "qcow2", "-b", "../mid.qcow2", "-F", "qcow2", dir / "a/b/top.qcow2"}), "top");
  must(run({"qemu-io", "-c", "write -P 0x43 2M 64k", dir / "a/b/top.qcow2"}), "top write");
  std::string top = dir / "a/b/top.qcow2";
  EXPECT_EQ(netblk_hash(dir, top, "top"), qemu_hash(dir, top, "top"));
  json q = json::parse(run({"qemu-img", "info", "--backing-chain", "--output=json", top}).out);
  json m = json::parse(nb({"info", "--backing-chain", "--output=json", top}).out);
  ASSERT_EQ(q.size(), 3u);
  ASSERT_EQ(m.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i)
    for (const char* key : {"virtual-size", "format", "backing-filename", "backing-filename-format"})
      EXPECT_EQ(q[i].value(key, json()), m[i].value(key, json())) << i << " " << key;
  // A write through netblk into the top of the chain: copy-on-write of partial clusters.
  std::string patch = dir / "patch.raw";
  write_pattern_file(patch, 4096 * 3, 5);
  must(nb({"convert", "-n", "-f", "raw", "-O", "qcow2", patch, top}), "write into top");
  qemu_check_clean(top);
  EXPECT_EQ(netblk_hash(dir, top, "top2"), qemu_hash(dir, top, "top2"));
  // The size defaults to the backing file's, and json: backing names work.
  std::string js = "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"" + dir / "base.raw" + "\"}}";
  must(nb({"create", "-f", "qcow2", "-b", js, "-F", "raw", dir / "j.qcow2"}), "json backing");
  json ji = json::parse(run({"qemu-img", "info", "--output=json", dir / "j.qcow2"}).out);
  EXPECT_EQ(ji["virtual-size"], 4u << 20);
  EXPECT_EQ(ji["backing-filename"], js);
  qemu_same(dir / "base.raw", dir / "j.qcow2");
  // Deep chains.
  std::string prev = "base.raw", prev_fmt = "raw";
  for (int i = 0; i < 20; ++i) {
    std::string name = "l" + std::to_string(i) + ".qcow2";
    must(nb({"create", "-f", "qcow2", "-b", prev, "-F", prev_fmt, dir / name}), name);
    prev = name;
    prev_fmt = "qcow2";
  }
  EXPECT_EQ(netblk_hash(dir, dir / prev, "deep"), file_hash(dir / "base.raw"));
}

// Sets the 16-bit refcount of `cluster` in the first refcount block.
void poke_refcount(const std::string& path, std::uint64_t cluster, std::uint16_t value) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  auto be64 = [&](std::uint64_t off) {
    unsigned char b[8];
    f.seekg(static_cast<std::streamoff>(off));
    f.read(reinterpret_cast<char*>(b), 8);
    std::uint64_t v = 0;
    for (auto c : b) v = (v << 8) | c;
    return v;
  };
  std::uint64_t reftable = be64(48);
  std::uint64_t block = be64(reftable);
  unsigned char v[2] = {static_cast<unsigned char>(value >> 8), static_cast<unsigned char>(value)};
  f.seekp(static_cast<std::streamoff>(block + 2 * cluster));
  f.write(reinterpret_cast<char*>(v), 2);
}

TEST(Qcow2, CheckReportsAndRepairsLikeQemu) {
  TempDir dir;
  std::string img = dir / "c.qcow2";
  must(run({"qemu-img", "create", "-f", "qcow2", img, "10M"}), "create");
  must(run({"qemu-io", "-c", "write -P 1 0 64k", "-c", "write -P 2 1M 64k", img}), "write");
  RunResult ok = nb({"check", img});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(ok.out, run({"qemu-img", "check", img}).out);
  EXPECT_EQ(json::parse(nb({"check", "--output=json", img}).out)["allocated-clusters"], 2);

  // Leaks: two clusters past the used ones get a refcount.
  must(run({"truncate", "-s", "1M", img}), "grow");
  poke_refcount(img, 10, 1);
  poke_refcount(img, 11, 1);
  RunResult q = run({"qemu-img", "check", img});
  RunResult n = nb({"check", img});
  EXPECT_EQ(q.exit_code, 3);
  EXPECT_EQ(n.exit_code, 3) << n.err;
  EXPECT_EQ(n.out, q.out);
  EXPECT_EQ(n.err, q.err);
  RunResult fixed = nb({"check", "-r", "leaks", img});
  EXPECT_EQ(fixed.exit_code, 0) << fixed.out << fixed.err;
  EXPECT_NE(fixed.out.find("2 leaked clusters\n    0 corruptions"), std::string::npos) << fixed.out;
  qemu_check_clean(img);

  // Corruption: a data cluster's refcount is 0.
  json map = json::parse(run({"qemu-img", "map", "--output=json", img}).out);
  std::uint64_t data_cluster = map[0]["offset"].get<std::uint64_t>() / 65536;
  poke_refcount(img, data_cluster, 0);
  q = run({"qemu-img", "check", img});
  n = nb({"check", img});
  EXPECT_EQ(q.exit_code, 2);
  EXPECT_EQ(n.exit_code, 2) << n.err;
  EXPECT_NE(n.err.find("ERROR cluster " + std::to_string(data_cluster) + " refcount=0 reference=1"), std::string::npos)
      << n.err;
  EXPECT_NE(n.out.find("errors were found on the image"), std::string::npos);
  EXPECT_EQ(nb({"check", "-r", "leaks", img}).exit_code, 2);
  RunResult all = nb({"check", "-r", "all", img});
  EXPECT_EQ(all.exit_code, 0) << all.out << all.err;
  qemu_check_clean(img);
  EXPECT_EQ(netblk_hash(dir, img, "c"), qemu_hash(dir, img, "c"));

  // Formats without checks.
  must(run({"qemu-img", "create", "-f", "raw", dir / "r.raw", "1M"}), "raw");
  EXPECT_EQ(nb({"check", "-f", "raw", dir / "r.raw"}).exit_code, 63);
}

TEST(Qcow2, UnsupportedFeaturesAreClearErrors) {
  TempDir dir;
  std::string enc = dir / "enc.qcow2";
  // The header's crypt_method (bytes 32-35) set to LUKS in a plain image: qemu-img's own
  // LUKS create calibrates its key derivation by CPU time and sometimes fails on a busy or
  // idle machine ("Unable to get accurate CPU usage"), so the test does not depend on it.
  must(run({"qemu-img", "create", "-f", "qcow2", enc, "1M"}), "plain qcow2");
  {
    FILE* f = std::fopen(enc.c_str(), "r+b");
    ASSERT_TRUE(f);
    const unsigned char luks[4] = {0, 0, 0, 2};
    std::fseek(f, 32, SEEK_SET);
    std::fwrite(luks, 1, 4, f);
    std::fclose(f);
  }
  RunResult r = nb({"info", enc});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("encrypted"), std::string::npos) << r.err;
  std::string ext = dir / "ext.qcow2";
  must(run({"qemu-img", "create", "-f", "qcow2", "-o", "data_file=" + dir / "ext.data", ext, "1M"}), "data file");
  r = nb({"info", ext});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("external data file"), std::string::npos) << r.err;
  // An unknown incompatible bit is named from the image's feature table.
  std::string unk = dir / "unk.qcow2";
  must(run({"qemu-img", "create", "-f", "qcow2", unk, "1M"}), "create");
  {
    std::fstream f(unk, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(72 + 7);
    char bit = 0x20;  // bit 5
    f.write(&bit, 1);
  }
  r = nb({"info", unk});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("Unsupported qcow2 feature(s): Unknown incompatible feature: 0x20"), std::string::npos) << r.err;
}

TEST(Qcow2, DirtyImageWithLazyRefcounts) {
  TempDir dir;
  std::string img = dir / "lazy.qcow2";
  must(run({"qemu-img", "create", "-f", "qcow2", "-o", "lazy_refcounts=on", img, "8M"}), "create");
  // qemu-io dies with the dirty bit set and refcounts not yet written.
  run({"qemu-io", "-c", "write -P 0x61 0 1M", "-c", "write -P 0x62 4M 64k", "-c", "sigraise 9", img});
  json info = json::parse(nb({"info", "--output=json", img}).out);
  EXPECT_EQ(info["dirty-flag"], true);
  std::uint64_t before = netblk_hash(dir, img, "before");
  // Opening writable repairs the refcounts and clears the bit.
  std::string patch = dir / "p.raw";
  write_pattern_file(patch, 4096, 1);
  must(nb({"convert", "-n", "-f", "raw", "-O", "qcow2", patch, img}), "write");
  qemu_check_clean(img);
  info = json::parse(nb({"info", "--output=json", img}).out);
  EXPECT_EQ(info["dirty-flag"], false);
  EXPECT_NE(before, 0u);
}

// Runs a coroutine on a fresh loop (the library directly).
template <class F>
void run_loop(F f) {
  netblk::run_sync<void>(std::function<netblk::Task<void>()>(f));
}

TEST(Qcow2, CopyOnReadPullsTheChainIntoTheOverlay) {
  TempDir dir;
  std::string base = dir / "base.raw", ov = dir / "ov.qcow2";
  write_pattern_file(base, 6u << 20, 11);
  must(nb({"create", "-f", "qcow2", "-b", base, "-F", "raw", ov}), "overlay");
  must(run({"qemu-io", "-c", "write -P 0x99 1M 8k", ov}), "guest write");
  must(run({"qemu-img", "convert", "-O", "raw", ov, dir / "expected.raw"}), "expected");
  run_loop([&]() -> netblk::Task<void> {
    netblk::DriveSpec spec;
    spec.filename = ov;
    spec.format = "qcow2";
    spec.copy_on_read = true;
    auto node = co_await netblk::open_drive(spec);
    // Many overlapping reads at once, as an NBD client would send.
    std::uint64_t next = 0;
    co_await netblk::run_concurrently(
        48,
        [&]() -> netblk::Task<void> {
          const std::uint64_t off = (next++ * 131072 + 3000) % ((6u << 20) - 200000);
          std::vector<std::byte> buf(200000);
          co_await node->read(off, buf);
        },
        [] {});
    std::vector<std::byte> all(6u << 20);
    co_await node->read(0, all);
    co_await node->close();
  });
  qemu_check_clean(ov);
  // Everything is in the overlay now: it reads the same without its backing file.
  json map = json::parse(run({"qemu-img", "map", "--output=json", ov}).out);
  for (const auto& e : map) EXPECT_EQ(e["depth"], 0) << e.dump();
  ASSERT_EQ(std::rename(base.c_str(), (dir / "gone.raw").c_str()), 0);
  const std::string alone =
      "json:{\"driver\":\"qcow2\",\"backing\":\"\",\"file\":{\"driver\":\"file\",\"filename\":\"" + ov + "\"}}";
  RunResult r = nb({"compare", alone, dir / "expected.raw"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  qemu_same(dir / "expected.raw", alone);
}

}  // namespace

namespace {

// The documented remote-overlay setup: a qcow2 overlay whose backing file is an http drive
// given as json: (with ",," escapes on the command line), exported by `netblk serve` with
// copy-on-read. Reading everything pulls the image in; then the web server stops and the
// export still reads correctly.
TEST(Qcow2, HttpBackedOverlayServedWithCopyOnRead) {
  TempDir dir;
  ASSERT_EQ(mkdir((dir / "www").c_str(), 0755), 0);
  const std::string disk = dir / "www/disk.img";
  write_pattern_file(disk, 6u << 20, 21);
  Nginx nginx({.root = dir / "www"});

  const std::string ov = dir / "ov.qcow2";
  const std::string backing =
      "json:{\"file.driver\":\"http\",, \"file.url\":\"" + nginx.url("/disk.img") + "\",, \"file.readahead\":\"64k\"}";
  must(nb({"create", "-f", "qcow2", "-o", "backing_file=" + backing, "-F", "raw", ov}), "create");
  json info = json::parse(run({"qemu-img", "info", "--output=json", ov}).out);
  EXPECT_EQ(info["virtual-size"], 6u << 20);

  NetblkServe serve({.args = {"-t", "--drive", "file=" + ov + ",format=qcow2,copy-on-read=on"}});
  const std::string uri = serve.url();
  must(run({"nbdcopy", uri, dir / "first.raw"}, std::chrono::seconds(120)), "nbdcopy while the web server runs");
  EXPECT_EQ(file_hash(dir / "first.raw"), file_hash(disk));
  nginx.stop();
  must(run({"nbdcopy", uri, dir / "second.raw"}, std::chrono::seconds(120)), "nbdcopy after the web server stopped");
  EXPECT_EQ(file_hash(dir / "second.raw"), file_hash(disk));
  serve.stop();
  // The overlay alone (its backing file ignored) holds everything and checks clean.
  const std::string alone =
      "json:{\"driver\":\"qcow2\",\"backing\":\"\",\"file\":{\"driver\":\"file\",\"filename\":\"" + ov + "\"}}";
  RunResult r = nb({"compare", alone, disk});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err << serve.log();
  qemu_check_clean(alone);
  json map = json::parse(run({"qemu-img", "map", "--output=json", alone}).out);
  for (const auto& e : map) EXPECT_TRUE(e["present"].get<bool>() && e["depth"] == 0) << e.dump();
}

}  // namespace
