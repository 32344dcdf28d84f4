// QEMU's drive syntaxes turned into one nested option tree (Json objects, arrays for
// numeric indices, scalar leaves).
#pragma once
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "netblk/node.hpp"

namespace netblk::spec {

// How deep option trees may nest (json: objects and lists, dotted keys), as QEMU's JSON
// parser allows: trees are walked recursively.
inline constexpr unsigned kMaxNesting = 1024;

// A flat list of dotted keys and values, in the order given.
using FlatOptions = std::vector<std::pair<std::string, Json>>;

// "k=v,k=v" with ",," for a literal comma. Keys are dotted paths; values are strings.
// If `implied_key` is set, a first item without '=' is the value of that key
// (qemu-img's `-o help`, `--object secret,id=...`). Throws Error on an empty key, an item
// without '=', a key given twice.
FlatOptions parse_keyval_flat(std::string_view text, std::string_view implied_key = {});

// Builds the nested tree from dotted keys: "a.b=1" -> {"a":{"b":1}}; a level whose keys are
// all 0..n-1 becomes a list. Errors: a key given twice, a key both a value and a map,
// numeric and named keys mixed, a list with a gap.
Json crumple(const FlatOptions& flat);

// Flattens a nested tree back to dotted keys (arrays as .0, .1, ...).
FlatOptions flatten(const Json& tree);

// parse_keyval_flat + crumple.
Json parse_keyval(std::string_view text, std::string_view implied_key = {});

// "json:{...}" (the prefix is required): nested objects and dotted keys both accepted and
// merged; the same key given both ways is an error. Values keep their JSON types.
Json parse_json_name(std::string_view text);
bool is_json_name(std::string_view text) noexcept;

// Merges `extra` into `base`; a key present in both is an error naming it.
void merge(Json& base, const Json& extra);

// A scalar leaf as text: strings as they are, numbers and bools in JSON form.
std::string scalar_text(const Json& v);

}  // namespace netblk::spec
