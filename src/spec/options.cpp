#include "spec/options.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "core/parse.hpp"
#include "core/secrets.hpp"
#include "spec/tree.hpp"

namespace netblk::spec {

Options::Options(Json tree, Kind kind, std::string driver, std::string prefix)
    : tree_(std::move(tree)), kind_(kind), driver_(std::move(driver)), prefix_(std::move(prefix)) {
  if (tree_.is_null()) tree_ = Json::object();
  if (!tree_.is_object())
    throw Error(EINVAL, "Parameter '" + (prefix_.empty() ? driver_ : prefix_.substr(0, prefix_.size() - 1)) +
                            "' expects an object of options");
}

bool Options::listing_keys() {
  static const bool on = [] {
    const char* v = std::getenv("NETBLK_LIST_OPTIONS");
    return v && *v && std::string_view(v) != "0";
  }();
  return on;
}

void Options::mark_used(const std::string& key) {
  used_.insert(key);
  if (!listing_keys()) return;
  static constexpr const char* kKinds[] = {"protocol", "format", "filter", "object", "create"};
  std::string driver = driver_.empty() ? "-" : driver_;
  std::replace(driver.begin(), driver.end(), ' ', '_');  // "NBD server" (a nested address)
  std::fprintf(stderr, "netblk-option %s %s %s%s\n", kKinds[static_cast<int>(kind_)], driver.c_str(),
               prefix_.c_str(), key.c_str());
}

void Options::ignore(const std::string& key) { mark_used(key); }

void Options::invalid(const std::string& key, const std::string& why) const {
  throw Error(EINVAL, "Parameter '" + prefix_ + key + "' " + why);
}

const Json* Options::find(const std::string& key) {
  mark_used(key);
  auto it = tree_.find(key);
  if (it == tree_.end()) return nullptr;
  if (it->is_object() || it->is_array()) invalid(key, "expects a value, not a group of options");
  if (it->is_null()) invalid(key, "expects a value, not null");
  return &*it;
}

std::optional<std::string> Options::str(const std::string& key) {
  const Json* v = find(key);
  if (!v) return std::nullopt;
  return scalar_text(*v);
}

std::string Options::str(const std::string& key, const std::string& fallback) {
  return str(key).value_or(fallback);
}

std::string Options::required_str(const std::string& key) {
  auto v = str(key);
  if (!v) throw Error(EINVAL, "Parameter '" + prefix_ + key + "' is required");
  return *v;
}

std::optional<std::uint64_t> Options::size(const std::string& key) {
  const Json* v = find(key);
  if (!v) return std::nullopt;
  if (v->is_number_integer() && v->get<std::int64_t>() >= 0) return v->get<std::uint64_t>();
  if (v->is_number_integer()) invalid(key, "must not be negative");
  if (!v->is_string()) invalid(key, "expects a size");
  return parse_size(v->get<std::string>(), "Parameter '" + prefix_ + key + "'");
}

std::uint64_t Options::size(const std::string& key, std::uint64_t fallback) {
  return size(key).value_or(fallback);
}

std::optional<bool> Options::boolean(const std::string& key) {
  const Json* v = find(key);
  if (!v) return std::nullopt;
  if (v->is_boolean()) return v->get<bool>();
  if (!v->is_string()) invalid(key, "expects 'on' or 'off'");
  return parse_bool(v->get<std::string>(), "Parameter '" + prefix_ + key + "'");
}

bool Options::boolean(const std::string& key, bool fallback) { return boolean(key).value_or(fallback); }

std::optional<std::uint64_t> Options::uint(const std::string& key, std::uint64_t max) {
  const Json* v = find(key);
  if (!v) return std::nullopt;
  std::uint64_t n;
  if (v->is_number_unsigned() || (v->is_number_integer() && v->get<std::int64_t>() >= 0)) n = v->get<std::uint64_t>();
  else if (v->is_number_integer()) invalid(key, "must not be negative");
  else if (v->is_string()) n = parse_uint(v->get<std::string>(), "Parameter '" + prefix_ + key + "'");
  else invalid(key, "expects a number");
  if (n > max) invalid(key, "must be at most " + std::to_string(max));
  return n;
}

std::uint64_t Options::uint(const std::string& key, std::uint64_t fallback, std::uint64_t max) {
  return uint(key, max).value_or(fallback);
}

std::optional<std::chrono::seconds> Options::seconds(const std::string& key, std::uint64_t max) {
  const Json* v = find(key);
  if (!v) return std::nullopt;
  std::uint64_t n = 0;
  if (v->is_number_unsigned() || (v->is_number_integer() && v->get<std::int64_t>() >= 0)) {
    n = v->get<std::uint64_t>();
  } else if (v->is_number_integer()) {
    invalid(key, "must not be negative");
  } else if (v->is_string()) {
    const std::string s = v->get<std::string>();
    if (s.starts_with("-")) invalid(key, "must not be negative");
    if (s.empty() || s.size() > 19 || s.find_first_not_of("0123456789") != std::string::npos)
      invalid(key, "expects a number");
    n = std::stoull(s);
  } else {
    invalid(key, "expects a number");
  }
  if (n > max) invalid(key, "must be at most " + std::to_string(max));
  return std::chrono::seconds(n);
}

std::optional<Options::Secret> Options::secret(const std::string& key) {
  auto id = str(key);
  if (!id) return std::nullopt;
  return Secret{*id, secrets::lookup(*id)};
}

Options Options::group(const std::string& key) {
  mark_used(key);
  auto it = tree_.find(key);
  Json sub = it == tree_.end() ? Json::object() : *it;
  if (!sub.is_object()) invalid(key, "expects a group of options");
  return Options(std::move(sub), kind_, driver_, prefix_ + key + ".");
}

std::optional<Json> Options::take(const std::string& key) {
  mark_used(key);
  auto it = tree_.find(key);
  if (it == tree_.end()) return std::nullopt;
  return *it;
}

void Options::finish() const {
  for (auto it = tree_.begin(); it != tree_.end(); ++it) {
    if (used_.count(it.key())) continue;
    const std::string key = prefix_ + it.key();
    switch (kind_) {
      case Kind::protocol:
        throw Error(EINVAL, "Block protocol '" + driver_ + "' doesn't support the option '" + key + "'");
      case Kind::format:
      case Kind::filter:
        throw Error(EINVAL, "Block format '" + driver_ + "' does not support the option '" + key + "'");
      case Kind::object:
        throw Error(EINVAL, "Parameter '" + key + "' is unexpected");
      case Kind::create:
        throw Error(EINVAL, "Invalid parameter '" + key + "' for format '" + driver_ + "'");
    }
  }
}

void refuse_with_filename(const Json& tree, std::initializer_list<std::string_view> keys) {
  for (auto it = tree.begin(); it != tree.end(); ++it) {
    const std::string& key = it.key();
    if (std::find(keys.begin(), keys.end(), key) == keys.end()) continue;
    std::string shown = key;
    if (it->is_object() && !it->empty()) shown += "." + it->begin().key();
    throw Error(EINVAL, "Option '" + shown + "' cannot be used with a file name");
  }
}

}  // namespace netblk::spec
