#include "spec/config_groups.hpp"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>

#include "spec/tree.hpp"

namespace netblk::spec {
namespace {

struct Registry {
  std::mutex mutex;
  std::map<std::string, std::vector<std::string>> keys;              // declared groups
  std::map<std::string, std::vector<std::unique_ptr<Json>>> groups;  // added, in order
};

Registry& registry() {
  static Registry r;
  return r;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

// `"text"` without its quotes; nullopt when `s` is not one quoted string.
std::optional<std::string> unquote(std::string_view s) {
  if (s.size() < 2 || s.front() != '"' || s.back() != '"') return std::nullopt;
  s = s.substr(1, s.size() - 2);
  if (s.find('"') != std::string_view::npos) return std::nullopt;
  return std::string(s);
}

}  // namespace

void register_config_group(const std::string& name, std::vector<std::string> keys) {
  auto& r = registry();
  std::lock_guard lock(r.mutex);
  r.keys[name] = std::move(keys);
}

void add_config_group(const std::string& name, Json options) {
  auto& r = registry();
  std::lock_guard lock(r.mutex);
  auto declared = r.keys.find(name);
  if (declared == r.keys.end()) throw Error(EINVAL, "There is no option group '" + name + "'");
  if (!options.is_object()) throw Error(EINVAL, "Invalid options for group '" + name + "'");
  Json flat = Json::object();
  for (auto& [key, value] : flatten(options)) {
    if (key != "id" && std::find(declared->second.begin(), declared->second.end(), key) == declared->second.end())
      throw Error(EINVAL, "Invalid parameter '" + key + "'");
    flat[key] = scalar_text(value);
  }
  auto& list = r.groups[name];
  if (auto id = flat.find("id"); id != flat.end()) {
    for (const auto& g : list)
      if (g->contains("id") && (*g)["id"] == *id)
        throw Error(EINVAL, "Duplicate ID '" + id->get<std::string>() + "' for " + name);
  }
  list.push_back(std::make_unique<Json>(std::move(flat)));
}

const Json* find_config_group(const std::string& name, const std::string& id) {
  auto& r = registry();
  std::lock_guard lock(r.mutex);
  auto it = r.groups.find(name);
  if (it == r.groups.end()) return nullptr;
  for (const auto& g : it->second)
    if (auto i = g->find("id"); i != g->end() && *i == id) return g.get();
  for (const auto& g : it->second)
    if (!g->contains("id")) return g.get();
  return nullptr;
}

void clear_config_groups() {
  auto& r = registry();
  std::lock_guard lock(r.mutex);
  r.groups.clear();
}

void read_config_text(std::string_view text, const std::string& file_name) {
  std::string group;
  Json current;
  bool open = false;
  auto flush = [&] {
    if (open) add_config_group(group, std::move(current));
    open = false;
  };
  int line_no = 0;
  while (!text.empty()) {
    auto nl = text.find('\n');
    std::string_view line = trim(text.substr(0, nl));
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    ++line_no;
    if (line.empty() || line.front() == '#') continue;
    auto bad = [&]() -> Error {
      return Error(EINVAL, file_name + ":" + std::to_string(line_no) + ": parse error");
    };
    if (line.front() == '[') {
      if (line.back() != ']') throw bad();
      std::string_view inside = trim(line.substr(1, line.size() - 2));
      auto space = inside.find_first_of(" \t");
      flush();
      group = std::string(inside.substr(0, space));
      current = Json::object();
      if (space != std::string_view::npos) {
        auto id = unquote(trim(inside.substr(space)));
        if (!id) throw bad();
        current["id"] = *id;
      }
      if (group.empty()) throw bad();
      open = true;
      continue;
    }
    auto eq = line.find('=');
    if (eq == std::string_view::npos || !open) throw bad();
    std::string key(trim(line.substr(0, eq)));
    auto value = unquote(trim(line.substr(eq + 1)));
    if (key.empty() || !value) throw bad();
    current[key] = *value;
  }
  flush();
}

void read_config_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(ENOENT, "Cannot read config file '" + path + "': " + std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  read_config_text(ss.str(), path);
}

}  // namespace netblk::spec
