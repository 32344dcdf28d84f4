#!/usr/bin/env bash
# Builds netblk. Usage: scripts/build.sh [release|sanitize|fuzz]
#   release  (default) build/ : optimised, -Werror, CLI at build/netblk, all tests
#   sanitize build-sanitize/  : GCC -O1 with ASan + UBSan: the unit tests, the CLI and the
#                              integration tests scripts/test.sh runs sanitized
#   fuzz     build-fuzz/      : clang with ASan + libFuzzer, every tests/fuzz target
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-release}
# The integration tests that also run under ASan + UBSan (scripts/test.sh): the NBD client
# and server, curl over HTTP, qcow2.
SANITIZED_INTEGRATION_TESTS="nbd_client nbd_server curl_http qcow2"
sanitized_integration_targets() { for t in $SANITIZED_INTEGRATION_TESTS; do echo "it_$t"; done; }
jobs=$(nproc)
case "$kind" in
  release)
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DNETBLK_WERROR=ON >/dev/null
    ninja -C build -j"$jobs"
    ;;
  sanitize)
    # -O1: the integration tests copy hundreds of MiB; at -O0 under ASan they take minutes.
    # -g1: line tables for the sanitizers' stack traces, without full debug information
    # (a quarter less compile time).
    cmake -S . -B build-sanitize -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-g1 -O1" \
      -DNETBLK_SANITIZE=ON -DNETBLK_WERROR=ON >/dev/null
    ninja -C build-sanitize -j"$jobs" unit_tests netblk $(sanitized_integration_targets)
    ;;
  fuzz)
    # Line tables only: enough for the stack trace of a crash, and quicker to build and link.
    CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -gline-tables-only -DNDEBUG" \
      -DNETBLK_FUZZ=ON -DNETBLK_WERROR=ON >/dev/null
    targets=()
    for f in tests/fuzz/*.cpp; do [ -e "$f" ] && targets+=("fuzz_$(basename "$f" .cpp)"); done
    ninja -C build-fuzz -j"$jobs" "${targets[@]}"
    ;;
  *) echo "usage: $0 [release|sanitize|fuzz]" >&2; exit 2 ;;
esac
