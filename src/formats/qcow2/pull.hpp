// QEMU's block-stream, offline or beside a guest: every cluster a qcow2 overlay leaves to
// its backing chain is read from the chain and written into the overlay, so that it ends
// up standing alone. Shared by `netblk pull` and `netblk serve --pull`.
//
// Each piece is written only where the overlay is still unallocated, decided under the
// driver's cluster lock (Qcow2Node::fill_unallocated), so a guest's write made meanwhile
// is never overwritten; data goes in before the L2 entry that points at it, as every qcow2
// write here does, so the image is consistent at every moment. What is allocated is what
// the image says, so a pull that was stopped resumes by running it again: only what is
// still missing is fetched. A checkpoint (Qcow2Node::checkpoint) records what was written
// every `flush_every` bytes, and fetching waits while the pieces in flight and the bytes not
// yet recorded come to twice that, which bounds what a killed pull fetches twice.
#pragma once
#include <cstdint>
#include <functional>

#include "formats/qcow2/qcow2.hpp"

namespace netblk::qcow2 {

struct PullOptions {
  unsigned requests = 4;                   // pieces in flight (-m)
  // A pull killed at a random moment fetches again what was in flight and what was written
  // but not yet recorded: together at most 2 * flush_every, as the workers wait there for
  // the checkpoint (docs/decisions.md, "What a killed pull fetches again").
  std::uint64_t piece = 1u << 20;          // bytes per request, rounded to whole clusters
  std::uint64_t flush_every = 2u << 20;    // a checkpoint after this many bytes
  // Called as bytes land: (bytes allocated now, image size).
  std::function<void(std::uint64_t done, std::uint64_t total)> progress;
  // Awaited before each piece is fetched: serve --pull waits there while the guest has
  // requests in flight. Unset: no waiting.
  std::function<Task<void>()> wait_turn;
};

struct PullResult {
  std::uint64_t fetched = 0;  // bytes read from the backing chain
  std::uint64_t written = 0;  // bytes allocated in the overlay by this pull
};

// The qcow2 node `node` is or that its filters stand on; null if there is none.
Qcow2Node* qcow2_under(Node& node);

// Pulls everything the overlay lacks into it and flushes. Without a backing file there is
// nothing to do.
Task<PullResult> pull(Qcow2Node& overlay, const PullOptions& options);

// Bytes of the overlay still left to its backing chain.
Task<std::uint64_t> unallocated_bytes(Qcow2Node& overlay);

}  // namespace netblk::qcow2
