// QEMU's size and bool syntaxes.
#include <gtest/gtest.h>

#include "core/parse.hpp"
#include "netblk/error.hpp"

using netblk::Error;
using netblk::parse_bool;
using netblk::parse_size;

TEST(ParseSize, PlainAndSuffixes) {
  EXPECT_EQ(parse_size("512"), 512u);
  EXPECT_EQ(parse_size("0"), 0u);
  EXPECT_EQ(parse_size("64k"), 64u * 1024);
  EXPECT_EQ(parse_size("64K"), 64u * 1024);
  EXPECT_EQ(parse_size("1M"), 1u << 20);
  EXPECT_EQ(parse_size("1m"), 1u << 20);
  EXPECT_EQ(parse_size("2G"), 2ull << 30);
  EXPECT_EQ(parse_size("1T"), 1ull << 40);
  EXPECT_EQ(parse_size("1P"), 1ull << 50);
  EXPECT_EQ(parse_size("1E", "size", UINT64_MAX), 1ull << 60);
  EXPECT_EQ(parse_size("100b"), 100u);
  EXPECT_EQ(parse_size("100B"), 100u);
  EXPECT_EQ(parse_size("0x1000"), 4096u);
}

TEST(ParseSize, Fractions) {
  EXPECT_EQ(parse_size("1.5G"), 3ull << 29);
  EXPECT_EQ(parse_size("0.5k"), 512u);
  EXPECT_EQ(parse_size("1.25M"), 1310720u);
  EXPECT_THROW(parse_size("1.5"), Error);     // a fraction needs a suffix
  EXPECT_THROW(parse_size("1.1b"), Error);    // not whole bytes
  EXPECT_THROW(parse_size("1."), Error);
  EXPECT_THROW(parse_size("0x1.5k"), Error);  // no hex fractions
}

TEST(ParseSize, Rejects) {
  EXPECT_THROW(parse_size(""), Error);
  EXPECT_THROW(parse_size("-1"), Error);
  EXPECT_THROW(parse_size("-1k"), Error);
  EXPECT_THROW(parse_size("12x"), Error);
  EXPECT_THROW(parse_size("1kk"), Error);
  EXPECT_THROW(parse_size("k"), Error);
  EXPECT_THROW(parse_size(" 1"), Error);
  EXPECT_THROW(parse_size("+1"), Error);
  EXPECT_THROW(parse_size("8E"), Error);  // past INT64_MAX for an image size
  EXPECT_THROW(parse_size("99999999999999999999"), Error);
  EXPECT_THROW(parse_size("16E", "size", UINT64_MAX), Error);
  EXPECT_EQ(parse_size("9223372036854775807"), 9223372036854775807ull);
  EXPECT_THROW(parse_size("9223372036854775808"), Error);
}

TEST(ParseSize, MessageNamesInput) {
  try {
    parse_size("12q", "Parameter 'readahead'");
    FAIL();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("readahead"), std::string::npos) << m;
    EXPECT_NE(m.find("12q"), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos);
  }
}

TEST(ParseBool, AllSpellings) {
  for (const char* t : {"on", "yes", "true", "y"}) EXPECT_TRUE(parse_bool(t)) << t;
  for (const char* f : {"off", "no", "false", "n"}) EXPECT_FALSE(parse_bool(f)) << f;
  EXPECT_THROW(parse_bool("maybe"), Error);
  EXPECT_THROW(parse_bool(""), Error);
  EXPECT_THROW(parse_bool("ON"), Error);
}
