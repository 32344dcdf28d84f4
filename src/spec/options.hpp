// Typed, validated reading of one node's options. Every getter marks its key as used;
// finish() rejects whatever is left with QEMU's wording, naming the option.
#pragma once
#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <set>
#include <string>

#include "netblk/node.hpp"

namespace netblk::spec {

class Options {
 public:
  enum class Kind { protocol, format, filter, object, create };
  // `tree` must be a JSON object. `prefix` is prepended to key names in messages
  // ("server." for a nested group).
  Options(Json tree, Kind kind, std::string driver, std::string prefix = {});

  bool has(const std::string& key) const { return tree_.contains(key); }
  const Json& tree() const noexcept { return tree_; }
  const std::string& driver() const noexcept { return driver_; }

  std::optional<std::string> str(const std::string& key);
  std::string str(const std::string& key, const std::string& fallback);
  std::string required_str(const std::string& key);
  std::optional<std::uint64_t> size(const std::string& key);
  std::uint64_t size(const std::string& key, std::uint64_t fallback);
  std::optional<bool> boolean(const std::string& key);
  bool boolean(const std::string& key, bool fallback);
  std::optional<std::uint64_t> uint(const std::string& key, std::uint64_t max = UINT64_MAX);
  std::uint64_t uint(const std::string& key, std::uint64_t fallback, std::uint64_t max);
  // A whole number of seconds (QEMU's timeouts and delays: a JSON number or a string of
  // digits), at most `max`. Negative: "must not be negative"; anything else that is not a
  // number: "expects a number".
  std::optional<std::chrono::seconds> seconds(const std::string& key, std::uint64_t max = 1000000000);
  // The `--object secret` named by option `key` (`password-secret=ID`): its id, for
  // options() and canonical names, and its value, for the driver alone. nullopt when the
  // option is absent; Error "No secret with id 'ID'" when no such object was defined.
  struct Secret {
    std::string id;
    std::string value;
  };
  std::optional<Secret> secret(const std::string& key);
  // A nested group ("server"); absent → empty group. Its unknown keys are reported by its
  // own finish().
  Options group(const std::string& key);
  // The raw subtree or value, if present.
  std::optional<Json> take(const std::string& key);
  // Marks a key as accepted and ignored.
  void ignore(const std::string& key);

  // Throws for the first key no getter asked for.
  void finish() const;

  // With NETBLK_LIST_OPTIONS=1 in the environment, every key a getter (or group, take,
  // ignore) is asked for is written to stderr as one line, "netblk-option KIND DRIVER KEY"
  // (KEY with its group prefix). tests/docs/option_drift.py compares them with the man pages.
  static bool listing_keys();

  // "Parameter 'X' ..." style error naming the (prefixed) key.
  [[noreturn]] void invalid(const std::string& key, const std::string& why) const;

 private:
  const Json* find(const std::string& key);
  void mark_used(const std::string& key);
  Json tree_;
  Kind kind_;
  std::string driver_;
  std::string prefix_;
  std::set<std::string> used_;
};

// QEMU's rule for drivers whose filename carries what options could also say (nbd, ssh,
// iscsi): with a filename, none of `keys` may be given as an option. Throws "Option 'K'
// cannot be used with a file name" for the first one in `tree` (a group as 'server.host').
void refuse_with_filename(const Json& tree, std::initializer_list<std::string_view> keys);

}  // namespace netblk::spec
