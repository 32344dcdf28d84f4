// Image locking against the real QEMU tools: netblk takes the lock bytes qemu-nbd and
// qemu-img take (the same bytes in /proc/locks), refuses what they refuse with their
// message, is refused by them, and lets -U readers through both ways. A copy onto its own
// source is refused before a byte of it is lost.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <set>
#include <sstream>

#include "netblk_serve.hpp"
#include "qemu_nbd.hpp"
#include "servers.hpp"

using namespace netblk::test;

namespace {

// The lock bytes held on `path` by anyone, as /proc/locks shows them ("fe:00:INODE START END").
std::multiset<long> lock_bytes(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return {};
  std::string inode(":");
  inode += std::to_string(st.st_ino);
  std::multiset<long> bytes;
  std::ifstream in("/proc/locks");
  for (std::string line; std::getline(in, line);) {
    std::istringstream words(line);
    std::string n, kind, mode, type, pid, dev;
    long start = 0, end = 0;
    words >> n >> kind >> mode >> type >> pid >> dev >> start >> end;
    if (dev.size() < inode.size() || dev.compare(dev.size() - inode.size(), inode.size(), inode) != 0) continue;
    for (long b = start; b <= end; ++b) bytes.insert(b);
  }
  return bytes;
}

std::string lock_list(const std::multiset<long>& bytes) {
  std::string s;
  for (long b : bytes) {
    if (!s.empty()) s += ' ';
    s += std::to_string(b);
  }
  return s;
}

void make_qcow2(const std::string& path, const std::string& backing = {}) {
  std::vector<std::string> argv = {"qemu-img", "create", "-q", "-f", "qcow2"};
  if (!backing.empty()) argv.insert(argv.end(), {"-b", backing, "-F", "qcow2"});
  argv.insert(argv.end(), {path, "4M"});
  ASSERT_EQ(run(argv).exit_code, 0);
  ASSERT_EQ(run({"qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", path}).exit_code, 0);
}

// What QEMU's tools and netblk print when another process holds the image.
std::string qemu_img_refusal(const std::string& path, const std::string& lock) {
  return "qemu-img: Could not open '" + path + "': Failed to get " + lock + " lock\nIs another process using the image [" +
         path + "]?\n";
}
std::string qemu_io_refusal(const std::string& path, const std::string& lock) {
  return "qemu-io: can't open device " + path + ": Failed to get " + lock + " lock\nIs another process using the image [" +
         path + "]?\n";
}
std::string netblk_refusal(const std::string& path, const std::string& lock) {
  return "netblk: Could not open '" + path + "': Failed to get " + lock + " lock. Is another process using the image [" +
         path + "]?\n";
}
std::string same_image(const std::string& verb, const std::string& path) {
  return "netblk: Could not " + verb + " '" + path +
         "': Failed to get \"write\" lock. The image [" + path +
         "] is already in use by this command (is it both the source and the target?)\n";
}

// qemu-nbd listens before it opens its image: a read through the export waits for that.
void wait_exported(const NbdDaemon& server) {
  auto r = run({"qemu-io", "-r", "-f", "raw", "-c", "read 0 512", server.url()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
}

}  // namespace

// netblk serve holds the very bytes qemu-nbd holds, for raw and qcow2, writable and
// read-only, and on a backing file; qemu-img's read-only verbs and netblk's take theirs.
TEST(Locking, ServeHoldsTheBytesQemuNbdHolds) {
  TempDir dir;
  const std::string base = dir / "base.qcow2", top = dir / "top.qcow2", raw = dir / "disk.raw";
  make_qcow2(base);
  make_qcow2(top, base);
  write_pattern_file(raw, 4 << 20);
  struct Case {
    std::string file, format;
    bool read_only;
  };
  for (const Case& c : {Case{raw, "raw", false}, Case{raw, "raw", true}, Case{top, "qcow2", false},
                        Case{top, "qcow2", true}}) {
    std::multiset<long> theirs, theirs_base, ours, ours_base;
    {
      QemuNbd q({.file = c.file, .socket = dir / (c.format + std::to_string(c.read_only) + ".sock"),
                 .read_only = c.read_only, .format = c.format});
      wait_exported(q);
      theirs = lock_bytes(c.file);
      theirs_base = lock_bytes(base);
    }
    {
      std::vector<std::string> args = {"-t", "-f", c.format, c.file};
      if (c.read_only) args.insert(args.begin(), "-r");
      NetblkServe s({.args = args, .unix_socket = true});
      ours = lock_bytes(c.file);
      ours_base = lock_bytes(base);
    }
    const std::string what = c.format + (c.read_only ? " read-only" : " writable");
    EXPECT_FALSE(theirs.empty()) << what;
    EXPECT_EQ(lock_list(ours), lock_list(theirs)) << what;
    EXPECT_EQ(lock_list(ours_base), lock_list(theirs_base)) << what << ": the backing file";
    EXPECT_TRUE(lock_bytes(c.file).empty()) << what << ": locks outlive the server";
  }
  // qemu-nbd writing qcow2: bytes 100 101 103 (consistent read, write, resize held) and
  // 201 203 (write and resize not shared); its backing file is read: 100 201 203.
  QemuNbd q({.file = top, .socket = dir / "last.sock", .format = "qcow2"});
  wait_exported(q);
  EXPECT_EQ(lock_list(lock_bytes(top)), "100 101 103 201 203");
  EXPECT_EQ(lock_list(lock_bytes(base)), "100 201 203");
}

// Item 1: while netblk serve writes a qcow2, qemu-img info and qemu-io are refused with
// their own messages; with -U, readers get in. Once the server is gone, so are its locks.
TEST(Locking, QemuToolsRefusedWhileServeWrites) {
  TempDir dir;
  const std::string img = dir / "disk.qcow2";
  make_qcow2(img);
  {
    NetblkServe s({.args = {"-t", "-f", "qcow2", img}, .unix_socket = true});
    auto info = run({"qemu-img", "info", img});
    EXPECT_EQ(info.exit_code, 1);
    EXPECT_EQ(info.err, qemu_img_refusal(img, "shared \"write\""));
    auto io = run({"qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", img});
    EXPECT_EQ(io.exit_code, 1);
    EXPECT_EQ(io.err, qemu_io_refusal(img, "\"write\""));
    auto ro = run({"qemu-io", "-r", "-f", "qcow2", "-c", "read 0 64k", img});
    EXPECT_EQ(ro.err, qemu_io_refusal(img, "shared \"write\""));
    // A second netblk serve and a copy into the image: refused as well.
    // (Bounded: without locks it would serve.)
  const auto bounded = std::chrono::seconds(10);
  auto second = run_netblk({"serve", "-k", dir / "second.sock", "-f", "qcow2", img}, bounded);
    EXPECT_EQ(second.exit_code, 1);
    EXPECT_EQ(second.err, netblk_refusal(img, "\"write\""));

    // -U: readers that let others write get in.
    auto shared_info = run({"qemu-img", "info", "-U", img});
    EXPECT_EQ(shared_info.exit_code, 0) << shared_info.err;
    auto shared_io = run({"qemu-io", "-r", "-U", "-f", "qcow2", "-c", "read -P 0x5a 0 1M", img});
    EXPECT_EQ(shared_io.exit_code, 0) << shared_io.err;
    EXPECT_NE(shared_io.out.find("read 1048576/1048576 bytes"), std::string::npos) << shared_io.out;
  }
  auto after = run({"qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", img});
  EXPECT_EQ(after.exit_code, 0) << after.err;
}

// While qemu-nbd writes a qcow2: netblk info, convert -n into it and serve are refused with
// QEMU's words; netblk info -U and serve -r -U are not. Readonly-only force-share, as QEMU.
TEST(Locking, NetblkRefusedWhileQemuNbdWrites) {
  TempDir dir;
  const std::string img = dir / "disk.qcow2", src = dir / "src.raw";
  make_qcow2(img);
  write_pattern_file(src, 4 << 20);
  QemuNbd q({.file = img, .socket = dir / "q.sock", .format = "qcow2"});
  wait_exported(q);

  auto info = run_netblk({"info", img});
  EXPECT_EQ(info.exit_code, 1);
  EXPECT_EQ(info.err, netblk_refusal(img, "shared \"write\""));
  auto convert = run_netblk({"convert", "-n", "-f", "raw", "-O", "qcow2", src, img});
  EXPECT_EQ(convert.exit_code, 1);
  EXPECT_EQ(convert.err, netblk_refusal(img, "\"write\""));
  const auto bounded = std::chrono::seconds(10);  // without locks it would serve
  auto serve = run_netblk({"serve", "-k", dir / "n.sock", "-f", "qcow2", img}, bounded);
  EXPECT_EQ(serve.exit_code, 1);
  EXPECT_EQ(serve.err, netblk_refusal(img, "\"write\""));
  auto serve_ro = run_netblk({"serve", "-r", "-k", dir / "n.sock", "-f", "qcow2", img}, bounded);
  EXPECT_EQ(serve_ro.err, netblk_refusal(img, "shared \"write\""));
  auto map = run_netblk({"map", img});
  EXPECT_EQ(map.err, netblk_refusal(img, "shared \"write\""));
  auto copy_out = run_netblk({"convert", "-O", "raw", img, dir / "out.raw"});
  EXPECT_EQ(copy_out.err, netblk_refusal(img, "shared \"write\""));

  // -U, --force-share, force-share=on: readers that let others write get in.
  auto shared_info = run_netblk({"info", "-U", img});
  EXPECT_EQ(shared_info.exit_code, 0) << shared_info.err;
  auto opts = run_netblk({"info", "--image-opts", "driver=qcow2,file.filename=" + img + ",force-share=on"});
  EXPECT_EQ(opts.exit_code, 0) << opts.err;
  auto shared_copy = run_netblk({"convert", "-U", "-O", "raw", img, dir / "out.raw"});
  EXPECT_EQ(shared_copy.exit_code, 0) << shared_copy.err;
  {
    NetblkServe s({.args = {"-t", "-r", "--force-share", "-f", "qcow2", img}, .unix_socket = true});
    auto read = run({"qemu-io", "-r", "-f", "raw", "-c", "read -P 0x5a 0 1M", s.url()});
    EXPECT_EQ(read.exit_code, 0) << read.err;
    EXPECT_NE(read.out.find("read 1048576/1048576 bytes"), std::string::npos) << read.out;
  }
  // Force-share on a writer: refused, as qemu-nbd and qemu-io refuse it.
  auto writer = run_netblk({"serve", "-U", "-k", dir / "n.sock", "-f", "qcow2", img}, bounded);
  EXPECT_EQ(writer.exit_code, 1);
  EXPECT_EQ(writer.err, "netblk: Could not open '" + img + "': force-share=on can only be used with read-only images\n");
  // file.locking=off takes no locks at all (QEMU's option).
  auto off = run_netblk({"info", "json:{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\",\"filename\":\"" + img +
                                     "\",\"locking\":\"off\"}}"});
  EXPECT_EQ(off.exit_code, 0) << off.err;
}

// Item 2: convert onto its own source is refused before the target is created, so the
// source keeps every byte; the error says what happened. qemu-img refuses it too.
TEST(Locking, ConvertOntoItsOwnSourceIsRefused) {
  TempDir dir;
  const std::string raw = dir / "same.raw", qcow2 = dir / "same.qcow2", keep = dir / "keep.raw";
  write_pattern_file(raw, 4 << 20);
  write_pattern_file(keep, 4 << 20);
  make_qcow2(qcow2);
  const std::uint64_t qcow2_hash = file_hash(qcow2);

  auto r = run_netblk({"convert", "-O", "raw", raw, raw});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, same_image("create", raw));
  auto n = run_netblk({"convert", "-n", "-f", "raw", "-O", "raw", raw, raw});
  EXPECT_EQ(n.exit_code, 1);
  EXPECT_EQ(n.err, same_image("open", raw));
  EXPECT_EQ(file_hash(raw), file_hash(keep));

  auto q = run_netblk({"convert", "-O", "qcow2", qcow2, qcow2});
  EXPECT_EQ(q.exit_code, 1);
  EXPECT_EQ(q.err, same_image("create", qcow2));
  EXPECT_EQ(file_hash(qcow2), qcow2_hash);

  // qemu-img refuses the same, on the same lock.
  auto theirs = run({"qemu-img", "convert", "-O", "raw", raw, raw});
  EXPECT_EQ(theirs.exit_code, 1);
  EXPECT_NE(theirs.err.find("Failed to get \"write\" lock"), std::string::npos) << theirs.err;
  EXPECT_EQ(file_hash(raw), file_hash(keep));

  // Reading an image twice is fine (compare with itself), as in qemu-img.
  auto same = run_netblk({"compare", qcow2, qcow2});
  EXPECT_EQ(same.exit_code, 0) << same.err;
}

// A backing file another process writes: info of the overlay is fine (qemu-img info does
// not open the backing file), reading through the overlay is refused by both.
TEST(Locking, BackingFileWrittenElsewhere) {
  TempDir dir;
  const std::string base = dir / "base.qcow2", top = dir / "top.qcow2";
  make_qcow2(base);
  make_qcow2(top, base);
  QemuNbd q({.file = base, .socket = dir / "q.sock", .format = "qcow2"});
  wait_exported(q);
  auto theirs = run({"qemu-img", "info", top});
  EXPECT_EQ(theirs.exit_code, 0) << theirs.err;
  auto ours = run_netblk({"info", top});
  EXPECT_EQ(ours.exit_code, 0) << ours.err;
  auto their_map = run({"qemu-img", "map", top});
  EXPECT_EQ(their_map.exit_code, 1);
  EXPECT_NE(their_map.err.find("Failed to get shared \"write\" lock"), std::string::npos) << their_map.err;
  auto our_map = run_netblk({"map", top});
  EXPECT_EQ(our_map.exit_code, 1);
  EXPECT_EQ(our_map.err, "netblk: " + top + ": Could not open backing file: Could not open '" + base +
                             "': Failed to get shared \"write\" lock. Is another process using the image [" + base +
                             "]?\n");
  // -U reads through it.
  auto shared_map = run_netblk({"map", "-U", top});
  EXPECT_EQ(shared_map.exit_code, 0) << shared_map.err;
}
