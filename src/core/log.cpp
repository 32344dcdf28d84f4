#include "core/log.hpp"

#include <atomic>
#include <cstdio>
#include <cstdlib>

namespace netblk::log {
namespace {
std::atomic<int> g_level{static_cast<int>(Level::warn)};
constexpr const char* kNames[] = {"error", "warn", "info", "debug", "trace"};
}  // namespace

Level level() noexcept { return static_cast<Level>(g_level.load(std::memory_order_relaxed)); }
void set_level(Level l) noexcept { g_level.store(static_cast<int>(l), std::memory_order_relaxed); }

bool parse_level(std::string_view name, Level& out) noexcept {
  for (int i = 0; i < 5; ++i)
    if (name == kNames[i]) {
      out = static_cast<Level>(i);
      return true;
    }
  return false;
}

void init_from_env() noexcept {
  if (const char* v = std::getenv("NETBLK_LOG")) {
    Level l;
    if (parse_level(v, l)) set_level(l);
  }
}

void write(Level l, std::string_view message) {
  std::string line = "netblk: ";
  line += kNames[static_cast<int>(l)];
  line += ": ";
  line += message;
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), stderr);
}

std::string to_text(const std::string& v) { return v; }
std::string to_text(std::string_view v) { return std::string(v); }
std::string to_text(const char* v) { return v ? v : "(null)"; }

}  // namespace netblk::log
