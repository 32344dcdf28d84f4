#!/usr/bin/env bash
# Builds netblk. Usage: scripts/build.sh [release|sanitize]
#   release  (default) build/ : optimised, -Werror, CLI at build/netblk, all tests
#   sanitize build-sanitize/ : clang Debug with ASan+UBSan, unit tests and libFuzzer targets
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
    CC=clang CXX=clang++ cmake -S . -B build-sanitize -G Ninja -DCMAKE_BUILD_TYPE=Debug \
      -DNETBLK_SANITIZE=ON -DNETBLK_FUZZ=ON -DNETBLK_WERROR=ON >/dev/null
    targets=(unit_tests)
    for f in tests/fuzz/*.cpp; do [ -e "$f" ] && targets+=("fuzz_$(basename "$f" .cpp)"); done
    ninja -C build-sanitize -j"$jobs" "${targets[@]}"
    ;;
  *) echo "usage: $0 [release|sanitize]" >&2; exit 2 ;;
esac
