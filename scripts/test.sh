#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (as root): installs the packages,
# builds, runs unit and integration tests (real servers on 127.0.0.1 and unix sockets
# only), then the sanitizer build's unit tests and a short run of every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-20}

scripts/install-deps.sh
scripts/build.sh release
echo "== unit and integration tests"
ctest --test-dir build --output-on-failure --timeout 900

echo "== sanitizer build (GCC Debug, ASan + UBSan): unit tests"
scripts/build.sh sanitize
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  build-sanitize/tests/unit_tests --gtest_brief=1

echo "== fuzz build (clang, ASan + libFuzzer): every target for ${FUZZ_SECONDS}s"
scripts/build.sh fuzz
for fuzzer in build-fuzz/tests/fuzz/fuzz_*; do
  [ -x "$fuzzer" ] || continue
  name=$(basename "$fuzzer")
  corpus=$(mktemp -d)
  seeds="tests/fuzz/corpus/${name#fuzz_}"
  [ -d "$seeds" ] && cp -r "$seeds"/. "$corpus"/
  echo "== $name for ${FUZZ_SECONDS}s"
  "$fuzzer" -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -timeout=10 -print_final_stats=0 \
    "$corpus" 2>"$corpus.log" || { grep -m1 -A25 "ERROR" "$corpus.log"; tail -8 "$corpus.log"; rm -rf "$corpus"; exit 1; }
  rm -rf "$corpus" "$corpus.log"
done
echo "== all tests passed"
