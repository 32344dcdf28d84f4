// The drive checks: one gtest suite that every protocol's integration test instantiates, so
// that each way of reaching an image is held to the same facts. Given a drive name, the
// local file whose bytes it must have, and whether it is writable, it checks that
//   - `netblk info` gives the file's size;
//   - `netblk convert -O raw` gives the file's bytes (and `qemu-img compare` agrees);
//   - reads through the library (netblk::open_drive) at random offsets and lengths, the
//     tail, small sequential ones and many at once, give the file's bytes;
//   - writes through the library at random offsets read back and land in the file (when
//     writable; they are written back afterwards), or are refused with EPERM/EROFS;
//   - `netblk compare` says "same" against the file and "differs" against a copy with one
//     byte changed, as `qemu-img compare` does, and qemu-img's own copy is the same bytes;
//   - every malformed name the test gives fails with exactly one line on stderr starting
//     "netblk: ", a non-zero exit, no crash, within a time limit.
//
// Instantiating it (the tests are defined in drive_checks.cpp, linked with test_servers):
//
//   #include "drive_checks.hpp"
//   struct Served {  // the server and the files it serves, shared by the binary's tests
//     TempDir dir;
//     Nginx web{{.root = dir.path()}};
//     Served() { write_pattern_file(dir / "disk.img", 6 << 20); }
//   };
//   NETBLK_DRIVE_CHECKS(Http, DriveCheckParam{"http", [] {
//     auto& s = shared<Served>();  // started by the first test that asks, stopped at exit
//     return DriveCase{.name = s.web.url("/disk.img"), .source = s.dir / "disk.img",
//                      .bad_names = {s.web.url("/no-such.img")}};
//   }});
//
// The parameter's `make` runs in each test's SetUp, after main() started, so it may start
// servers and use their ports; a throw fails that test. Give each DriveCheckParam of a
// binary its own label (the tests are named Prefix/DriveChecks.Check/label).
#pragma once
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

#include "netblk/open.hpp"
#include "servers.hpp"

namespace netblk::test {

struct DriveCase {
  std::string name{};    // the drive as a user names it: a URL, a path or "json:{...}"
  std::string source{};  // the local file whose bytes it must have (at least one byte)
  // Writes through the drive land in `source` (raw over file or NBD, for example). The
  // check writes and then puts the old bytes back.
  bool writable = false;
  // Malformed or unreachable variants of `name`: each must fail with one line, in time.
  std::vector<std::string> bad_names{};
  // False where qemu-img cannot read `name` (QEMU 7.2: TFTP, FTPS): it is then only the
  // oracle for local files.
  bool qemu_reads_it = true;
  // --object definitions the name needs (secret,id=...), for netblk, qemu-img and the library.
  std::vector<std::string> objects{};
  // How long a bad name may take to fail.
  std::chrono::seconds bad_name_limit = std::chrono::seconds(30);
};

struct DriveCheckParam {
  std::string label{};                // [A-Za-z0-9_]+, unique in the binary
  std::function<DriveCase()> make{};  // called in each test's SetUp
};

// The library's view of `name`, read-only unless asked otherwise.
DriveSpec named(const std::string& name, bool read_only = true);

// Opens `spec` with the library and reads it in many ways, each checked against `want`:
// small sequential reads (the readahead paths), random reads of odd sizes and offsets
// including the tail, large reads, and many reads in flight at once. The node must be
// read-only when the spec asks for that.
void check_reads(const DriveSpec& spec, const std::string& want);

// Opens `spec` read-write and writes a pattern at random offsets (odd sizes, the start and
// the tail) through the library; every write reads back through the same node and, after
// flush and close, `source` holds exactly the written bytes; then the old bytes are written
// back and `source` is as before.
void check_writes(const DriveSpec& spec, const std::string& source);

// Opens `spec` and checks that a write is refused with EPERM or EROFS.
void check_write_refused(const DriveSpec& spec);

// `netblk convert -O raw [extra...] source OUT` succeeds and OUT holds exactly `want`.
void check_convert(const std::vector<std::string>& extra, const std::string& source, const std::string& want);

// `r` is a failure reported as it should be: exit code non-zero and below 124 (no timeout,
// no signal), stderr exactly one line starting "netblk: ". `what` names the attempt.
void expect_one_line_failure(const RunResult& r, const std::string& what);

// The protocol tests' shared checks of the CLI.
// "json:" and the options, as a user writes a json: drive name.
std::string json_name(const nlohmann::json& options);
// `r` succeeded; stdout and stderr are printed if not. `what` names the attempt.
void expect_ok(const RunResult& r, const std::string& what);
// `r` failed as expect_one_line_failure() says, and its line holds each of `words`.
void expect_failure_with(const RunResult& r, const std::string& what, const std::vector<std::string>& words);
// `netblk info` of the drive gives `file`'s size and `netblk convert -O raw` its bytes.
// `name` is the drive's arguments, the name last (options such as --object first); `env`
// is added to netblk's environment. A mismatch prints cmp's first difference and the
// drive's map.
void expect_same_bytes(const std::vector<std::string>& name, const std::string& file,
                       const std::vector<std::string>& env = {});

class DriveChecks : public ::testing::TestWithParam<DriveCheckParam> {
 protected:
  void SetUp() override;
  DriveCase c;
  std::string want{};  // the source's bytes when the test started
};

// gtest prints a parameter by its label.
void PrintTo(const DriveCheckParam& param, std::ostream* os);
// Names the instantiated tests after DriveCheckParam::label.
std::string drive_check_name(const ::testing::TestParamInfo<DriveCheckParam>& info);

}  // namespace netblk::test

// Instantiates the drive checks once per DriveCheckParam given after the prefix.
// Use it at global scope.
#define NETBLK_DRIVE_CHECKS(prefix, ...)    \
  using ::netblk::test::DriveChecks;         \
  INSTANTIATE_TEST_SUITE_P(prefix, DriveChecks, ::testing::Values(__VA_ARGS__), ::netblk::test::drive_check_name)
