// The netblk CLI on local files, differential against qemu-img: the same facts, the same
// verdicts, the same bytes; and every malformed input a one-line error with a non-zero exit.
#include <gtest/gtest.h>

#include <sstream>

#include <unistd.h>
#include <nlohmann/json.hpp>

#include "drive_checks.hpp"
#include "servers.hpp"

using namespace netblk::test;
using nlohmann::json;

namespace {

// A 40 MiB image with data, holes and zero-filled (but allocated) ranges.
void make_mixed_image(const std::string& path) {
  ASSERT_EQ(run({"truncate", "-s", "40M", path}).exit_code, 0);
  std::string data(3 << 20, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 2654435761u) >> 13);
  FILE* f = std::fopen(path.c_str(), "r+b");
  ASSERT_TRUE(f);
  std::fseek(f, 5 << 20, SEEK_SET);
  std::fwrite(data.data(), 1, data.size(), f);
  std::string zeros(1 << 20, '\0');
  std::fseek(f, 20 << 20, SEEK_SET);
  std::fwrite(zeros.data(), 1, zeros.size(), f);
  std::fseek(f, (40 << 20) - 1000, SEEK_SET);
  std::fwrite(data.data(), 1, 1000, f);
  std::fclose(f);
}

void expect_one_line_error(const RunResult& r, const std::string& must_contain) {
  EXPECT_NE(r.exit_code, 0) << r.err;
  EXPECT_LT(r.exit_code, 128) << "crashed: " << r.err;
  EXPECT_EQ(r.err.rfind("netblk: ", 0), 0u) << r.err;
  // One line of error (CLI11 usage errors add a hint line).
  auto first = r.err.substr(0, r.err.find('\n'));
  EXPECT_NE(first.find(must_contain), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("Aborted"), std::string::npos) << r.err;
}

}  // namespace

TEST(CliLocal, InfoAgreesWithQemuImg) {
  TempDir dir;
  std::string img = dir / "a.raw";
  ASSERT_EQ(run_netblk({"create", "-f", "raw", img, "1.5G"}).exit_code, 0);
  auto ours = run_netblk({"info", "--output=json", img});
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  auto theirs = run({"qemu-img", "info", "--output=json", img});
  ASSERT_EQ(theirs.exit_code, 0) << theirs.err;
  json a = json::parse(ours.out), b = json::parse(theirs.out);
  EXPECT_EQ(a["virtual-size"], b["virtual-size"]);
  EXPECT_EQ(a["format"], b["format"]);
  EXPECT_EQ(a["filename"], b["filename"]);
  EXPECT_EQ(a["dirty-flag"], b["dirty-flag"]);
  EXPECT_EQ(a["virtual-size"], 1610612736);

  // An image qemu-img made, read by us; the human output's first lines match qemu-img's.
  std::string q = dir / "q.raw";
  ASSERT_EQ(run({"qemu-img", "create", "-f", "raw", q, "3M"}).exit_code, 0);
  auto human = run_netblk({"info", q});
  auto qhuman = run({"qemu-img", "info", q});
  ASSERT_EQ(human.exit_code, 0);
  auto head = [](const std::string& s) { return s.substr(0, s.find("disk size")); };
  EXPECT_EQ(head(human.out), head(qhuman.out));
}

TEST(CliLocal, EverySyntaxNamesTheSameImage) {
  TempDir dir;
  std::string img = dir / "a.raw";
  make_mixed_image(img);
  std::vector<std::vector<std::string>> forms = {
      {"info", "--output=json", img},
      {"info", "--output=json", "-f", "raw", img},
      {"info", "--output=json", "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"" + img + "\"}}"},
      {"info", "--output=json", "json:{\"file.driver\":\"file\",\"file.filename\":\"" + img + "\"}"},
      {"info", "--output=json", "--image-opts", "driver=raw,file.driver=file,file.filename=" + img},
      {"info", "--output=json", "--drive", "file=" + img + ",format=raw,if=none,cache=none"},
  };
  for (const auto& f : forms) {
    auto r = run_netblk(f);
    ASSERT_EQ(r.exit_code, 0) << f.back() << ": " << r.err;
    json j = json::parse(r.out);
    EXPECT_EQ(j["virtual-size"], 40 << 20) << f.back();
    EXPECT_EQ(j["format"], "raw") << f.back();
  }
}

