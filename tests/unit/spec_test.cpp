// The drive syntaxes: k=v lists, dotted keys and lists, json: names, typed options.
#include <gtest/gtest.h>

#include "error_of.hpp"
#include "core/secrets.hpp"
#include "spec/options.hpp"
#include "spec/tree.hpp"

using namespace netblk;
using namespace netblk::spec;

namespace {
using netblk::test::error_of;
}  // namespace

TEST(Keyval, Simple) {
  Json t = parse_keyval("driver=qcow2,file.filename=/tmp/a.qcow2");
  EXPECT_EQ(t, Json::parse(R"({"driver":"qcow2","file":{"filename":"/tmp/a.qcow2"}})"));
}

TEST(Keyval, CommaEscape) {
  Json t = parse_keyval("file.filename=a,,b,,,,c,driver=raw");
  EXPECT_EQ(t["file"]["filename"], "a,b,,c");
  EXPECT_EQ(t["driver"], "raw");
  // QEMU's documented backing file example: commas inside json: doubled.
  Json b = parse_keyval(R"(backing_file=json:{"file.driver":"http",, "file.url":"http://h/d"},backing_fmt=raw)");
  EXPECT_EQ(b["backing_file"], R"(json:{"file.driver":"http", "file.url":"http://h/d"})");
  EXPECT_EQ(b["backing_fmt"], "raw");
}

TEST(Keyval, ListsFromIndices) {
  Json t = parse_keyval("file.server.0.host=h0,file.server.0.port=1,file.server.1.host=h1");
  EXPECT_EQ(t, Json::parse(R"({"file":{"server":[{"host":"h0","port":"1"},{"host":"h1"}]}})"));
}

TEST(Keyval, EmptyValueAndTrailingComma) {
  Json t = parse_keyval("export=,driver=nbd,");
  EXPECT_EQ(t["export"], "");
  EXPECT_EQ(t["driver"], "nbd");
}

TEST(Keyval, ImpliedKey) {
  Json t = parse_keyval("secret,id=s0,data=pw", "qom-type");
  EXPECT_EQ(t["qom-type"], "secret");
  EXPECT_EQ(t["id"], "s0");
}

TEST(Keyval, Errors) {
  EXPECT_NE(error_of([] { parse_keyval("a=1,a=2"); }).find("'a' given twice"), std::string::npos);
  EXPECT_NE(error_of([] { parse_keyval("a=1,a.b=2"); }).find("both a value and a map"), std::string::npos);
  EXPECT_NE(error_of([] { parse_keyval("a.b=2,a=1"); }).find("both a value and a map"), std::string::npos);
  EXPECT_NE(error_of([] { parse_keyval("s.0=a,s.2=b"); }).find("'s.1' missing"), std::string::npos);
  EXPECT_NE(error_of([] { parse_keyval("s.0=a,s.x=b"); }).find("mixes"), std::string::npos);
  EXPECT_NE(error_of([] { parse_keyval("=v"); }).find("empty key"), std::string::npos);
  EXPECT_NE(error_of([] { parse_keyval(",a=1"); }).find("expected 'key=value'"), std::string::npos);
  EXPECT_EQ(parse_keyval("a=1,,")["a"], "1,");
  EXPECT_NE(error_of([] { parse_keyval("novalue"); }).find("Expected '=' after parameter 'novalue'"), std::string::npos);
  EXPECT_NE(error_of([] { parse_keyval("a..b=1"); }).find("empty key component"), std::string::npos);
}

TEST(JsonName, NestedAndDottedMerge) {
  Json t = parse_json_name(R"(json:{"driver":"raw","file.driver":"http","file":{"url":"http://h/x"}})");
  EXPECT_EQ(t, Json::parse(R"({"driver":"raw","file":{"driver":"http","url":"http://h/x"}})"));
}

TEST(JsonName, QemuDocExamples) {
  // From QEMU's documentation of the curl driver.
  Json t = parse_json_name(
      R"(json:{"file.driver":"https","file.url":"https://h/x.iso","file.sslverify":"off","file.readahead":"64k","file.timeout":10})");
  EXPECT_EQ(t["file"]["timeout"], 10);
  EXPECT_EQ(t["file"]["sslverify"], "off");
  Json n = parse_json_name(R"(json:{"driver":"nbd","server":{"type":"unix","path":"/s"},"export":"e"})");
  EXPECT_EQ(n["server"]["path"], "/s");
  Json l = parse_json_name(R"(json:{"file.server":[{"host":"a"},{"host":"b"}]})");
  EXPECT_EQ(l["file"]["server"][1]["host"], "b");
}

TEST(JsonName, Errors) {
  EXPECT_NE(error_of([] { parse_json_name(R"(json:{"driver":"raw")"); }).find("Could not parse 'json:'"), std::string::npos);
  EXPECT_NE(error_of([] { parse_json_name("json:[1,2]"); }).find("expected a JSON object"), std::string::npos);
  EXPECT_NE(error_of([] { parse_json_name(R"(json:{"file.driver":"a","file":{"driver":"b"}})"); }).find("given twice"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_json_name(R"(json:{"file":"x","file.driver":"b"})"); }).find("both a value and a map"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_json_name(R"(json:{"":1})"); }).find("empty key"), std::string::npos);
  EXPECT_TRUE(parse_json_name(R"(json:{"backing":null})")["backing"].is_null());  // QEMU: no backing file
  Options nulls(parse_json_name(R"(json:{"a":null})"), Options::Kind::protocol, "x");
  EXPECT_NE(error_of([&] { nulls.str("a"); }).find("expects a value, not null"), std::string::npos);
  EXPECT_NE(error_of([] { parse_json_name("json:"); }).find("Could not parse"), std::string::npos);
}

TEST(JsonName, MessagesAreOneLine) {
  for (const char* bad : {"json:{", "json:{\"a\":}", "json:{\"a\":1,}", "json:{\"a\" 1}"}) {
    std::string m = error_of([&] { parse_json_name(bad); });
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    EXPECT_NE(m.find("json:"), std::string::npos) << m;
  }
}

TEST(Options, TypedGettersAcceptStringsAndJsonTypes) {
  Options o(Json::parse(R"({"a":"64k","b":65536,"c":"on","d":true,"e":"7","f":7})"), Options::Kind::protocol, "x");
  EXPECT_EQ(o.size("a"), 65536u);
  EXPECT_EQ(o.size("b"), 65536u);
  EXPECT_EQ(o.boolean("c"), true);
  EXPECT_EQ(o.boolean("d"), true);
  EXPECT_EQ(o.uint("e"), 7u);
  EXPECT_EQ(o.uint("f"), 7u);
  EXPECT_NO_THROW(o.finish());
}

TEST(Options, UnknownOptionWording) {
  Options p(Json::parse(R"({"filename":"x","foo":"1"})"), Options::Kind::protocol, "file");
  p.str("filename");
  EXPECT_EQ(error_of([&] { p.finish(); }), "Block protocol 'file' doesn't support the option 'foo'");
  Options f(Json::parse(R"({"bar":"1"})"), Options::Kind::format, "raw");
  EXPECT_EQ(error_of([&] { f.finish(); }), "Block format 'raw' does not support the option 'bar'");
  Options g(Json::parse(R"({"server":{"host":"h","bogus":1}})"), Options::Kind::protocol, "nbd");
  Options s = g.group("server");
  s.str("host");
  EXPECT_EQ(error_of([&] { s.finish(); }), "Block protocol 'nbd' doesn't support the option 'server.bogus'");
}

TEST(Options, BadValues) {
  Options o(Json::parse(R"({"a":"-5","b":-5,"c":"perhaps","d":{"x":1},"e":"12Q"})"), Options::Kind::protocol, "x");
  EXPECT_NE(error_of([&] { o.size("a"); }).find("negative"), std::string::npos);
  EXPECT_NE(error_of([&] { o.size("b"); }).find("negative"), std::string::npos);
  EXPECT_NE(error_of([&] { o.boolean("c"); }).find("'c'"), std::string::npos);
  EXPECT_NE(error_of([&] { o.str("d"); }).find("expects a value"), std::string::npos);
  EXPECT_NE(error_of([&] { o.size("e"); }).find("12Q"), std::string::npos);
  EXPECT_NE(error_of([&] { o.required_str("missing"); }).find("'missing' is required"), std::string::npos);
}

TEST(Options, Seconds) {
  Options o(Json::parse(R"({"a":"30","b":7,"c":"-1","d":-1,"e":"soon","f":"11","g":{"x":1}})"), Options::Kind::protocol,
            "x", "server.");
  EXPECT_EQ(*o.seconds("a"), std::chrono::seconds(30));
  EXPECT_EQ(*o.seconds("b"), std::chrono::seconds(7));
  // A tree built in code holds signed integers: positive ones are numbers like any other.
  Options signed_values(Json{{"t", 5}, {"s", 4096}, {"u", 3}}, Options::Kind::protocol, "x");
  EXPECT_EQ(*signed_values.seconds("t"), std::chrono::seconds(5));
  EXPECT_EQ(*signed_values.size("s"), 4096u);
  EXPECT_EQ(*signed_values.uint("u"), 3u);
  EXPECT_FALSE(o.seconds("missing"));
  EXPECT_EQ(error_of([&] { o.seconds("c"); }), "Parameter 'server.c' must not be negative");
  EXPECT_EQ(error_of([&] { o.seconds("d"); }), "Parameter 'server.d' must not be negative");
  EXPECT_EQ(error_of([&] { o.seconds("e"); }), "Parameter 'server.e' expects a number");
  EXPECT_EQ(error_of([&] { o.seconds("f", 10); }), "Parameter 'server.f' must be at most 10");
  EXPECT_NE(error_of([&] { o.seconds("g"); }).find("expects a value"), std::string::npos);
}

TEST(Options, SecretIsLookedUpByIdAndTheIdIsKept) {
  secrets::define(Json::parse(R"({"qom-type":"secret","id":"pw","data":"hunter2"})"));
  Options o(Json::parse(R"({"password-secret":"pw","other-secret":"nope"})"), Options::Kind::protocol, "x");
  auto s = o.secret("password-secret");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->id, "pw");
  EXPECT_EQ(s->value, "hunter2");
  EXPECT_FALSE(o.secret("cookie-secret"));
  EXPECT_NE(error_of([&] { o.secret("other-secret"); }).find("No secret with id 'nope'"), std::string::npos);
  secrets::clear();
}

TEST(JsonName, NestingIsBoundedWithAOneLineError) {
  // 40,000 nested lists used to overflow the stack (SIGSEGV).
  const std::string deep = "json:{\"a\":" + std::string(40000, '[') + std::string(40000, ']') + "}";
  EXPECT_EQ(error_of([&] { parse_json_name(deep); }),
            "Could not parse 'json:' name: JSON nesting depth limit exceeded (1024 levels)");
  // As deep as allowed still parses.
  const std::string ok = "json:{\"a\":" + std::string(1000, '[') + std::string(1000, ']') + "}";
  EXPECT_EQ(error_of([&] { parse_json_name(ok); }), "(no error)");
}

TEST(Keyval, DottedKeysAreBoundedWithAOneLineError) {
  std::string key = "a";
  for (int i = 0; i < 30000; ++i) key += ".a";
  const std::string text = "driver=raw," + key + "=1";
  EXPECT_EQ(error_of([&] { parse_keyval(text); }),
            "Invalid parameter '" + key.substr(0, 60) + "...': nested more than 1024 levels deep");
}

TEST(JsonName, NumberOverflowIsAnError) {
  // Found by fuzz_spec_json: nlohmann reports this as out_of_range, not parse_error.
  EXPECT_NE(error_of([] { parse_json_name("json:{\"a\":4440e444444444444}"); }).find("Could not parse 'json:'"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_json_name("json:8e888"); }).find("Could not parse 'json:'"), std::string::npos);
}
