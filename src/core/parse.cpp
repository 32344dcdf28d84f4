#include "core/parse.hpp"

#include <cctype>
#include <cstdio>

#include "netblk/error.hpp"

namespace netblk {
namespace {

[[noreturn]] void bad(std::string_view what, std::string_view text, std::string_view why) {
  throw Error(EINVAL, std::string(what) + " '" + std::string(text) + "': " + std::string(why));
}

int digit_value(char c, int base) {
  int v;
  if (c >= '0' && c <= '9') v = c - '0';
  else if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
  else if (c >= 'A' && c <= 'F') v = c - 'A' + 10;
  else return -1;
  return v < base ? v : -1;
}

}  // namespace

std::uint64_t parse_uint(std::string_view text, std::string_view what, std::uint64_t max) {
  std::string_view s = text;
  int base = 10;
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    base = 16;
    s.remove_prefix(2);
  }
  if (s.empty()) bad(what, text, "expected a number");
  unsigned __int128 v = 0;
  for (char c : s) {
    int d = digit_value(c, base);
    if (d < 0) bad(what, text, text.starts_with('-') ? "must not be negative" : "expected a number");
    v = v * base + d;
    if (v > max) bad(what, text, "value too large");
  }
  return static_cast<std::uint64_t>(v);
}

std::uint64_t parse_size(std::string_view text, std::string_view what, std::uint64_t max) {
  std::string_view s = text;
  if (s.empty()) bad(what, text, "expected a size");
  if (s.front() == '-') bad(what, text, "must not be negative");
  if (s.front() == '+' || std::isspace(static_cast<unsigned char>(s.front())))
    bad(what, text, "expected a size");
  int base = 10;
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    base = 16;
    s.remove_prefix(2);
  }
  std::size_t i = 0;
  unsigned __int128 whole = 0;
  const unsigned __int128 limit = static_cast<unsigned __int128>(1) << 80;
  for (; i < s.size() && digit_value(s[i], base) >= 0; ++i) {
    whole = whole * base + digit_value(s[i], base);
    if (whole > limit) bad(what, text, "value too large");
  }
  if (i == 0) bad(what, text, "expected a size");
  // Fraction: kept as numerator/denominator so "1.5G" is exact.
  unsigned __int128 frac_num = 0, frac_den = 1;
  bool has_fraction = false;
  if (i < s.size() && s[i] == '.') {
    if (base != 10) bad(what, text, "hexadecimal sizes cannot have a fraction");
    has_fraction = true;
    ++i;
    std::size_t start = i;
    for (; i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])); ++i) {
      if (frac_den < static_cast<unsigned __int128>(1) << 60) {
        frac_num = frac_num * 10 + (s[i] - '0');
        frac_den *= 10;
      }
    }
    if (i == start) bad(what, text, "expected digits after '.'");
  }
  unsigned __int128 mult = 1;
  if (i < s.size()) {
    static constexpr std::string_view kSuffixes = "BKMGTPE";
    char c = static_cast<char>(std::toupper(static_cast<unsigned char>(s[i])));
    auto pos = kSuffixes.find(c);
    if (pos == std::string_view::npos || i + 1 != s.size())
      bad(what, text, "unknown size suffix (use b, k, M, G, T, P or E)");
    mult = static_cast<unsigned __int128>(1) << (10 * pos);
    ++i;
  } else if (has_fraction) {
    bad(what, text, "a fractional size needs a suffix");
  }
  unsigned __int128 value = whole * mult;
  if (has_fraction) {
    unsigned __int128 f = frac_num * mult;
    if (f % frac_den != 0) bad(what, text, "does not come to a whole number of bytes");
    value += f / frac_den;
  }
  if (value > max) bad(what, text, "value too large");
  return static_cast<std::uint64_t>(value);
}

bool parse_bool(std::string_view text, std::string_view what) {
  if (text == "on" || text == "yes" || text == "true" || text == "y") return true;
  if (text == "off" || text == "no" || text == "false" || text == "n") return false;
  bad(what, text, "expected on/off, yes/no or true/false");
}

}  // namespace netblk