TEST(CliLocal, ConvertMakesIdenticalBytes) {
  TempDir dir;
  std::string src = dir / "src.raw", ours = dir / "ours.raw", theirs = dir / "theirs.raw";
  make_mixed_image(src);
  for (std::vector<std::string> extra : {std::vector<std::string>{}, {"-m", "1"}, {"-W", "-m", "16"}, {"-S", "0"}, {"-p"}}) {
    std::vector<std::string> args{"convert", "-f", "raw", "-O", "raw"};
    args.insert(args.end(), extra.begin(), extra.end());
    args.push_back(src);
    args.push_back(ours);
    auto r = run_netblk(args);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(file_hash(src), file_hash(ours));
    EXPECT_EQ(run({"qemu-img", "compare", "-f", "raw", "-F", "raw", src, ours}).exit_code, 0);
  }
  ASSERT_EQ(run({"qemu-img", "convert", "-m", "1", "-f", "raw", "-O", "raw", src, theirs}, std::chrono::seconds(60)).exit_code, 0);
  EXPECT_EQ(file_hash(theirs), file_hash(ours));
  // Sparse output: holes stay holes (well under the 40 MiB of the image).
  auto info = json::parse(run_netblk({"info", "--output=json", ours}).out);
  EXPECT_LT(info["actual-size"].get<long>(), 10 << 20);

  // -S 0 allocates everything, zero areas too, as qemu-img's -S 0 does.
  for (const std::string fmt : {"raw", "qcow2"}) {
    const std::string full = dir / ("full." + fmt);
    ASSERT_EQ(run_netblk({"convert", "-S", "0", "-f", "raw", "-O", fmt, src, full}).exit_code, 0);
    EXPECT_EQ(run({"qemu-img", "compare", "-f", "raw", "-F", fmt, src, full}).exit_code, 0) << fmt;
    auto map = json::parse(run({"qemu-img", "map", "--output=json", "-f", fmt, full}).out);
    for (const auto& e : map) EXPECT_TRUE(e["data"].get<bool>()) << fmt << ": " << e.dump();
    EXPECT_GE(json::parse(run_netblk({"info", "--output=json", full}).out)["actual-size"].get<long>(), 40 << 20) << fmt;
  }

  // -n into an existing image full of other data: zero areas must be written.
  std::string dirty = dir / "dirty.raw";
  write_pattern_file(dirty, 40 << 20, 9);
  ASSERT_EQ(run_netblk({"convert", "-n", "-f", "raw", "-O", "raw", src, dirty}).exit_code, 0);
  EXPECT_EQ(file_hash(src), file_hash(dirty));
}

TEST(CliLocal, CompareAgreesWithQemuImg) {
  TempDir dir;
  std::string a = dir / "a.raw", b = dir / "b.raw", c = dir / "c.raw", d = dir / "d.raw";
  make_mixed_image(a);
  ASSERT_EQ(run({"cp", "--sparse=always", a, b}).exit_code, 0);
  auto same = run_netblk({"compare", a, b});
  EXPECT_EQ(same.exit_code, 0);
  EXPECT_EQ(same.out, "Images are identical.\n");
  EXPECT_EQ(run({"qemu-img", "compare", a, b}).exit_code, 0);

  // One byte changed.
  FILE* f = std::fopen(b.c_str(), "r+b");
  std::fseek(f, 12345678, SEEK_SET);
  std::fputc('x', f);
  std::fclose(f);
  auto differ = run_netblk({"compare", a, b});
  auto qdiffer = run({"qemu-img", "compare", a, b});
  EXPECT_EQ(differ.exit_code, 1);
  EXPECT_EQ(qdiffer.exit_code, 1);
  EXPECT_EQ(differ.out, qdiffer.out);

  // Larger image with a zero tail: identical unless strict; with data in the tail: differ.
  ASSERT_EQ(run({"cp", "--sparse=always", a, c}).exit_code, 0);
  ASSERT_EQ(run({"truncate", "-s", "48M", c}).exit_code, 0);
  for (auto strict : {false, true}) {
    std::vector<std::string> args{"compare"};
    if (strict) args.push_back("-s");
    args.push_back(a);
    args.push_back(c);
    auto ours = run_netblk(args);
    std::vector<std::string> qargs{"qemu-img"};
    qargs.insert(qargs.end(), args.begin(), args.end());
    auto theirs = run(qargs);
    EXPECT_EQ(ours.exit_code, theirs.exit_code) << strict;
    EXPECT_EQ(ours.out, theirs.out) << strict;
  }
  f = std::fopen(c.c_str(), "r+b");
  std::fseek(f, (44 << 20) + 7, SEEK_SET);
  std::fputc('y', f);
  std::fclose(f);
  auto tail = run_netblk({"compare", a, c});
  auto qtail = run({"qemu-img", "compare", a, c});
  EXPECT_EQ(tail.exit_code, 1);
  EXPECT_EQ(qtail.exit_code, 1);
  EXPECT_EQ(tail.out, qtail.out);

  // Errors exit 2, as qemu-img.
  EXPECT_EQ(run_netblk({"compare", a, dir / "missing.raw"}).exit_code, 2);
  (void)d;
}

