// netblk serve: exports any drive over NBD, with qemu-nbd's flags so scripts carry over.
#include <signal.h>

#include <asio/signal_set.hpp>
#include <iostream>

#include "block/filter.hpp"
#include "cli/verbs.hpp"
#include "core/log.hpp"
#include "exports/nbd/server.hpp"
#include "formats/qcow2/pull.hpp"
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
  bool pull = false;
};

// Stands between the export and the drive, counting the guest's requests in flight, so
// that the background pull (--pull) goes only while the guest waits for nothing. Block
// status and the backing chain are the drive's own, so the export answers as without it.
class GuestActivity final : public FilterNode {
 public:
  GuestActivity(const Executor& ex, std::unique_ptr<Node> drive)
      : FilterNode(context(ex), std::move(drive)), changed_(ex) {}

  std::string_view driver() const override { return file_->driver(); }
  Json options() const override { return file_->options(); }
  bool is_filter() const override { return true; }
  bool has_backing() const override { return file_->has_backing(); }
  Task<Node*> open_backing() override { co_return co_await file_->open_backing(); }

  // Returns once the guest has had no request in flight for a moment (its next request
  // usually follows the last reply at once); throws ECANCELED once stop() was called.
  Task<void> wait_until_idle() {
    constexpr auto kQuiet = std::chrono::milliseconds(5);
    while (true) {
      if (stopping_) throw Error(ECANCELED, "pull stopped");
      if (in_flight_) {
        co_await changed_.wait();
        continue;
      }
      const auto quiet_since = last_end_ + kQuiet;
      if (std::chrono::steady_clock::now() >= quiet_since) co_return;
      co_await sleep_for(quiet_since - std::chrono::steady_clock::now());
    }
  }
  void stop() {
    stopping_ = true;
    changed_.notify_all();
  }

 protected:
  Task<void> co_read(std::uint64_t offset, std::span<std::byte> buf) override {
    const Busy busy(*this);
    co_await file_->read(offset, buf);
  }
  Task<FileRead> co_read_to_file(std::uint64_t offset, std::uint64_t length, int fd, std::uint64_t fd_offset,
                                 std::uint64_t zero_block) override {
    const Busy busy(*this);
    co_return co_await file_->read_to_file(offset, length, fd, fd_offset, zero_block);
  }
  Task<void> co_write(std::uint64_t offset, std::span<const std::byte> buf, unsigned flags) override {
    const Busy busy(*this);
    co_await file_->write(offset, buf, flags);
  }
  Task<void> co_write_zeroes(std::uint64_t offset, std::uint64_t length, unsigned flags) override {
    const Busy busy(*this);
    co_await file_->write_zeroes(offset, length, flags);
  }
  Task<void> co_discard(std::uint64_t offset, std::uint64_t length, unsigned flags) override {
    const Busy busy(*this);
    co_await file_->discard(offset, length, flags);
  }
  Task<BlockStatus> co_block_status(std::uint64_t offset, std::uint64_t length) override {
    const Busy busy(*this);
    co_return co_await file_->block_status(offset, length);
  }

 private:
  static OpenContext context(const Executor& ex) {
    OpenContext ctx;
    ctx.executor = ex;
    return ctx;
  }
  struct Busy {
    explicit Busy(GuestActivity& g) : g(g) { ++g.in_flight_; }
    Busy(const Busy&) = delete;
    ~Busy() {
      if (--g.in_flight_ == 0) {
        g.last_end_ = std::chrono::steady_clock::now();
        g.changed_.notify_all();
      }
    }
    GuestActivity& g;
  };
  unsigned in_flight_ = 0;
  std::chrono::steady_clock::time_point last_end_;
  bool stopping_ = false;
  AsyncCondition changed_;
};

// serve --pull: the overlay's pull, beside the guest and behind it (two requests at a
// time, each waiting for the guest to be idle). It ends by itself when complete, or
// when stop() makes its next wait throw; `done` is set either way.
Task<void> pull_in_background(GuestActivity& guest, qcow2::Qcow2Node& overlay, AsyncEvent& done) {
  qcow2::PullOptions options;
  options.requests = 2;
  options.piece = 256u << 10;  // small: a guest's request never waits behind much of it
  options.wait_turn = [&guest]() { return guest.wait_until_idle(); };
  try {
    const qcow2::PullResult r = co_await qcow2::pull(overlay, options);
    std::cerr << "netblk: pull: complete (" << r.fetched << " bytes fetched from the backing chain)" << std::endl;
  } catch (const Error& e) {
    if (e.code() != ECANCELED) print_error(std::string("pull: ") + e.what());
  }
  done.set();
}

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
  std::unique_ptr<Node> node = co_await open_drive(spec);
  Executor ex = co_await asio::this_coro::executor;
  GuestActivity* guest = nullptr;
  qcow2::Qcow2Node* overlay = nullptr;
  if (args.pull) {
    overlay = qcow2::qcow2_under(*node);
    if (!overlay || node->read_only())
      throw Error(EINVAL, canonical_name(*node) + ": --pull needs a writable qcow2 overlay");
    auto wrapped = std::make_unique<GuestActivity>(ex, std::move(node));
    guest = wrapped.get();
    node = std::move(wrapped);
  }
  AsyncEvent pull_done(ex);

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
    if (guest) {
      auto pulling = [guest, overlay, &pull_done]() { return pull_in_background(*guest, *overlay, pull_done); };
      asio::co_spawn(ex, pulling, asio::detached);
    }
    std::exception_ptr failed;
    try {
      co_await server.run();
    } catch (...) {
      failed = std::current_exception();
    }
    std::error_code ignored;
    signals.cancel(ignored);
    if (guest) {
      // The pull's pieces in flight land before the server and the image go.
      guest->stop();
      co_await pull_done.wait();
    }
    if (failed) std::rethrow_exception(failed);
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
      app.add_flag("--pull", args->pull,
                   "Meanwhile copy everything the qcow2 overlay lacks from its backing chain into it, behind the "
                   "clients' requests");
      app.add_option("--tls-creds", args->tls_creds, "Require TLS with the tls-creds-x509 or tls-creds-psk object ID (endpoint=server)");
      return [args]() -> int {
        return run_verb([args]() { return serve(*args); });
      };
    }}};

}  // namespace
}  // namespace netblk::cli
