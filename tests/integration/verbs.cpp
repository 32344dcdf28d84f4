// The image verbs (resize, measure, rebase, commit, dd, amend, snapshot) side by side with qemu-img on the
// same inputs: the same exit codes and output, images that `qemu-img compare` finds
// identical and `qemu-img check` finds clean; one remote (NBD) name per verb family.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <regex>
#include <thread>
#include <sstream>

#include "qemu_nbd.hpp"
#include "servers.hpp"

using namespace netblk::test;

namespace {

void ok(const RunResult& r, const std::string& what) {
  ASSERT_EQ(r.exit_code, 0) << what << ": " << r.err;
}

void qemu_io(const std::string& image, const std::vector<std::string>& commands) {
  std::vector<std::string> argv = {"qemu-io", "-f", "qcow2"};
  for (const auto& c : commands) {
    argv.push_back("-c");
    argv.push_back(c);
  }
  argv.push_back(image);
  ok(run(argv), "qemu-io " + image);
}

// Each side reads the other's image: qemu-img compare and netblk compare.
void expect_same_image(const std::string& ours, const std::string& theirs) {
  auto r = run({"qemu-img", "compare", ours, theirs});
  EXPECT_EQ(r.exit_code, 0) << ours << " vs " << theirs << ": " << r.out << r.err;
  r = run_netblk({"compare", ours, theirs});
  EXPECT_EQ(r.exit_code, 0) << "netblk compare " << ours << " vs " << theirs << ": " << r.out << r.err;
}

void expect_clean(const std::string& image) {
  auto r = run({"qemu-img", "check", image});
  EXPECT_EQ(r.exit_code, 0) << image << ": " << r.out << r.err;
}

std::string virtual_size(const std::string& image) {
  auto r = run({"qemu-img", "info", "--output=json", image});
  auto at = r.out.find("\"virtual-size\": ");
  return at == std::string::npos ? r.out : r.out.substr(at, r.out.find(',', at) - at);
}

// base (4 MiB of 0x01) <- mid (data, a zero range) <- top (6 MiB: data, compressed data),
// named PREFIX-base.qcow2 and so on.
void make_chain(const TempDir& dir, const std::string& prefix) {
  const std::string base = dir / (prefix + "-base.qcow2"), mid = dir / (prefix + "-mid.qcow2"),
                    top = dir / (prefix + "-top.qcow2");
  ok(run({"qemu-img", "create", "-q", "-f", "qcow2", base, "4M"}), "create base");
  qemu_io(base, {"write -P 1 0 4M"});
  ok(run({"qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", mid}), "create mid");
  qemu_io(mid, {"write -P 2 1M 100k", "write -z 2M 64k"});
  ok(run({"qemu-img", "create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top, "6M"}), "create top");
  qemu_io(top, {"write -P 9 512k 4k", "write -P 8 5M 64k", "write -c -P 7 3M 64k"});
}

// Runs `args` with netblk on `ours` and with qemu-img on `theirs` (each replacing "@"):
// the same exit code; the same stdout unless `compare_out` is false.
void same_run(std::vector<std::string> args, const std::string& ours, const std::string& theirs,
              bool compare_out = true) {
  std::vector<std::string> a = args, b = args;
  for (auto& s : a)
    if (s == "@") s = ours;
  for (auto& s : b)
    if (s == "@") s = theirs;
  b.insert(b.begin(), "qemu-img");
  auto r1 = run_netblk(a);
  auto r2 = run(b);
  std::string what;
  for (const auto& s : args) what += s + " ";
  EXPECT_EQ(r1.exit_code, r2.exit_code) << what << "\nnetblk: " << r1.err << "\nqemu-img: " << r2.err;
  if (compare_out) {
    EXPECT_EQ(r1.out, r2.out) << what;
  }
  EXPECT_EQ(r1.err.find("terminate called"), std::string::npos) << r1.err;
}

}  // namespace

TEST(Verbs, ResizeAsQemuImg) {
  TempDir dir;
  for (const std::string fmt : {"raw", "qcow2"}) {
    const std::string n = dir / ("n." + fmt), q = dir / ("q." + fmt);
    for (const auto& f : {n, q}) {
      ok(run({"qemu-img", "create", "-q", "-f", fmt, f, "3M"}), "create");
      ok(run({"qemu-io", "-f", fmt, "-c", "write -P 5 1M 1536k", f}), "fill");
    }
    const std::vector<std::vector<std::string>> steps = {
        {"+1G"}, {"--shrink", "-1G"}, {"1M"}, {"--shrink", "1M"}, {"+1000"}, {"5M"}, {"--shrink", "2560k"}, {"2.5M"}};
    for (const auto& step : steps) {
      std::vector<std::string> args = {"resize", "-f", fmt, "@"};
      for (const auto& s : step) {
        if (s.starts_with('-') && s != "--shrink") args.push_back("--");
        args.push_back(s);
      }
      same_run(args, n, q);
      EXPECT_EQ(virtual_size(n), virtual_size(q)) << fmt << " " << step.back();
      expect_same_image(n, q);
      if (fmt == "qcow2") expect_clean(n);
    }
  }
  // A grown overlay does not show its larger backing file through (as QEMU zeroes it).
  const std::string base = dir / "big.qcow2", n = dir / "ov-n.qcow2", q = dir / "ov-q.qcow2";
  ok(run({"qemu-img", "create", "-q", "-f", "qcow2", base, "8M"}), "create base");
  qemu_io(base, {"write -P 3 0 8M"});
  for (const auto& f : {n, q}) ok(run({"qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", f, "2M"}), "ov");
  same_run({"resize", "@", "6M"}, n, q);
  expect_same_image(n, q);
  expect_clean(n);
  // A json: name.
  auto r = run_netblk({"resize", "json:{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\",\"filename\":\"" + n + "\"}}", "7M"});
  ok(r, "resize json:");
  EXPECT_EQ(virtual_size(n), "\"virtual-size\": 7340032");
  expect_clean(n);
}

TEST(Verbs, MeasureAsQemuImg) {
  TempDir dir;
  make_chain(dir, "m");
  const std::string top = dir / "m-top.qcow2", mid = dir / "m-mid.qcow2", raw = dir / "m.raw";
  ok(run({"qemu-img", "convert", "-O", "raw", top, raw}), "raw copy");
  for (const auto& src : {top, mid, raw}) {
    for (const std::string out : {"qcow2", "raw"}) {
      same_run({"measure", "-O", out, src}, "", "");
      same_run({"measure", "--output=json", "-O", out, src}, "", "");
    }
  }
  same_run({"measure", "-O", "qcow2", "-o", "cluster_size=4k,refcount_bits=1", raw}, "", "");
  same_run({"measure", "-O", "qcow2", "-o", "extended_l2=on", top}, "", "");
  same_run({"measure", "-O", "qcow2", "-o", "backing_file=x,compat=0.10", top}, "", "");
  same_run({"measure", "-O", "qcow2", "--size", "7G", "-o", "preallocation=full"}, "", "");
  same_run({"measure", "--size", "1G"}, "", "");
  // Failures: the same exit codes.
  same_run({"measure"}, "", "");
  same_run({"measure", "--size", "1G", raw}, "", "");
  same_run({"measure", "-O", "qcow2", "-o", "foo=1", raw}, "", "");
  same_run({"measure", "-O", "qcow2", "--size", "100T", "-o", "cluster_size=512"}, "", "");
  // A remote source: the qcow2 chain exported by qemu-nbd.
  QemuNbd server({.file = top, .socket = dir / "m.sock", .read_only = true, .format = "qcow2"});
  same_run({"measure", "-O", "qcow2", server.url()}, "", "");
}

TEST(Verbs, RebaseAsQemuImg) {
  TempDir dir;
  for (const std::string p : {"n", "q", "k"}) make_chain(dir, p);
  auto img = [&](const std::string& p, const std::string& layer) { return dir / (p + "-" + layer + ".qcow2"); };
  // A new backing file with other contents: 2 MiB, partly like the old one.
  const std::string other = dir / "other.qcow2";
  ok(run({"qemu-img", "create", "-q", "-f", "qcow2", other, "2M"}), "other");
  qemu_io(other, {"write -P 1 0 1M", "write -P 7 1536k 1000"});
  // Safe mode onto another file; the image reads as before, and as qemu-img's.
  same_run({"rebase", "-b", other, "-F", "qcow2", "@"}, img("n", "top"), img("q", "top"));
  expect_same_image(img("n", "top"), img("k", "top"));
  expect_same_image(img("n", "top"), img("q", "top"));
  expect_clean(img("n", "top"));
  EXPECT_NE(run({"qemu-img", "info", img("n", "top")}).out.find("backing file: " + other), std::string::npos);
  // No backing file at all.
  same_run({"rebase", "-b", "", "@"}, img("n", "top"), img("q", "top"));
  expect_same_image(img("n", "top"), img("k", "top"));
  expect_clean(img("n", "top"));
  EXPECT_EQ(run({"qemu-img", "info", img("n", "top")}).out.find("backing file"), std::string::npos);
  // -u only renames; a relative name is stored as given.
  same_run({"rebase", "-u", "-b", "k-mid.qcow2", "-F", "qcow2", "@"}, img("n", "top"), img("q", "top"));
  EXPECT_NE(run({"qemu-img", "info", img("n", "top")}).out.find("backing file: k-mid.qcow2"), std::string::npos);
  expect_clean(img("n", "top"));
  // Failures with qemu-img's exit codes: no format, no such file, no -b.
  same_run({"rebase", "-b", other, "@"}, img("n", "mid"), img("q", "mid"));
  same_run({"rebase", "-b", dir / "nothere", "-F", "qcow2", "@"}, img("n", "mid"), img("q", "mid"));
  same_run({"rebase", "@"}, img("n", "mid"), img("q", "mid"));
  // Safe mode onto a remote backing file (the same bytes as the old one, served by qemu-nbd).
  QemuNbd server({.file = img("k", "base"), .socket = dir / "r.sock", .read_only = true, .format = "qcow2",
                  .extra = {"-e", "4"}});
  same_run({"rebase", "-b", server.url(), "-F", "raw", "@"}, img("n", "mid"), img("q", "mid"));
  expect_same_image(img("n", "mid"), img("k", "mid"));
  expect_same_image(img("n", "mid"), img("q", "mid"));
  expect_clean(img("n", "mid"));
}

TEST(Verbs, CommitAsQemuImg) {
  TempDir dir;
  auto img = [&](const std::string& p, const std::string& layer) { return dir / (p + "-" + layer + ".qcow2"); };
  struct Case {
    std::vector<std::string> flags;
    std::string committed_into;  // the layer that must read as the old top afterwards
  };
  make_chain(dir, "k");
  for (const Case& c : {Case{{}, "mid"}, Case{{"-d"}, "mid"}, Case{{"-b", "BASE"}, "base"}}) {
    for (const std::string p : {"n", "q"}) make_chain(dir, p);
    std::vector<std::string> ours = {"commit"}, theirs = {"qemu-img", "commit"};
    for (const auto& f : c.flags) {
      ours.push_back(f == "BASE" ? img("n", "base") : f);
      theirs.push_back(f == "BASE" ? img("q", "base") : f);
    }
    ours.push_back(img("n", "top"));
    theirs.push_back(img("q", "top"));
    auto r1 = run_netblk(ours), r2 = run(theirs);
    ASSERT_EQ(r1.exit_code, 0) << r1.err;
    ASSERT_EQ(r2.exit_code, 0) << r2.err;
    EXPECT_EQ(r1.out, r2.out);
    for (const std::string layer : {"base", "mid", "top"}) {
      expect_same_image(img("n", layer), img("q", layer));
      expect_clean(img("n", layer));
    }
    auto r = run({"qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", img("n", c.committed_into), img("k", "top")});
    EXPECT_EQ(r.exit_code, 0) << r.out;
  }
  // A json: name, and a raw backing file that grows to the image's size.
  for (const std::string p : {"n", "q"}) {
    ok(run({"qemu-img", "create", "-q", "-f", "raw", dir / (p + ".raw"), "2M"}), "raw");
    ok(run({"qemu-img", "create", "-q", "-f", "qcow2", "-b", dir / (p + ".raw"), "-F", "raw", dir / (p + "-ov.qcow2"), "3M"}), "ov");
    qemu_io(dir / (p + "-ov.qcow2"), {"write -P 3 1M 2M"});
  }
  ok(run_netblk({"commit", "json:{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\",\"filename\":\"" +
                               dir / "n-ov.qcow2" + "\"}}"}),
     "commit json:");
  ok(run({"qemu-img", "commit", dir / "q-ov.qcow2"}), "qemu-img commit");
  auto r = run({"qemu-img", "compare", "-f", "raw", "-F", "raw", dir / "n.raw", dir / "q.raw"});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  expect_clean(dir / "n-ov.qcow2");
  // Failures: no backing file, a base not in the chain.
  same_run({"commit", "-f", "raw", "@"}, dir / "n.raw", dir / "q.raw");
  same_run({"commit", "-b", dir / "nothere", "@"}, dir / "n-ov.qcow2", dir / "q-ov.qcow2");
}

TEST(Verbs, DdAsQemuImg) {
  TempDir dir;
  const std::string in = dir / "in.raw";
  write_pattern_file(in, 1 << 20);
  const std::vector<std::vector<std::string>> cases = {
      {"bs=4k", "count=10", "skip=5"}, {"bs=1000"}, {"bs=4k", "skip=300"}, {"bs=64k", "count=2k"}, {"bs=3k", "skip=7"},
      {"count=5"}};
  for (const auto& operands : cases) {
    for (const std::string fmt : {"raw", "qcow2"}) {
      const std::string n = dir / ("n." + fmt), q = dir / ("q." + fmt);
      std::vector<std::string> ours = {"dd", "-f", "raw", "-O", fmt, "if=" + in, "of=" + n};
      std::vector<std::string> theirs = {"qemu-img", "dd", "-f", "raw", "-O", fmt, "if=" + in, "of=" + q};
      ours.insert(ours.end(), operands.begin(), operands.end());
      theirs.insert(theirs.end(), operands.begin(), operands.end());
      auto r1 = run_netblk(ours), r2 = run(theirs);
      EXPECT_EQ(r1.exit_code, r2.exit_code) << operands[0] << ": " << r1.err << r2.err;
      EXPECT_EQ(virtual_size(n), virtual_size(q)) << operands[0];
      expect_same_image(n, q);
      if (fmt == "qcow2") expect_clean(n);
    }
  }
  for (const auto& bad : std::vector<std::vector<std::string>>{
           {"if=" + in}, {"if=" + in, "of=" + dir / "x", "foo=1"}, {"if=" + in, "of=" + dir / "x", "bs=0"},
           {"if=" + in, "of=" + dir / "x", "count=abc"}, {"if=" + dir / "nothere", "of=" + dir / "x"}}) {
    std::vector<std::string> args = {"dd"};
    args.insert(args.end(), bad.begin(), bad.end());
    same_run(args, "", "");
  }
  // A remote input: a qcow2 image served by qemu-nbd, copied from block 3 on.
  const std::string src = dir / "src.qcow2";
  ok(run({"qemu-img", "convert", "-O", "qcow2", in, src}), "qcow2 source");
  QemuNbd server({.file = src, .socket = dir / "d.sock", .read_only = true, .format = "qcow2"});
  for (const std::string p : {"n", "q"}) {
    std::vector<std::string> args = {"dd", "-f", "raw", "-O", "qcow2", "bs=64k", "skip=3", "if=" + server.url(),
                                     "of=" + dir / (p + "-remote.qcow2")};
    if (p == "q") args.insert(args.begin(), "qemu-img");
    ok(p == "n" ? run_netblk(args) : run(args), "dd from NBD");
  }
  expect_same_image(dir / "n-remote.qcow2", dir / "q-remote.qcow2");
}

TEST(Verbs, AmendAsQemuImg) {
  TempDir dir;
  auto img = [&](const std::string& p) { return dir / (p + ".qcow2"); };
  // Data, zero clusters with and without an allocation, over a backing file and without.
  for (const std::string p : {"n", "q", "n-base", "q-base"}) {
    ok(run({"qemu-img", "create", "-q", "-f", "qcow2", img(p), "4M"}), "create");
    qemu_io(img(p), {"write -P 1 0 1M", "write -z 2M 64k", "write -P 2 3M 64k", "write -z 3M 64k"});
  }
  for (const std::string p : {"n-ov", "q-ov"}) {
    const std::string base = p == "n-ov" ? img("n-base") : img("q-base");
    ok(run({"qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", img(p)}), "overlay");
    qemu_io(img(p), {"write -z 1M 128k", "write -P 3 2M 64k", "write -z 2M 64k"});
  }
  auto facts = [](const std::string& image) {
    auto out = run({"qemu-img", "info", image}).out;
    std::string kept;
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);)
      if (line.find("compat:") != std::string::npos || line.find("lazy refcounts:") != std::string::npos ||
          line.find("virtual size:") != std::string::npos)
        kept += line + "\n";
    return kept;
  };
  for (const std::string o : {"compat=0.10", "lazy_refcounts=on", "compat=1.1,lazy_refcounts=on", "lazy_refcounts=off",
                              "cluster_size=64k", "foo=1", "compat=0.10,refcount_bits=8", "size=8M", "compat=2",
                              "compat=0.10"}) {
    same_run({"amend", "-o", o, "@"}, img("n"), img("q"));
    expect_same_image(img("n"), img("q"));
    expect_clean(img("n"));
    EXPECT_EQ(facts(img("n")), facts(img("q"))) << o;
  }
  same_run({"amend", "@"}, img("n"), img("q"));
  // A downgrade over a backing file: zero clusters become clusters of zeroes.
  same_run({"amend", "-o", "compat=0.10", "@"}, img("n-ov"), img("q-ov"));
  expect_same_image(img("n-ov"), img("q-ov"));
  expect_clean(img("n-ov"));
  // qemu-img writes the downgraded image, netblk upgrades it again.
  qemu_io(img("n-ov"), {"write -P 4 1M 4k"});
  ok(run_netblk({"amend", "-o", "compat=1.1", img("n-ov")}), "upgrade");
  EXPECT_NE(facts(img("n-ov")).find("compat: 1.1"), std::string::npos);
  expect_clean(img("n-ov"));
  same_run({"amend", "-f", "raw", "-o", "compat=1.1", "@"}, dir / "none.raw", dir / "none.raw");
}

namespace {

// The images the snapshot tests run on: 64k and 4k clusters, v2, extended L2 entries.
const char* const kSnapshotImageOptions[] = {"cluster_size=64k", "cluster_size=4k", "compat=0.10,cluster_size=4k",
                                             "extended_l2=on,cluster_size=16k"};

// qemu-img snapshot -l of an image, the dates masked (they differ between two runs).
std::string snapshot_list(const std::string& image) {
  auto r = run({"qemu-img", "snapshot", "-l", image});
  EXPECT_EQ(r.exit_code, 0) << image << ": " << r.err;
  static const std::regex date(R"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)");
  return std::regex_replace(r.out, date, "DATE");
}

// Both checkers find the image clean.
void expect_both_clean(const std::string& image) {
  expect_clean(image);
  auto r = run_netblk({"check", image});
  EXPECT_EQ(r.exit_code, 0) << "netblk check " << image << ": " << r.out << r.err;
}

// 6 MiB: data, a partly written cluster, compressed clusters, zero clusters with and without
// an allocation, unallocated ranges. `opts` for qemu-img create (cluster size, compat).
void make_snapshot_image(const std::string& path, const std::string& opts) {
  ok(run({"qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, path, "6M"}), "create " + opts);
  qemu_io(path, {"write -P 1 0 1M", "write -P 2 1100k 3k", "write -c -P 3 2M 64k", "write -z 3M 64k",
                 "write -P 4 4M 128k", "write -z 4M 64k", "write -P 5 5M 1M"});
}

void copy_file(const std::string& from, const std::string& to) { ok(run({"cp", from, to}), "cp " + to); }

// The guest view of snapshot `name` of `image`, as qemu-img reads it, into a raw file.
std::string snapshot_contents(const std::string& image, const std::string& name, const std::string& raw) {
  auto r = run({"qemu-img", "convert", "-O", "raw", "-l", "snapshot.name=" + name, image, raw});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return raw;
}

void expect_same_raw(const std::string& raw, const std::string& image) {
  auto r = run({"qemu-img", "compare", "-f", "raw", raw, image});
  EXPECT_EQ(r.exit_code, 0) << raw << " vs " << image << ": " << r.out << r.err;
}

}  // namespace

// netblk and qemu-img side by side on copies of one image: the same exit codes, the same
// snapshot lists (but for the dates), the same contents; both checkers clean after each step.
// netblk lists each image as qemu-img does, byte for byte.
TEST(Verbs, SnapshotAsQemuImg) {
  TempDir dir;
  for (const std::string opts : kSnapshotImageOptions) {
    SCOPED_TRACE(opts);
    const std::string n = dir / "n.qcow2", q = dir / "q.qcow2", orig = dir / "orig.qcow2";
    make_snapshot_image(orig, opts);
    copy_file(orig, n);
    copy_file(orig, q);
    auto step = [&](const std::vector<std::string>& args) {
      same_run(args, n, q);
      expect_both_clean(n);
      expect_same_image(n, q);
      EXPECT_EQ(snapshot_list(n), snapshot_list(q)) << args[1];
      auto ours = run_netblk({"snapshot", "-l", n}), theirs = run({"qemu-img", "snapshot", "-l", n});
      EXPECT_EQ(ours.out, theirs.out);
    };
    step({"snapshot", "-c", "first", "@"});
    for (const auto& image : {n, q})
      qemu_io(image, {"write -P 9 512k 1M", "write -z 5M 64k", "discard 2M 64k", "write -P 8 1100k 1k"});
    step({"snapshot", "-c", "second", "@"});
    const std::string second = dir / "second.raw";
    ok(run({"qemu-img", "convert", "-O", "raw", n, second}), "second.raw");
    step({"snapshot", "-c", "first", "@"});  // a second one of that name: qemu-img allows it
    EXPECT_NE(snapshot_list(n).find("3         first"), std::string::npos) << snapshot_list(n);
    step({"snapshot", "-q", "-a", "first", "@"});  // ID 1, the first of the name
    expect_same_image(n, orig);
    step({"snapshot", "-a", "2", "@"});  // by ID
    expect_same_raw(second, n);
    step({"snapshot", "-d", "first", "@"});  // the first of the name, ID 1
    step({"snapshot", "-a", "first", "@"});  // now ID 3
    expect_same_raw(second, n);
    // Failures: a name not there, an ID for -d (qemu-img deletes by name), two actions.
    step({"snapshot", "-d", "nope", "@"});
    step({"snapshot", "-a", "nope", "@"});
    step({"snapshot", "-d", "2", "@"});
    step({"snapshot", "-c", "x", "-d", "y", "@"});
    step({"snapshot", "-l", "-a", "x", "@"});
    step({"snapshot", "@"});  // no action: qemu-img does nothing
    step({"snapshot", "-d", "second", "@"});
    step({"snapshot", "-d", "first", "@"});
    EXPECT_EQ(run({"qemu-img", "snapshot", "-l", n}).out, "");
    expect_same_raw(second, n);
  }
  // Not qcow2: qemu-img's exit codes.
  const std::string raw = dir / "r.raw";
  ok(run({"qemu-img", "create", "-q", "-f", "raw", raw, "1M"}), "raw");
  for (const std::string flag : {"-c", "-a", "-d"}) same_run({"snapshot", "-f", "raw", flag, "x", "@"}, raw, raw);
}

// What one side writes the other reads: a snapshot netblk made, written over by netblk and
// qemu-io, applied by qemu-img; one qemu-img made, written over by netblk (convert -n, and
// commit into a base with snapshots: partial clusters, zeroes, compressed data), applied and
// deleted by netblk. The snapshot's data stays as it was throughout.
TEST(Verbs, SnapshotsInteroperateWithQemu) {
  TempDir dir;
  for (const std::string opts : kSnapshotImageOptions) {
    SCOPED_TRACE(opts);
    const std::string orig = dir / "orig.qcow2", a = dir / "a.qcow2", orig_raw = dir / "orig.raw";
    make_snapshot_image(orig, opts);
    ok(run({"qemu-img", "convert", "-O", "raw", orig, orig_raw}), "orig.raw");
    copy_file(orig, a);
    ok(run_netblk({"snapshot", "-c", "S", a}), "netblk snapshot -c");
    expect_both_clean(a);
    qemu_io(a, {"write -P 9 4k 8k", "write -z 1M 64k", "discard 4M 64k", "write -P 7 2M 4k"});
    expect_both_clean(a);
    expect_same_raw(orig_raw, snapshot_contents(a, "S", dir / "s1.raw"));
    const std::string patch = dir / "patch.raw";
    ok(run({"qemu-img", "create", "-q", "-f", "raw", patch, "6M"}), "patch");
    ok(run({"qemu-io", "-f", "raw", "-c", "write -P 6 0 100k", "-c", "write -P 5 1200k 2M", patch}), "patch data");
    ok(run_netblk({"convert", "-n", "-f", "raw", "-O", "qcow2", patch, a}), "netblk convert -n");
    expect_both_clean(a);
    expect_same_raw(patch, a);
    expect_same_raw(orig_raw, snapshot_contents(a, "S", dir / "s2.raw"));
    ok(run({"qemu-img", "snapshot", "-a", "S", a}), "qemu-img snapshot -a");
    expect_both_clean(a);
    expect_same_raw(orig_raw, a);

    // qemu-img's snapshot in a base that netblk commit writes into.
    const std::string base = dir / "base.qcow2", top = dir / "top.qcow2";
    copy_file(orig, base);
    ok(run({"qemu-img", "snapshot", "-c", "S", base}), "qemu-img snapshot -c");
    ok(run({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "-b", base, "-F", "qcow2", top}), "top");
    qemu_io(top, {"write -P 9 8k 4k", "write -P 8 1028k 8k", "write -z 5M 12k", "write -c -P 3 2M 64k",
                  "write -P 4 4100k 4k", "write -z 3M 4k"});
    const std::string top_raw = dir / "top.raw";
    ok(run({"qemu-img", "convert", "-O", "raw", top, top_raw}), "top.raw");
    ok(run_netblk({"commit", top}), "netblk commit");
    expect_both_clean(base);
    expect_same_raw(top_raw, base);
    expect_same_raw(orig_raw, snapshot_contents(base, "S", dir / "s3.raw"));
    ok(run_netblk({"snapshot", "-a", "S", base}), "netblk snapshot -a");
    expect_both_clean(base);
    expect_same_raw(orig_raw, base);
    ok(run_netblk({"snapshot", "-d", "S", base}), "netblk snapshot -d");
    expect_both_clean(base);
    expect_same_raw(orig_raw, base);
    EXPECT_EQ(run({"qemu-img", "snapshot", "-l", base}).out, "");
  }
}

// Applying a snapshot brings back its disk size (the image resized meanwhile, either way);
// a v2 image with snapshots cannot be resized (qemu-img's refusal).
TEST(Verbs, SnapshotApplyRestoresTheDiskSize) {
  TempDir dir;
  const std::string orig = dir / "orig.qcow2", n = dir / "n.qcow2", q = dir / "q.qcow2";
  make_snapshot_image(orig, "cluster_size=64k");
  copy_file(orig, n);
  copy_file(orig, q);
  same_run({"snapshot", "-c", "s", "@"}, n, q);
  same_run({"resize", "@", "8M"}, n, q);
  for (const auto& image : {n, q}) qemu_io(image, {"write -P 6 7M 64k", "write -P 6 0 64k"});
  same_run({"snapshot", "-a", "s", "@"}, n, q);
  EXPECT_EQ(virtual_size(n), virtual_size(q));
  EXPECT_EQ(virtual_size(n), virtual_size(orig));
  expect_same_image(n, orig);
  expect_both_clean(n);
  same_run({"resize", "--shrink", "@", "2M"}, n, q);
  expect_both_clean(n);
  same_run({"snapshot", "-a", "s", "@"}, n, q);
  EXPECT_EQ(virtual_size(n), virtual_size(orig));
  expect_same_image(n, orig);
  expect_both_clean(n);
  // A header rewrite keeps the snapshots.
  same_run({"amend", "-o", "lazy_refcounts=on", "@"}, n, q);
  EXPECT_EQ(snapshot_list(n), snapshot_list(q));
  expect_both_clean(n);
  // v2.
  const std::string v2n = dir / "v2n.qcow2", v2q = dir / "v2q.qcow2";
  make_snapshot_image(v2n, "compat=0.10");
  copy_file(v2n, v2q);
  same_run({"snapshot", "-c", "s", "@"}, v2n, v2q);
  same_run({"resize", "@", "8M"}, v2n, v2q);
  EXPECT_EQ(virtual_size(v2n), virtual_size(v2q));
}

// netblk snapshot -c killed (SIGKILL) at random moments: the image reads as before, a
// snapshot either is not there or holds that data, and qemu-img check finds leaks at worst;
// but for the moment QEMU's order has too, between the refcount blocks and the L2 tables
// being written, when COPIED flags may still say "refcount 1" of clusters counted twice
// (ERROR OFLAG_COPIED, which nothing misreads: the snapshot is not in the table yet, and
// check -r all sets them right). That is allowed here, and repaired.
TEST(Verbs, KilledSnapshotCreateLeavesLeaksAtWorst) {
  TempDir dir;
  const std::string orig = dir / "orig.qcow2", img = dir / "k.qcow2";
  ok(run({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", orig, "96M"}), "create");
  qemu_io(orig, {"write -P 1 0 64M", "write -c -P 2 64M 4M", "write -z 70M 1M"});
  ok(run({"qemu-img", "snapshot", "-c", "old", orig}), "an older snapshot");
  qemu_io(orig, {"write -P 3 1M 8M"});
  const std::string orig_raw = dir / "orig.raw";
  ok(run({"qemu-img", "convert", "-O", "raw", orig, orig_raw}), "orig.raw");
  // How long a whole run takes.
  copy_file(orig, img);
  const auto t0 = std::chrono::steady_clock::now();
  ok(run_netblk({"snapshot", "-c", "S", img}), "snapshot -c");
  const auto whole = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
  std::mt19937 rng(7);
  int with_snapshot = 0, without = 0;
  for (int round = 0; round < 12; ++round) {
    SCOPED_TRACE(round);
    copy_file(orig, img);
    const std::string binary = netblk_binary();
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      const int devnull = ::open("/dev/null", O_WRONLY);
      dup2(devnull, 1);
      dup2(devnull, 2);
      execl(binary.c_str(), binary.c_str(), "snapshot", "-c", "S", img.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % (whole.count() + 1)));
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    auto r = run({"qemu-img", "check", img});
    std::istringstream lines(r.err + r.out);
    for (std::string line; std::getline(lines, line);) {
      if (line.find("ERROR") != std::string::npos) {
        EXPECT_NE(line.find("OFLAG_COPIED"), std::string::npos) << line;
      }
    }
    ok(run({"qemu-img", "check", "-q", "-r", "all", img}), "check -r all");
    expect_clean(img);
    expect_same_raw(orig_raw, img);
    if (snapshot_list(img).find(" S ") != std::string::npos) {
      ++with_snapshot;
      expect_same_raw(orig_raw, snapshot_contents(img, "S", dir / "s.raw"));
    } else {
      ++without;
    }
  }
  std::cout << "killed runs: " << with_snapshot << " with the snapshot, " << without << " without\n";
}
