// What a GlusterFS drive names, from every QEMU spelling: gluster[+tcp|+unix|+rdma]:// URLs
// (with debug= and logfile= beside them, as QEMU's `file.debug=N,file.logfile=PATH`), and
// driver=gluster with volume, path, the server list (server.N.type=inet|tcp|unix,
// server.N.host/port, server.N.path or its alias server.N.socket), debug and logfile.
// Pure: no network, unit-tested by tests/integration/gluster.cpp.
#pragma once
#include <string>
#include <vector>

#include "netblk/node.hpp"
#include "spec/options.hpp"
#include "spec/socket_address.hpp"

namespace netblk::gluster {

inline constexpr unsigned kDefaultPort = 24007;
inline constexpr int kDefaultDebug = 4;  // GlusterFS's GF_LOG_ERROR, as QEMU
inline constexpr int kMaxDebug = 9;
// gfapi's name for stderr (QEMU's default too).
inline constexpr const char* kDefaultLogfile = "-";

struct GlusterConfig {
  std::vector<spec::SocketAddress> servers;  // volfile servers, tried in order; inet or unix
  std::string volume;
  std::string path;  // the image's path in the volume, as given
  int debug = kDefaultDebug;
  std::string logfile = kDefaultLogfile;
  // The name said gluster+rdma:// (served over tcp, as QEMU, which warns).
  bool rdma_requested = false;
};

// The driver's parse_filename: keeps the name as "filename"; config_from_options() parses
// it, so that a URL given together with volume/path/server options is refused.
void parse_filename(const std::string& filename, Json& options);
// QEMU's qemu_gluster_parse_uri: the URL into {volume, path, server: [..]}; `rdma` is set
// for gluster+rdma://. Error(EINVAL) "invalid URI ..." with QEMU's usage line.
Json options_from_url(const std::string& url, bool* rdma = nullptr);

// Reads the whole configuration from a node's options (marks every key it uses).
GlusterConfig config_from_options(spec::Options& o);

// QEMU's option tree: {"driver":"gluster","volume":..,"path":..,"server":[..]} and debug /
// logfile when not the defaults.
Json canonical_options(const GlusterConfig& c);
// gluster://HOST:PORT/VOLUME/PATH or gluster+unix:///VOLUME/PATH?socket=S for one server,
// else "".
std::string plain_filename(const GlusterConfig& c);
// For messages: the URL of the first server.
std::string display_name(const GlusterConfig& c);
// The key of the process's one gfapi connection for this volume and server list.
std::string connection_key(const GlusterConfig& c);
// For messages: "server.N (HOST:PORT)" / "server.N (socket S)".
std::string describe_server(const GlusterConfig& c, std::size_t index);

}  // namespace netblk::gluster
