// Logging with levels. The level comes from NETBLK_LOG (error, warn, info, debug, trace)
// or from the CLI's -v flags. Lines go to stderr, prefixed with "netblk: LEVEL:".
#pragma once
#include <string>
#include <type_traits>
#include <string_view>

namespace netblk::log {

enum class Level { error = 0, warn = 1, info = 2, debug = 3, trace = 4 };

Level level() noexcept;
void set_level(Level l) noexcept;
// Reads NETBLK_LOG; unknown values leave the level unchanged (warn by default).
void init_from_env() noexcept;
bool parse_level(std::string_view name, Level& out) noexcept;
void write(Level l, std::string_view message);

inline bool enabled(Level l) noexcept { return static_cast<int>(l) <= static_cast<int>(level()); }

}  // namespace netblk::log

#define NETBLK_LOG(lvl, ...)                                                         \
  do {                                                                               \
    if (::netblk::log::enabled(::netblk::log::Level::lvl))                           \
      ::netblk::log::write(::netblk::log::Level::lvl, ::netblk::log::format(__VA_ARGS__)); \
  } while (0)

namespace netblk::log {
// GCC 12 has no <format>; a tiny "{}" formatter keeps call sites readable.
std::string to_text(const std::string& v);
std::string to_text(std::string_view v);
std::string to_text(const char* v);
template <class T>
std::string to_text(const T& v) {
  if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
  else return std::to_string(v);
}
inline void format_into(std::string& out, std::string_view fmt) { out.append(fmt); }
template <class A, class... R>
void format_into(std::string& out, std::string_view fmt, const A& a, const R&... rest) {
  auto pos = fmt.find("{}");
  if (pos == std::string_view::npos) {
    out.append(fmt);
    return;
  }
  out.append(fmt.substr(0, pos));
  out.append(to_text(a));
  format_into(out, fmt.substr(pos + 2), rest...);
}
template <class... A>
std::string format(std::string_view fmt, const A&... a) {
  std::string out;
  format_into(out, fmt, a...);
  return out;
}
}  // namespace netblk::log
