// Stopping a client library's own threads when the process exits.
//
// librados keeps threads of its own for as long as a cluster connection lives (the
// monitor client applies configuration the monitors send at any time). A process that
// exits with such a connection open runs the static destructors, the library's among
// them, under those threads, and crashes now and then (SIGSEGV, or std::out_of_range
// from a destroyed map) after it printed its result.
//
// Contract:
//  - at_process_exit(stop, limit) arranges that when the process exits (exit(), or a
//    return from main), `stop` runs before the static destructors of every library loaded
//    before the call (register after loading the library). It runs on a thread of its
//    own, stops the library's threads and returns true, or returns false when it cannot
//    (a call of the library is still in progress).
//  - If stop returns false, throws, or has not returned within `limit`, the process ends
//    there: stdio is flushed and _exit gives the status exit() was given. An exit never
//    hangs on a stuck library and never runs destructors under its threads; the other
//    handlers registered before this call do not run then.
//  - Safe from any thread; each call registers one more handler.
#pragma once
#include <chrono>
#include <functional>

namespace netblk {

void at_process_exit(std::function<bool()> stop, std::chrono::milliseconds limit);

}  // namespace netblk
