#!/usr/bin/env bash
# Builds netblk. Usage: scripts/build.sh [release|sanitize|fuzz]
#   release  (default) build/ : optimised, -Werror, CLI at build/netblk, all tests
#   sanitize build-sanitize/  : GCC Debug with ASan + UBSan, the unit tests
#   fuzz     build-fuzz/      : clang with ASan + libFuzzer, every tests/fuzz target
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-release}
jobs=$(nproc)
case "$kind" in
  release)
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DNETBLK_WERROR=ON >/dev/null
    ninja -C build -j"$jobs"
    ;;
  sanitize)
    cmake -S . -B build-sanitize -G Ninja -DCMAKE_BUILD_TYPE=Debug -DNETBLK_SANITIZE=ON -DNETBLK_WERROR=ON >/dev/null
    ninja -C build-sanitize -j"$jobs" unit_tests
    ;;
  fuzz)
    CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DNETBLK_FUZZ=ON -DNETBLK_WERROR=ON >/dev/null
    targets=()
    for f in tests/fuzz/*.cpp; do [ -e "$f" ] && targets+=("fuzz_$(basename "$f" .cpp)"); done
    ninja -C build-fuzz -j"$jobs" "${targets[@]}"
    ;;
  *) echo "usage: $0 [release|sanitize|fuzz]" >&2; exit 2 ;;
esac
