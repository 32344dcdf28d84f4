#include "nginx.hpp"

#include <filesystem>
#include <stdexcept>

namespace netblk::test {

Nginx::Location Nginx::require_cookie(const std::string& prefix, const std::string& cookie) {
  const auto eq = cookie.find('=');
  const std::string name = cookie.substr(0, eq), value = cookie.substr(eq + 1);
  return {.match = prefix,
          .directives = "if ($http_cookie !~ \"(^|;\\s*)" + name + "=" + value + "(;|$)\") { return 403; }",
          .alias_root = true};
}

Nginx::Location Nginx::basic_auth(const std::string& prefix, const std::string& user, const std::string& password) {
  return {.match = prefix, .alias_root = true, .users = {{user, password}}};
}

Nginx::Location Nginx::limit_rate(const std::string& prefix, const std::string& rate) {
  return {.match = prefix, .directives = "limit_rate " + rate + "; limit_rate_after 0;", .alias_root = true};
}

Nginx::Location Nginx::no_ranges(const std::string& prefix) {
  return {.match = prefix, .directives = "max_ranges 0;", .alias_root = true};
}

Nginx::Location Nginx::redirect(const std::string& path, const std::string& target) {
  return {.match = "= " + path, .directives = "return 302 " + target + ";"};
}

Nginx::Location Nginx::stall(const std::string& path, int seconds) {
  return {.match = "= " + path, .directives = "echo_sleep " + std::to_string(seconds) + "; echo late;", .echo = true};
}

std::string Nginx::url(const std::string& path) const {
  return "http://127.0.0.1:" + std::to_string(http_port_) + path;
}

std::string Nginx::https_url(const std::string& path) const {
  return "https://127.0.0.1:" + std::to_string(https_port_) + path;
}

Nginx::Nginx(Options options) : http_port_(options.port ? options.port : free_port()) {
  const std::string d = dir_.path();
  std::filesystem::create_directories(d + "/tmp");
  bool echo = false;
  std::string locations = "    root " + options.root + ";\n";
  int auth_files = 0;
  for (const auto& l : options.locations) {
    echo = echo || l.echo;
    std::string body = l.alias_root ? "alias " + options.root + "/; " : "";
    if (!l.users.empty()) {
      const std::string file = dir_ / ("htpasswd" + std::to_string(auth_files++));
      std::string text;
      for (const auto& [user, password] : l.users) {
        auto hash = run({"openssl", "passwd", "-apr1", password});
        if (hash.exit_code != 0) throw std::runtime_error("openssl passwd failed: " + hash.err);
        text += user + ":" + hash.out;
      }
      write_file(file, text);
      body += "auth_basic \"disk\"; auth_basic_user_file " + file + "; ";
    }
    locations += "    location " + l.match + " { " + body + l.directives + " }\n";
  }
  std::string conf = "daemon off;\nworker_processes " + std::to_string(options.workers) + ";\npid " + d +
                     "/nginx.pid;\nerror_log " + d + "/error.log;\n";
  if (echo) conf += "load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;\n";
  conf += "events { worker_connections 512; }\nhttp {\n  access_log " + d + "/access.log;\n" +
          "  client_body_temp_path " + d + "/tmp/body; proxy_temp_path " + d + "/tmp/proxy;\n" +
          "  fastcgi_temp_path " + d + "/tmp/fcgi; uwsgi_temp_path " + d + "/tmp/uwsgi; scgi_temp_path " + d +
          "/tmp/scgi;\n  sendfile on;\n  default_type application/octet-stream;\n";
  conf += "  server {\n    listen 127.0.0.1:" + std::to_string(http_port_) + ";\n" + locations + "  }\n";
  if (options.https) {
    https_port_ = free_port();
    make_self_signed_cert(dir_ / "cert.pem", dir_ / "key.pem");
    conf += "  server {\n    listen 127.0.0.1:" + std::to_string(https_port_) + " ssl;\n    ssl_certificate " + d +
            "/cert.pem;\n    ssl_certificate_key " + d + "/key.pem;\n" + locations + "  }\n";
  }
  conf += "}\n";
  write_file(dir_ / "nginx.conf", conf);
  process_ = start_server(
      {"/usr/sbin/nginx", "-p", d, "-c", d + "/nginx.conf", "-e", d + "/error.log"}, dir_ / "nginx.out",
      [&] { return wait_tcp(http_port_) && (!https_port_ || wait_tcp(https_port_)); }, "nginx", {dir_ / "error.log"});
}

}  // namespace netblk::test
