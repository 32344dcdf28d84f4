#include "core/secrets.hpp"

#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

#include "spec/options.hpp"

namespace netblk::secrets {
namespace {
std::mutex g_mutex;
std::map<std::string, std::string>& store() {
  static std::map<std::string, std::string> m;
  return m;
}

std::string base64_decode(const std::string& in, const std::string& id) {
  static const std::string kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  unsigned buf = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=' || c == '\n' || c == '\r') continue;
    auto pos = kAlphabet.find(c);
    if (pos == std::string::npos) throw Error(EINVAL, "secret '" + id + "': invalid base64 data");
    buf = (buf << 6) | static_cast<unsigned>(pos);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((buf >> bits) & 0xff);
    }
  }
  return out;
}
std::map<std::string, std::function<void(const Json&)>>& object_types() {
  static std::map<std::string, std::function<void(const Json&)>> m;
  return m;
}
}  // namespace

void register_object_type(const std::string& qom_type, std::function<void(const Json&)> handler) {
  std::lock_guard lock(g_mutex);
  object_types()[qom_type] = std::move(handler);
}

void define(const Json& object_options) {
  spec::Options o(object_options, spec::Options::Kind::object, "secret");
  std::string qom_type = o.str("qom-type", "secret");
  if (qom_type != "secret") {
    std::function<void(const Json&)> handler;
    {
      std::lock_guard lock(g_mutex);
      auto it = object_types().find(qom_type);
      if (it != object_types().end()) handler = it->second;
    }
    if (!handler) throw Error(EINVAL, "Unsupported object type '" + qom_type + "'");
    handler(object_options);
    return;
  }
  std::string id = o.required_str("id");
  auto data = o.str("data");
  auto file = o.str("file");
  std::string format = o.str("format", "raw");
  o.finish();
  if (data && file) throw Error(EINVAL, "secret '" + id + "': 'data' and 'file' are mutually exclusive");
  if (!data && !file) throw Error(EINVAL, "secret '" + id + "': either 'data' or 'file' is required");
  std::string value;
  if (data) {
    value = *data;
  } else {
    std::ifstream in(*file, std::ios::binary);
    if (!in) throw Error(ENOENT, "secret '" + id + "': cannot read file '" + *file + "'");
    std::ostringstream ss;
    ss << in.rdbuf();
    value = ss.str();
  }
  if (format == "base64") value = base64_decode(value, id);
  else if (format != "raw") throw Error(EINVAL, "secret '" + id + "': format must be raw or base64");
  std::lock_guard lock(g_mutex);
  if (!store().emplace(id, value).second) throw Error(EEXIST, "attempt to add duplicate secret id '" + id + "'");
}

std::string lookup(const std::string& id) {
  std::lock_guard lock(g_mutex);
  auto it = store().find(id);
  if (it == store().end()) throw Error(ENOENT, "No secret with id '" + id + "'");
  return it->second;
}

void clear() {
  std::lock_guard lock(g_mutex);
  store().clear();
}

}  // namespace netblk::secrets
