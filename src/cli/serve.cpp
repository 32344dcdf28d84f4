// netblk serve: exports any drive over NBD, with qemu-nbd's flags so scripts carry over.
#include <signal.h>

#include <asio/signal_set.hpp>
#include <iostream>

#include "cli/verbs.hpp"
#include "core/log.hpp"
#include "exports/nbd/server.hpp"
#include "nbd/protocol.hpp"
#include "nbd/tls_session.hpp"

namespace netblk::cli {
namespace {

struct ServeArgs {
  DriveArgs drive;
  std::vector<std::string> objects;
  std::string bind;
  std::uint16_t port = nbd::kDefaultPort;
  bool port_given = false;
  std::string socket;
  std::string export_name;
  std::string description;
  bool read_only = false;
  int shared = 1;
  bool persistent = false;
  std::string tls_creds;
};

Task<int> serve(const ServeArgs& args) {
  if (!args.socket.empty() && (!args.bind.empty() || args.port_given))
    throw Error(EINVAL, "--socket cannot be combined with --bind or --port");
  if (args.export_name.size() > nbd::kMaxStringLength) throw Error(EINVAL, "export name is longer than 4096 bytes");
  if (args.description.size() > nbd::kMaxStringLength) throw Error(EINVAL, "description is longer than 4096 bytes");
  if (args.shared < 0) throw Error(EINVAL, "Invalid shared device number '" + std::to_string(args.shared) + "'");
  define_objects(args.objects);
  // Loaded before the image is opened, so a bad object fails at once, naming its file.
  std::shared_ptr<const nbd::tls::ServerCredentials> tls;
  if (!args.tls_creds.empty()) tls = std::make_shared<nbd::tls::ServerCredentials>(nbd::tls::creds(args.tls_creds));

  DriveSpec spec = args.drive.spec(args.read_only);
  // As qemu-nbd: others may do anything but resize the image while it is exported.
  spec.permissions = Permissions{kPermConsistentRead | (spec.read_only ? 0u : kPermWrite), kPermAll & ~kPermResize};
  auto node = co_await open_drive(spec);
  Executor ex = co_await asio::this_coro::executor;

  nbd::ExportConfig config;
  config.name = args.export_name;
  config.description = args.description;
  config.read_only = args.read_only || node->read_only();
  config.max_clients = args.shared;
  config.persistent = args.persistent;
  config.tls = tls;

  int exit_code = 0;
  {
    nbd::Server server(ex, *node, config);
    if (!args.socket.empty())
      server.listen_unix(args.socket);
    else
      server.listen_tcp(args.bind.empty() ? "0.0.0.0" : args.bind, args.port);

    asio::signal_set signals(ex, SIGINT, SIGTERM);
    signals.async_wait([&server](std::error_code ec, int signo) {
      if (ec) return;
      NETBLK_LOG(info, "nbd: signal {}: stopping", signo);
      server.stop();
    });
    co_await server.run();
    std::error_code ignored;
    signals.cancel(ignored);
  }
  try {
    co_await node->close();
  } catch (const Error& e) {
    print_error(e.what());
    exit_code = 1;
  }
  co_return exit_code;
}

const VerbRegistration kServe{Verb{
    "serve", "Export a disk image over NBD (qemu-nbd's options)", [](CLI::App& app) {
      auto args = std::make_shared<ServeArgs>();
      args->drive.add_options(app);
      add_common_options(app, args->objects, &args->drive.force_share);
      app.add_option("SPEC", args->drive.name, "The image: a file name, URL, json:{...} or --image-opts keys");
      app.add_option("-b,--bind", args->bind, "Address to listen on (default 0.0.0.0)");
      app.add_option("-p,--port", args->port, "TCP port to listen on (default 10809)")
          ->each([args](const std::string&) { args->port_given = true; });
      app.add_option("-k,--socket", args->socket, "Listen on a unix socket at PATH instead of TCP");
      app.add_option("-x,--export-name", args->export_name, "The export's name (default \"\")");
      app.add_option("-D,--description", args->description, "The export's description");
      app.add_flag("-r,--read-only", args->read_only, "Export read-only");
      app.add_option("-e,--shared", args->shared, "Clients served at once (default 1; 0 = unlimited)");
      app.add_flag("-t,--persistent", args->persistent, "Keep serving after the last client disconnects");
      app.add_option("--tls-creds", args->tls_creds, "Require TLS with the tls-creds-x509 or tls-creds-psk object ID (endpoint=server)");
      return [args]() -> int {
        return run_verb([args]() { return serve(*args); });
      };
    }}};

}  // namespace
}  // namespace netblk::cli
