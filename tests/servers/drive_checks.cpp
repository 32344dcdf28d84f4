#include "drive_checks.hpp"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "core/secrets.hpp"
#include "netblk/buffer.hpp"
#include "netblk/error.hpp"
#include "spec/tree.hpp"

namespace netblk::test {
using namespace std::chrono_literals;

DriveSpec named(const std::string& name, bool read_only) {
  DriveSpec s;
  s.filename = name;
  s.read_only = read_only;
  return s;
}

void check_reads(const DriveSpec& spec, const std::string& want) {
  run_sync<void>([&]() -> Task<void> {
    auto node = co_await open_drive(spec);
    EXPECT_EQ(node->size(), want.size());
    if (spec.read_only) {
      EXPECT_TRUE(node->read_only());
    }
    const std::uint64_t size = want.size();
    auto expect_range = [&](std::uint64_t off, const Buffer& b, std::size_t n) {
      ASSERT_EQ(std::memcmp(b.data(), want.data() + off, n), 0) << "bytes differ at offset " << off << " length " << n;
    };
    // Sequential 4 KiB reads over the first 3 MiB.
    Buffer small(4096);
    for (std::uint64_t off = 0; off < std::min<std::uint64_t>(3u << 20, size); off += 4096) {
      const std::size_t n = std::min<std::uint64_t>(4096, size - off);
      co_await node->read(off, small.span().first(n));
      expect_range(off, small, n);
    }
    // Random reads, odd sizes and offsets, including the tail.
    std::mt19937_64 rng(42);
    Buffer big(std::min<std::uint64_t>(3u << 20, size));
    for (int i = 0; i < 40; ++i) {
      std::uint64_t len = 1 + rng() % std::min<std::uint64_t>(i % 4 == 0 ? (3u << 20) : 70000, size);
      std::uint64_t off = rng() % (size - len + 1);
      if (i == 5) off = size - len;
      co_await node->read(off, big.span().subspan(0, len));
      expect_range(off, big, len);
    }
    // Many reads in flight at once.
    Executor ex = co_await asio::this_coro::executor;
    const int n = 12;
    const std::uint64_t chunk = std::min<std::uint64_t>(512 * 1024, size);
    int left = n;
    AsyncCondition all_done(ex);
    std::vector<Buffer> bufs;
    for (int i = 0; i < n; ++i) bufs.emplace_back(chunk);
    std::exception_ptr failure;
    for (int i = 0; i < n; ++i) {
      std::uint64_t off = size > chunk ? (static_cast<std::uint64_t>(i) * 491 * 1024) % (size - chunk) : 0;
      asio::co_spawn(
          ex,
          [&, i, off]() -> Task<void> {
            co_await node->read(off, bufs[i].span());
            if (std::memcmp(bufs[i].data(), want.data() + off, bufs[i].size()) != 0)
              throw std::runtime_error("parallel read differs at " + std::to_string(off));
          },
          [&](std::exception_ptr e) {
            if (e && !failure) failure = e;
            --left;
            all_done.notify_all();
          });
    }
    while (left) co_await all_done.wait();
    if (failure) std::rethrow_exception(failure);
    co_await node->close();
  });
}

namespace {

struct Write {
  std::uint64_t offset;
  std::string bytes;
};

// Writes every `writes` through a node opened by `spec`, each read back at once; then
// flushes, reads the whole node and checks it equals `expected`.
void write_through(const DriveSpec& spec, const std::vector<Write>& writes, const std::string& expected) {
  run_sync<void>([&]() -> Task<void> {
    auto node = co_await open_drive(spec);
    EXPECT_FALSE(node->read_only());
    for (const auto& w : writes) {
      auto bytes = std::as_bytes(std::span<const char>(w.bytes));
      co_await node->write(w.offset, bytes);
      Buffer back(w.bytes.size());
      co_await node->read(w.offset, back.span());
      EXPECT_EQ(std::memcmp(back.data(), w.bytes.data(), w.bytes.size()), 0)
          << "write at " << w.offset << " length " << w.bytes.size() << " reads back other bytes";
    }
    co_await node->flush();
    Buffer b(1u << 20);
    for (std::uint64_t off = 0; off < expected.size(); off += b.size()) {
      const std::size_t n = std::min<std::uint64_t>(b.size(), expected.size() - off);
      co_await node->read(off, b.span().first(n));
      EXPECT_EQ(std::memcmp(b.data(), expected.data() + off, n), 0) << "after the writes, bytes differ in the MiB at "
                                                                     << off;
    }
    co_await node->close();
  });
}

}  // namespace

void check_writes(const DriveSpec& spec, const std::string& source) {
  const std::string before = read_file(source);
  const std::uint64_t size = before.size();
  ASSERT_GT(size, 0u);
  std::string expected = before;
  std::vector<Write> writes, undo;
  std::mt19937_64 rng(7);
  for (int i = 0; i < 24; ++i) {
    const std::uint64_t len = 1 + rng() % std::min<std::uint64_t>(i % 6 == 0 ? (2u << 20) : 70000, size);
    const std::uint64_t off = i == 0 ? 0 : i == 1 ? size - len : rng() % (size - len + 1);
    std::string bytes(len, '\0');
    for (auto& ch : bytes) ch = static_cast<char>(rng());
    expected.replace(off, len, bytes);
    writes.push_back({off, std::move(bytes)});
    undo.push_back({off, before.substr(off, len)});
  }
  write_through(spec, writes, expected);
  EXPECT_TRUE(read_file(source) == expected) << source << " does not hold the bytes written through the drive";
  write_through(spec, undo, before);
  EXPECT_TRUE(read_file(source) == before) << source << " does not hold its old bytes after they were written back";
}

void check_write_refused(const DriveSpec& spec) {
  run_sync<void>([&]() -> Task<void> {
    auto node = co_await open_drive(spec);
    EXPECT_TRUE(node->read_only());
    Buffer b(512);
    std::memset(b.data(), 1, 512);
    int code = 0;
    try {
      co_await node->write(0, b.span());
    } catch (const Error& e) {
      code = e.code();
    }
    EXPECT_TRUE(code == EPERM || code == EROFS) << "a write to a read-only drive gave errno " << code;
    co_await node->close();
  });
}

void check_convert(const std::vector<std::string>& extra, const std::string& source, const std::string& want) {
  TempDir out;
  std::vector<std::string> args = {"convert", "-O", "raw"};
  args.insert(args.end(), extra.begin(), extra.end());
  args.push_back(source);
  args.push_back(out / "out.raw");
  auto r = netblk(args, 120s);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(read_file(out / "out.raw") == want) << "converted bytes differ for " << source;
}

void expect_one_line_failure(const RunResult& r, const std::string& what) {
  EXPECT_NE(r.exit_code, 0) << what << " succeeded: " << r.out;
  EXPECT_LT(r.exit_code, 124) << what << " timed out or crashed: " << r.err;
  EXPECT_TRUE(r.err.starts_with("netblk: ")) << what << ": " << r.err;
  EXPECT_TRUE(r.err.ends_with("\n")) << what << ": " << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << what << ": " << r.err;
}

std::string json_name(const nlohmann::json& options) { return "json:" + options.dump(); }

void expect_ok(const RunResult& r, const std::string& what) {
  EXPECT_EQ(r.exit_code, 0) << what << "\nstdout: " << r.out << "\nstderr: " << r.err;
}

void expect_failure_with(const RunResult& r, const std::string& what, const std::vector<std::string>& words) {
  expect_one_line_failure(r, what);
  for (const auto& w : words) EXPECT_NE(r.err.find(w), std::string::npos) << what << ": no '" << w << "' in " << r.err;
}

void expect_same_bytes(const std::vector<std::string>& name, const std::string& file,
                       const std::vector<std::string>& env) {
  auto netblk_with = [&](const std::vector<std::string>& verb) {
    std::vector<std::string> argv{netblk_binary()};
    argv.insert(argv.end(), verb.begin(), verb.end());
    argv.insert(argv.end(), name.begin(), name.end());
    return argv;
  };
  TempDir out;
  auto i = run(netblk_with({"info", "--output=json"}), 120s, env);
  ASSERT_EQ(i.exit_code, 0) << name.back() << ": " << i.err;
  EXPECT_EQ(nlohmann::json::parse(i.out)["virtual-size"], std::filesystem::file_size(file)) << name.back();
  std::vector<std::string> convert = netblk_with({"convert", "-O", "raw"});
  convert.push_back(out / "copy.raw");
  auto c = run(convert, 120s, env);
  ASSERT_EQ(c.exit_code, 0) << name.back() << ": " << c.err;
  if (file_hash(out / "copy.raw") == file_hash(file)) return;
  ADD_FAILURE() << name.back() << ": the copy differs: " << run({"cmp", out / "copy.raw", file}).out
                << "map: " << run(netblk_with({"map", "--output=json"}), 120s, env).out;
}

void DriveChecks::SetUp() {
  c = GetParam().make();
  want = read_file(c.source);
  ASSERT_FALSE(want.empty()) << c.source << " is empty or missing";
}

void PrintTo(const DriveCheckParam& param, std::ostream* os) { *os << param.label; }

std::string drive_check_name(const ::testing::TestParamInfo<DriveCheckParam>& info) { return info.param.label; }

namespace drive_checks {
namespace {

// The --object options, before the names of a netblk or qemu-img verb.
std::vector<std::string> with_objects(const DriveCase& c, std::vector<std::string> verb,
                                      const std::vector<std::string>& rest) {
  for (const auto& o : c.objects) verb.insert(verb.end(), {"--object", o});
  verb.insert(verb.end(), rest.begin(), rest.end());
  return verb;
}

RunResult qemu_img(const DriveCase& c, const std::vector<std::string>& verb, const std::vector<std::string>& rest) {
  std::vector<std::string> argv{"timeout", "60", "qemu-img"};
  auto tail = with_objects(c, verb, rest);
  argv.insert(argv.end(), tail.begin(), tail.end());
  return run(argv, 90s);
}

// Defines the case's objects for the library, each once in this process (an id may not be
// defined twice).
void define_objects(const DriveCase& c) {
  static std::set<std::string> defined;
  for (const auto& o : c.objects)
    if (defined.insert(o).second) secrets::define(spec::parse_keyval(o, "qom-type"));
}

void info_gives_the_size(const DriveCase& c, const std::string& want) {
  auto r = netblk(with_objects(c, {"info", "--output=json"}, {c.name}), 60s);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["virtual-size"], want.size()) << r.out;
}

void convert_gives_the_bytes(const DriveCase& c, const std::string& want) {
  TempDir out;
  const std::string copy = out / "out.raw";
  auto r = netblk(with_objects(c, {"convert", "-O", "raw"}, {c.name, copy}), 120s);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(read_file(copy) == want) << "converted bytes differ for " << c.name;
  // qemu-img finds the copy the same as the source's bytes (a copy of them: a server may
  // hold a lock on the source while it serves it, as in.tftpd does, and qemu-img checks locks).
  const std::string same = out / "source.raw";
  write_file(same, want);
  auto q = qemu_img(c, {"compare", "-f", "raw", "-F", "raw"}, {copy, same});
  EXPECT_EQ(q.exit_code, 0) << q.out << q.err;
}

void random_reads_match(const DriveCase& c, const std::string& want) {
  define_objects(c);
  check_reads(named(c.name), want);
}

void writes_land_or_are_refused(const DriveCase& c) {
  define_objects(c);
  if (c.writable)
    check_writes(named(c.name, false), c.source);
  else
    check_write_refused(named(c.name));
}

void compare_agrees_with_qemu_img(const DriveCase& c, const std::string& want) {
  TempDir t;
  // The same bytes but one, in the middle.
  const std::string differs = t / "differs.raw";
  std::string other = want;
  other[other.size() / 2] = static_cast<char>(~other[other.size() / 2]);
  write_file(differs, other);
  // A copy of the served file, not the file itself: a server may hold a whole-file lock on it
  // while it serves it (vsftpd, in.tftpd), and netblk, like qemu-img, checks image locks.
  const std::string same = t / "source.raw";
  write_file(same, want);
  auto ours = netblk(with_objects(c, {"compare"}, {c.name, same}), 60s);
  EXPECT_EQ(ours.exit_code, 0) << ours.out << ours.err;
  auto ours_differs = netblk(with_objects(c, {"compare"}, {c.name, differs}), 60s);
  EXPECT_EQ(ours_differs.exit_code, 1) << ours_differs.out << ours_differs.err;
  if (!c.qemu_reads_it) return;
  auto theirs = qemu_img(c, {"compare"}, {c.name, same});
  EXPECT_EQ(theirs.exit_code, 0) << theirs.out << theirs.err;
  auto theirs_differs = qemu_img(c, {"compare"}, {c.name, differs});
  EXPECT_EQ(theirs_differs.exit_code, 1) << theirs_differs.out << theirs_differs.err;
  // qemu-img's own copy is the same bytes (rounded up to whole sectors with zeroes).
  auto q = qemu_img(c, {"convert", "-m", "1", "-O", "raw"}, {c.name, t / "q.raw"});
  ASSERT_EQ(q.exit_code, 0) << q.err;
  const std::string theirs_copy = read_file(t / "q.raw");
  ASSERT_GE(theirs_copy.size(), want.size());
  EXPECT_TRUE(theirs_copy.compare(0, want.size(), want) == 0) << "qemu-img's copy differs";
  EXPECT_EQ(theirs_copy.find_first_not_of('\0', want.size()), std::string::npos);
}

void bad_names_fail_with_one_line(const DriveCase& c) {
  EXPECT_FALSE(c.bad_names.empty()) << "the case gives no bad names to check";
  for (const auto& bad : c.bad_names) {
    const auto start = std::chrono::steady_clock::now();
    auto r = netblk(with_objects(c, {"info"}, {bad}), c.bad_name_limit + 10s);
    const auto took = std::chrono::steady_clock::now() - start;
    expect_one_line_failure(r, "netblk info " + bad);
    EXPECT_LT(took, c.bad_name_limit) << bad;
  }
}

}  // namespace
}  // namespace drive_checks

TEST_P(DriveChecks, InfoGivesTheSize) { drive_checks::info_gives_the_size(c, want); }
TEST_P(DriveChecks, ConvertGivesTheBytes) { drive_checks::convert_gives_the_bytes(c, want); }
TEST_P(DriveChecks, RandomReadsMatch) { drive_checks::random_reads_match(c, want); }
TEST_P(DriveChecks, WritesLandOrAreRefused) { drive_checks::writes_land_or_are_refused(c); }
TEST_P(DriveChecks, CompareAgreesWithQemuImg) { drive_checks::compare_agrees_with_qemu_img(c, want); }
TEST_P(DriveChecks, BadNamesFailWithOneLine) { drive_checks::bad_names_fail_with_one_line(c); }
// A binary may use the helpers above without instantiating the checks.
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(DriveChecks);

}  // namespace netblk::test
