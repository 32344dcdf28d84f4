#!/usr/bin/env bash
# Long fuzzing runs: every libFuzzer target (or the ones named) for MINUTES each, one after
# the other, starting from its corpus in tests/fuzz/corpus/NAME. What a run finds is merged
# back into that corpus, minimised (libFuzzer's -merge=1 keeps only inputs that add
# coverage), so the short CI runs start from it. A crash stops that target; its input is
# kept in build-fuzz/crashes/NAME/ and the script exits non-zero at the end.
#
#   scripts/fuzz.sh MINUTES [TARGET...]      e.g. scripts/fuzz.sh 30, scripts/fuzz.sh 5 spec_json
#   NICE=19 scripts/fuzz.sh 30               (runs at that nice level)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:?usage: scripts/fuzz.sh MINUTES [TARGET...]}
shift
[[ "$minutes" =~ ^[0-9]+$ ]] && ((minutes > 0)) || { echo "MINUTES must be a positive integer" >&2; exit 2; }

scripts/build.sh fuzz
targets=("$@")
if ((${#targets[@]} == 0)); then
  for f in tests/fuzz/*.cpp; do targets+=("$(basename "$f" .cpp)"); done
fi

failed=()
for name in "${targets[@]}"; do
  fuzzer=build-fuzz/tests/fuzz/fuzz_$name
  [ -x "$fuzzer" ] || { echo "no fuzz target $name ($fuzzer)" >&2; exit 2; }
  corpus=tests/fuzz/corpus/$name
  crashes=build-fuzz/crashes/$name
  mkdir -p "$corpus" "$crashes"
  found=$(mktemp -d)
  echo "== $name for ${minutes} min (corpus: $(find "$corpus" -type f | wc -l) inputs)"
  if nice -n "${NICE:-0}" "$fuzzer" -max_total_time=$((minutes * 60)) -rss_limit_mb=2048 -timeout=10 \
      -print_final_stats=1 -artifact_prefix="$crashes/" "$found" "$corpus" >"$found.log" 2>&1; then
    grep -E '^stat::(number_of_executed_units|peak_rss_mb|new_units_added)' "$found.log" | sed 's/^/  /'
  else
    echo "  FAILED: see $crashes/ and the log below"
    grep -m1 -A30 'ERROR' "$found.log" || tail -20 "$found.log"
    failed+=("$name")
  fi
  # Keep only what adds coverage: merge the old corpus and the new finds into a fresh one.
  merged=$(mktemp -d)
  "$fuzzer" -merge=1 -rss_limit_mb=2048 -timeout=10 "$merged" "$corpus" "$found" >/dev/null 2>&1 || true
  if [ -n "$(ls -A "$merged")" ]; then
    rm -rf "$corpus" && mkdir -p "$corpus" && cp "$merged"/* "$corpus"/
  fi
  echo "  corpus now $(find "$corpus" -type f | wc -l) inputs"
  rm -rf "$found" "$found.log" "$merged"
done
if ((${#failed[@]})); then
  echo "== crashes in: ${failed[*]}"
  exit 1
fi
echo "== every target ran ${minutes} min without a crash"
