#include "protocols/curl/headers.hpp"

namespace netblk::curlproto {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

}  // namespace

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

std::optional<std::uint64_t> parse_decimal(std::string_view text) {
  if (text.empty() || text.size() > 20) return std::nullopt;
  std::uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    std::uint64_t d = static_cast<std::uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  return v;
}

bool split_header(std::string_view line, std::string_view& name, std::string_view& value) {
  auto colon = line.find(':');
  if (colon == std::string_view::npos || colon == 0) return false;
  name = trim(line.substr(0, colon));
  if (name.empty()) return false;
  for (char c : name)
    if (is_space(c)) return false;  // "HTTP/1.1 200 OK: x" is not a header
  value = trim(line.substr(colon + 1));
  return true;
}

std::optional<ContentRange> parse_content_range(std::string_view value) {
  value = trim(value);
  // The unit, case-insensitive, then whitespace.
  if (value.size() < 6 || !iequals(value.substr(0, 5), "bytes") || !is_space(value[5])) return std::nullopt;
  value = trim(value.substr(6));
  auto slash = value.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  std::string_view range = trim(value.substr(0, slash));
  std::string_view total = trim(value.substr(slash + 1));
  ContentRange cr;
  if (total != "*") {
    cr.total = parse_decimal(total);
    if (!cr.total) return std::nullopt;
  }
  if (range == "*") {
    if (!cr.total) return std::nullopt;  // "*/*" says nothing
    return cr;
  }
  auto dash = range.find('-');
  if (dash == std::string_view::npos) return std::nullopt;
  auto first = parse_decimal(trim(range.substr(0, dash)));
  auto last = parse_decimal(trim(range.substr(dash + 1)));
  if (!first || !last || *last < *first) return std::nullopt;
  if (cr.total && *last >= *cr.total) return std::nullopt;
  cr.first = first;
  cr.last = last;
  return cr;
}

void parse_header_line(std::string_view line, ResponseFacts& facts) {
  std::string_view t = trim(line);
  if (t.size() >= 5 && iequals(t.substr(0, 5), "HTTP/")) {
    // "HTTP/1.1 206 Partial Content" or "HTTP/2 200": a new response begins.
    facts.reset();
    auto sp = t.find(' ');
    if (sp == std::string_view::npos) return;
    std::string_view rest = trim(t.substr(sp + 1));
    std::string_view code = rest.substr(0, rest.find(' '));
    if (code.size() == 3) {
      if (auto v = parse_decimal(code)) facts.status = static_cast<int>(*v);
    }
    return;
  }
  std::string_view name, value;
  if (!split_header(t, name, value)) return;
  if (iequals(name, "Content-Length")) {
    facts.content_length = parse_decimal(value);
  } else if (iequals(name, "Content-Range")) {
    facts.content_range = parse_content_range(value);
  } else if (iequals(name, "Accept-Ranges")) {
    // A list of units: "bytes", "none", or e.g. "bytes, other".
    facts.accept_ranges = false;
    facts.ranges_refused = false;
    std::size_t pos = 0;
    while (pos <= value.size()) {
      auto comma = value.find(',', pos);
      std::string_view unit = trim(value.substr(pos, comma == std::string_view::npos ? std::string_view::npos : comma - pos));
      if (iequals(unit, "bytes")) facts.accept_ranges = true;
      if (iequals(unit, "none")) facts.ranges_refused = true;
      if (comma == std::string_view::npos) break;
      pos = comma + 1;
    }
  }
}

}  // namespace netblk::curlproto
