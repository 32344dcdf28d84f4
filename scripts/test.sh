#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (as root): installs the packages,
# builds, runs unit and integration tests (real servers on 127.0.0.1 and unix sockets
# only) and a program built on the installed library (tests/consumer), then the sanitizer
# build's unit tests and the NBD client/server, HTTP and qcow2 integration tests, and a
# short run of every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-5}   # a short run each (after its corpus); scripts/fuzz.sh runs them for long
jobs=$(nproc)

scripts/install-deps.sh
scripts/build.sh release

# The sanitizer and fuzz builds compile while the integration tests run: those mostly wait
# on servers and timers, not on the CPUs.
background_log=$(mktemp)
( nice -n 5 scripts/build.sh sanitize && nice -n 5 scripts/build.sh fuzz ) >"$background_log" 2>&1 &
background=$!
trap 'kill $background 2>/dev/null || true; rm -f "$background_log"' EXIT

echo "== unit and integration tests"
# Two at a time (the load test and the guest boot run alone: RUN_SERIAL).
ctest --test-dir build --output-on-failure --timeout 900 -j"$jobs"

echo "== the installed library: install into a temporary prefix, build tests/consumer against it, run it"
tests/consumer/run.sh build

echo "== sanitizer build (GCC -O1, ASan + UBSan) and fuzz build (clang, ASan + libFuzzer)"
wait $background || { tail -40 "$background_log"; exit 1; }
echo "== sanitizer build: unit tests and the NBD, HTTP and qcow2 integration tests"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-sanitize --output-on-failure --timeout 900 -j"$jobs" \
  -R '^(unit|nbd_client|nbd_server|curl_http|qcow2)$'

echo "== fuzz targets: each for ${FUZZ_SECONDS}s"
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
