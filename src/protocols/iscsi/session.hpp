// One iSCSI session (libiscsi context) driven from the event loop: the context's socket
// through core/FdWatcher (iscsi_get_fd / iscsi_which_events / iscsi_service), a tick about
// once a second (iscsi_service(ctx, 0): libiscsi's reconnect timing), NOP-Out keepalive
// every 5 s with a reconnect after 3 unanswered, and a deadline of our own per command.
//
// libiscsi 1.19 traps handled here (fixed upstream only in 1.20):
//  - commands parked while it reconnects are never timed out by libiscsi: every command
//    has its own Deadline (the `timeout` option);
//  - its reconnect dup2()s a new socket onto the old descriptor number: the watcher's
//    detect_replaced re-registers it;
//  - a command that timed out may still be referenced by queued PDUs (data-out PDUs of a
//    write, data-in of a read, the command resent after a reconnect): its scsi_task and
//    iovec stay alive until libiscsi calls back or the context is destroyed, and its
//    buffer pointer is moved to a copy owned by the command, so the caller's buffer may go.
#pragma once
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#include "core/fd_watcher.hpp"
#include "protocols/iscsi/iscsi_config.hpp"

namespace netblk::iscsi {

// Frees a finished command.
struct TaskDeleter {
  void operator()(scsi_task* t) const noexcept { scsi_free_scsi_task(t); }
};
using TaskPtr = std::unique_ptr<scsi_task, TaskDeleter>;

// Queues one command on the context (an iscsi_*_task call); null when libiscsi refuses.
using Submit = std::function<scsi_task*(iscsi_context*, iscsi_command_cb, void*)>;

// The caller's buffer a command reads into or writes from (at most one of them).
struct Payload {
  std::span<std::byte> in{};
  std::span<const std::byte> out{};
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(Executor ex, IscsiConfig config);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const IscsiConfig& config() const noexcept { return config_; }
  const std::string& name() const noexcept { return name_; }

  // Resolves the portal (Asio, never libiscsi's blocking getaddrinfo), then connects, logs
  // in and checks the LUN without blocking the loop, within `timeout` (30 s when 0).
  Task<void> connect();

  // Runs one command until the target answers GOOD, and returns its task (the caller owns
  // it: wrap it in a TaskPtr). Unit attentions and BUSY / TASK SET FULL are retried. Throws
  // Error: ETIMEDOUT after `timeout`, else an errno from the sense data.
  Task<scsi_task*> run(Submit submit, Payload payload, const char* what);

  // Destroys the context; commands still waiting fail with EIO. Idempotent.
  void close();

  // The errno QEMU gives a failed command with this sense (iscsi_translate_sense).
  static int errno_of(const scsi_sense& sense);

 private:
  struct Op;
  static void on_connected(iscsi_context* ctx, int status, void* data, void* self);
  static void on_command(iscsi_context* ctx, int status, void* data, void* op);
  void service(int revents);
  void update_events();
  void start_tick();
  void tick();
  std::string failure_text(const Op& op) const;

  Executor ex_;
  IscsiConfig config_;
  std::string name_;
  iscsi_context* ctx_ = nullptr;
  FdWatcher watcher_;
  int fd_ = -1;
  asio::steady_timer tick_timer_;
  unsigned ticks_ = 0;
  bool reconnect_wanted_ = false;  // a command timed out, or NOP-Outs went unanswered
  // Connecting: the first callback's status, and whether it came.
  std::unique_ptr<AsyncEvent> connected_;
  int connect_status_ = -1;
  std::string connect_error_;
  bool connect_done_ = false;
  // Commands libiscsi may still call back for, owned here (not by the waiting coroutine).
  std::unordered_map<Op*, std::shared_ptr<Op>> ops_;
};

}  // namespace netblk::iscsi