TEST(CliLocal, MapAgreesWithQemuImg) {
  TempDir dir;
  std::string a = dir / "a.raw";
  make_mixed_image(a);
  auto ours = run_netblk({"map", "--output=json", a});
  auto theirs = run({"qemu-img", "map", "--output=json", a});
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  EXPECT_EQ(json::parse(ours.out), json::parse(theirs.out));
  auto human = run_netblk({"map", a});
  auto qhuman = run({"qemu-img", "map", a});
  EXPECT_EQ(human.out, qhuman.out);
}

TEST(CliLocal, MalformedInputIsAOneLineError) {
  TempDir dir;
  std::string img = dir / "a.raw";
  ASSERT_EQ(run_netblk({"create", "-f", "raw", img, "1M"}).exit_code, 0);
  expect_one_line_error(run_netblk({"create", "-f", "raw", dir / "b.raw", "12Q"}), "12Q");
  expect_one_line_error(run_netblk({"create", "-f", "raw", dir / "b.raw", "-5"}), "-5");
  expect_one_line_error(run_netblk({"create", "-f", "raw", dir / "b.raw", "99999999999999999999"}), "too large");
  expect_one_line_error(run_netblk({"create", "-f", "raw", dir / "b.raw", "16E"}), "too large");
  expect_one_line_error(run_netblk({"create", "-f", "nosuch", dir / "b.raw", "1M"}), "Unknown file format 'nosuch'");
  expect_one_line_error(run_netblk({"create", "-f", "raw", "-o", "foo=1", dir / "b.raw", "1M"}), "'foo'");
  expect_one_line_error(run_netblk({"info", "json:{\"driver\":\"raw\""}), "Could not parse 'json:'");
  expect_one_line_error(run_netblk({"info", "json:{\"file\":{\"filename\":1}"}), "Could not parse 'json:'");
  expect_one_line_error(run_netblk({"info", "--image-opts", ",driver=raw"}), "expected 'key=value'");
  expect_one_line_error(run_netblk({"info", "--image-opts", "=raw"}), "empty key");
  expect_one_line_error(run_netblk({"info", "--image-opts", "driver=raw,driver=raw,file.filename=" + img}), "given twice");
  expect_one_line_error(run_netblk({"info", "--image-opts", "driver=nosuch,file.filename=" + img}), "Unknown driver 'nosuch'");
  expect_one_line_error(run_netblk({"info", "--image-opts", "driver=raw,file.filename=" + img + ",file.foo=1"}),
                        "Block protocol 'file' doesn't support the option 'foo'");
  expect_one_line_error(run_netblk({"info", "-f", "raw", "json:{\"driver\":\"raw\",\"size\":\"-1\",\"file\":\"" + img + "\"}"}),
                        "negative");
  expect_one_line_error(run_netblk({"info", "json:{\"driver\":\"raw\",\"size\":\"1.5x\",\"file\":\"" + img + "\"}"}), "1.5x");
  expect_one_line_error(run_netblk({"info", "json:{\"file.filename\":\"a\",\"file\":{\"filename\":\"b\"}}"}), "given twice");
  expect_one_line_error(run_netblk({"info", "nope://x"}), "Unknown protocol 'nope'");
  expect_one_line_error(run_netblk({"info", dir / "missing.raw"}), "missing.raw");
  expect_one_line_error(run_netblk({"info", "--frobnicate", img}), "frobnicate");
  expect_one_line_error(run_netblk({"convert", img}), "target");
  expect_one_line_error(run_netblk({"info", "--drive", "file=" + img + ",cache=sometimes"}), "sometimes");
  expect_one_line_error(run_netblk({"info", "--object", "secret,id=s", img}), "'data' or 'file'");
}

// convert's numeric flags: qemu-img's limits, and its words for anything outside them.
TEST(CliLocal, ConvertFlagsHaveQemuImgsLimits) {
  TempDir dir;
  std::string img = dir / "a.raw";
  ASSERT_EQ(run_netblk({"create", "-f", "raw", img, "1M"}).exit_code, 0);
  for (const std::string flag : {"-S", "-m"}) {
    const std::vector<std::string> bad =
        flag == "-S" ? std::vector<std::string>{"17M", "1E", "100", "16777217", "-512"}
                     : std::vector<std::string>{"17", "0", "-1", "99999999999999999999"};
    for (const auto& value : bad) {
      auto ours = run_netblk({"convert", flag, value, "-O", "raw", img, dir / "out.raw"});
      auto theirs = run({"qemu-img", "convert", flag, value, "-O", "raw", img, dir / "q.raw"});
      ASSERT_NE(theirs.exit_code, 0) << flag << " " << value;
      expect_one_line_error(ours, "Invalid");
      // The same sentence as qemu-img ("qemu-img: " for "netblk: "), on one line where
      // qemu-img wraps it onto a second.
      std::string expected, line;
      std::istringstream lines(theirs.err);
      while (std::getline(lines, line)) {
        if (!expected.empty()) expected += ' ';
        expected.append(line, 10, std::string::npos);
      }
      EXPECT_EQ(ours.err, "netblk: " + expected + "\n") << flag << " " << value;
    }
  }
  for (const std::string value : {"16M", "0", "512", "4k"})
    EXPECT_EQ(run_netblk({"convert", "-S", value, "-O", "raw", img, dir / "out.raw"}).exit_code, 0) << value;
  for (const std::string value : {"1", "16"})
    EXPECT_EQ(run_netblk({"convert", "-m", value, "-O", "raw", img, dir / "out.raw"}).exit_code, 0) << value;
}

