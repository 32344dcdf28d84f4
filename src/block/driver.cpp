#include "block/driver.hpp"

#include <algorithm>

namespace netblk {
namespace {
// Function-local statics: registrations run during static initialisation in any order.
std::vector<ProtocolDriver>& protocols() {
  static std::vector<ProtocolDriver> v;
  return v;
}
std::vector<FormatDriver>& mutable_formats() {
  static std::vector<FormatDriver> v;
  return v;
}
std::vector<FilterDriver>& filters() {
  static std::vector<FilterDriver> v;
  return v;
}
}  // namespace

void register_filter(FilterDriver driver) { filters().push_back(std::move(driver)); }
void register_protocol(ProtocolDriver driver) { protocols().push_back(std::move(driver)); }
void register_format(FormatDriver driver) { mutable_formats().push_back(std::move(driver)); }

const ProtocolDriver* find_protocol(std::string_view name) {
  for (const auto& d : protocols())
    if (d.name == name) return &d;
  return nullptr;
}

const ProtocolDriver* find_protocol_by_prefix(std::string_view prefix) {
  for (const auto& d : protocols())
    if (std::find(d.prefixes.begin(), d.prefixes.end(), prefix) != d.prefixes.end()) return &d;
  return nullptr;
}

const FormatDriver* find_format(std::string_view name) {
  for (const auto& d : mutable_formats())
    if (d.name == name) return &d;
  return nullptr;
}

const FilterDriver* find_filter(std::string_view name) {
  for (const auto& d : filters())
    if (d.name == name) return &d;
  return nullptr;
}

const std::vector<FormatDriver>& formats() { return mutable_formats(); }

std::vector<std::string> protocol_names() {
  std::vector<std::string> names;
  for (const auto& d : protocols()) names.push_back(d.name);
  return names;
}

std::vector<std::string> filter_names() {
  std::vector<std::string> names;
  for (const auto& d : filters()) names.push_back(d.name);
  return names;
}

std::string filename_prefix(std::string_view filename) {
  std::size_t pos = filename.find_first_of(":/");
  if (pos == std::string_view::npos || filename[pos] != ':') return {};
  return std::string(filename.substr(0, pos));
}

}  // namespace netblk
