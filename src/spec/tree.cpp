#include "spec/tree.hpp"

#include <algorithm>
#include <charconv>
#include <map>
#include <stdexcept>

namespace netblk::spec {
namespace {

[[noreturn]] void fail(const std::string& msg) { throw Error(EINVAL, msg); }

bool is_index(std::string_view s) {
  return !s.empty() && s.size() < 10 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
         (s.size() == 1 || s[0] != '0');
}

// A name's text, cut short for a message (a hostile name may be megabytes long).
std::string shortened(const std::string& text) {
  return text.size() <= 60 ? text : text.substr(0, 60) + "...";
}

std::vector<std::string> split_key(const std::string& key) {
  if (std::count(key.begin(), key.end(), '.') >= static_cast<std::ptrdiff_t>(kMaxNesting))
    fail("Invalid parameter '" + shortened(key) + "': nested more than " + std::to_string(kMaxNesting) +
         " levels deep");
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (true) {
    std::size_t dot = key.find('.', start);
    parts.push_back(key.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  for (const auto& p : parts)
    if (p.empty()) fail("Invalid parameter '" + key + "': empty key component");
  return parts;
}

// Intermediate tree with std::map so indices can be checked before turning into arrays.
struct Tmp {
  bool leaf = false;
  Json value;
  std::map<std::string, Tmp> children;
  std::vector<std::string> order;  // insertion order of children
};

Json finish(const Tmp& t, const std::string& path) {
  if (t.leaf) return t.value;
  bool any_index = false, any_name = false;
  for (const auto& [k, _] : t.children) (is_index(k) ? any_index : any_name) = true;
  if (any_index && any_name)
    fail("Parameter '" + path + "' mixes list indices and named keys");
  if (any_index) {
    Json arr = Json::array();
    for (std::size_t i = 0; i < t.children.size(); ++i) {
      auto it = t.children.find(std::to_string(i));
      std::string p = path.empty() ? std::to_string(i) : path + "." + std::to_string(i);
      if (it == t.children.end()) fail("Parameter '" + p + "' missing (list indices must be 0, 1, 2, ... without gaps)");
      arr.push_back(finish(it->second, p));
    }
    return arr;
  }
  Json obj = Json::object();
  for (const auto& k : t.order) obj[k] = finish(t.children.at(k), path.empty() ? k : path + "." + k);
  return obj;
}

void flatten_into(const Json& v, const std::string& prefix, FlatOptions& out) {
  if (v.is_object()) {
    if (v.empty() && !prefix.empty()) out.emplace_back(prefix, Json::object());
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (it.key().empty()) fail("Invalid parameter '': empty key" + (prefix.empty() ? std::string() : " under '" + prefix + "'"));
      flatten_into(it.value(), prefix.empty() ? it.key() : prefix + "." + it.key(), out);
    }
  } else if (v.is_array()) {
    for (std::size_t i = 0; i < v.size(); ++i)
      flatten_into(v[i], prefix.empty() ? std::to_string(i) : prefix + "." + std::to_string(i), out);
  } else {
    out.emplace_back(prefix, v);
  }
}

}  // namespace

FlatOptions parse_keyval_flat(std::string_view text, std::string_view implied_key) {
  FlatOptions out;
  std::size_t i = 0;
  bool first = true;
  auto read_value = [&](std::string& value) {
    while (i < text.size()) {
      if (text[i] == ',') {
        if (i + 1 < text.size() && text[i + 1] == ',') {
          value += ',';
          i += 2;
          continue;
        }
        break;
      }
      value += text[i++];
    }
  };
  if (text.empty()) return out;
  while (i <= text.size()) {
    std::size_t key_start = i;
    while (i < text.size() && text[i] != '=' && text[i] != ',') ++i;
    std::string key(text.substr(key_start, i - key_start));
    if (i >= text.size() || text[i] == ',') {
      if (first && !implied_key.empty()) {
        // The implied key's value may itself contain ",,".
        i = key_start;
        std::string value;
        read_value(value);
        out.emplace_back(std::string(implied_key), value);
      } else if (key.empty()) {
        fail("Invalid parameter list '" + std::string(text) + "': expected 'key=value' before ','");
      } else {
        fail("Expected '=' after parameter '" + key + "'");
      }
    } else {
      if (key.empty()) fail("Invalid parameter '': empty key in '" + std::string(text) + "'");
      ++i;  // '='
      std::string value;
      read_value(value);
      out.emplace_back(key, value);
    }
    first = false;
    if (i >= text.size()) break;
    ++i;  // ','
    if (i == text.size()) break;  // a trailing comma is accepted, as QEMU does
  }
  return out;
}

Json crumple(const FlatOptions& flat) {
  Tmp root;
  for (const auto& [key, value] : flat) {
    auto parts = split_key(key);
    Tmp* node = &root;
    std::string path;
    for (std::size_t p = 0; p < parts.size(); ++p) {
      path += (p ? "." : "") + parts[p];
      if (node->leaf) fail("Parameter '" + path.substr(0, path.rfind('.')) + "' is both a value and a map");
      auto [it, inserted] = node->children.try_emplace(parts[p]);
      if (inserted) node->order.push_back(parts[p]);
      node = &it->second;
      bool last = p + 1 == parts.size();
      if (last) {
        if (node->leaf) fail("Parameter '" + key + "' given twice");
        if (!node->children.empty()) fail("Parameter '" + key + "' is both a value and a map");
        if (value.is_object() && value.empty()) {
          // An empty object from flatten(): a map with no keys yet.
        } else {
          node->leaf = true;
          node->value = value;
        }
      }
    }
  }
  return finish(root, "");
}

FlatOptions flatten(const Json& tree) {
  FlatOptions out;
  flatten_into(tree, "", out);
  return out;
}

Json parse_keyval(std::string_view text, std::string_view implied_key) {
  return crumple(parse_keyval_flat(text, implied_key));
}

bool is_json_name(std::string_view text) noexcept { return text.starts_with("json:"); }

Json parse_json_name(std::string_view text) {
  if (!is_json_name(text)) fail("'" + std::string(text) + "' is not a json: name");
  Json parsed;
  try {
    // Trees are walked recursively (flatten, crumple, destruction): bound the depth while
    // parsing, as QEMU's JSON parser does.
    bool too_deep = false;
    auto bound_depth = [&too_deep](int depth, nlohmann::json::parse_event_t, Json&) {
      if (depth > static_cast<int>(kMaxNesting)) {
        too_deep = true;
        throw std::range_error("too deep");
      }
      return true;
    };
    try {
      parsed = Json::parse(text.substr(5), bound_depth);
    } catch (const std::range_error&) {
      if (!too_deep) throw;
      fail("Could not parse 'json:' name: JSON nesting depth limit exceeded (" + std::to_string(kMaxNesting) +
           " levels)");
    }
  } catch (const nlohmann::json::exception& e) {
    // parse_error says where ("parse error at line 1, column 12: ..."); out_of_range
    // reports a number too large. Drop nlohmann's "[json.exception...]" prefix.
    std::string what = e.what();
    auto pos = what.find("] ");
    fail("Could not parse 'json:' name: " + (pos == std::string::npos ? what : what.substr(pos + 2)));
  }
  if (!parsed.is_object()) fail("Could not parse 'json:' name: expected a JSON object");
  // null stays: QEMU's "backing": null means "no backing file". Readers of plain values
  // reject it (spec::Options).
  return crumple(flatten(parsed));
}

void merge(Json& base, const Json& extra) {
  FlatOptions flat = flatten(base);
  FlatOptions more = flatten(extra);
  flat.insert(flat.end(), more.begin(), more.end());
  base = crumple(flat);
}

std::string scalar_text(const Json& v) {
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

}  // namespace netblk::spec