// An image as its own backing file: QEMU's words, and no file is left behind.
TEST(CliLocal, CreateRefusesAnImageAsItsOwnBacking) {
  TempDir dir;
  const std::string self = dir / "self.qcow2";
  for (const std::string& backing : {self, dir.path() + "/./self.qcow2", std::string("self.qcow2")}) {
    // A relative backing name is resolved against the image's directory.
    auto r = run_netblk({"create", "-f", "qcow2", "-b", backing, "-F", "qcow2", self, "1M"});
    expect_one_line_error(r, "Trying to create");
    if (backing == self) {
      EXPECT_EQ(r.err, "netblk: " + self + ": Error: Trying to create an image with the same filename as the backing file\n");
    }
    EXPECT_NE(access(self.c_str(), F_OK), 0) << backing;
  }
  auto theirs = run({"qemu-img", "create", "-f", "qcow2", "-b", self, "-F", "qcow2", self, "1M"});
  EXPECT_EQ(theirs.err, "qemu-img: " + self + ": Error: Trying to create an image with the same filename as the backing file\n");
}

TEST(CliLocal, HelpForEveryVerb) {
  for (const char* verb : {"info", "create", "convert", "compare", "map"}) {
    auto r = run_netblk({verb, "--help"});
    EXPECT_EQ(r.exit_code, 0) << verb;
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << verb;
  }
  auto top = run_netblk({"--help"});
  EXPECT_EQ(top.exit_code, 0);
}

namespace {

// Local images for the drive checks: a raw file by its path, a raw file by a json: name
// (both writable), and a qcow2 image qemu-img made of the same bytes (read-only). One set
// for the whole binary.
struct LocalImages {
  LocalImages() {
    make_mixed_image(path_raw);
    make_mixed_image(json_raw);
    make_mixed_image(qcow2_source);
    auto r = run({"qemu-img", "convert", "-m", "1", "-f", "raw", "-O", "qcow2", qcow2_source, qcow2});
    if (r.exit_code != 0) throw std::runtime_error("qemu-img convert failed: " + r.err);
  }
  TempDir dir;
  std::string path_raw = dir / "path.raw", json_raw = dir / "json.raw", qcow2_source = dir / "qcow2-source.raw",
              qcow2 = dir / "image.qcow2";
};

std::string file_json(const std::string& driver, const std::string& path) {
  return "json:{\"driver\":\"" + driver + "\",\"file\":{\"driver\":\"file\",\"filename\":\"" + path + "\"}}";
}

// Bad names for local images in general.
std::vector<std::string> bad_local_names(const std::string& dir) {
  return {dir + "/no-such.raw", file_json("raw", dir + "/no-such.raw"), file_json("no-such-format", dir + "/path.raw"),
          "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"file\"}}", "json:{\"driver\":\"raw\""};
}

}  // namespace

NETBLK_DRIVE_CHECKS(
    CliLocal,
    DriveCheckParam{"file_path",
                    [] {
                      auto& s = shared<LocalImages>();
                      return DriveCase{.name = s.path_raw,
                                       .source = s.path_raw,
                                       .writable = true,
                                       .bad_names = bad_local_names(s.dir.path())};
                    }},
    DriveCheckParam{"raw_json",
                    [] {
                      auto& s = shared<LocalImages>();
                      return DriveCase{.name = file_json("raw", s.json_raw),
                                       .source = s.json_raw,
                                       .writable = true,
                                       .bad_names = bad_local_names(s.dir.path())};
                    }},
    DriveCheckParam{"qcow2", [] {
                      auto& s = shared<LocalImages>();
                      auto bad = bad_local_names(s.dir.path());
                      bad.push_back(file_json("qcow2", s.qcow2_source));  // raw bytes are no qcow2 image
                      return DriveCase{.name = s.qcow2, .source = s.qcow2_source, .bad_names = bad};
                    }});
