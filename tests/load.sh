#!/usr/bin/env bash
# The load test at full size: COPIES copies (30 by default) per protocol with a real server
# here (NBD, HTTP, FTP, TFTP, iSCSI, SSH), both CPUs kept busy meanwhile, each copy under a
# timeout. Prints a line per protocol (copies, hangs, failures, mismatches) and exits
# non-zero unless every count is 0. CI runs the same binary with 3 copies (ctest: load).
#
#   tests/load.sh [COPIES=30]        (after scripts/build.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
copies=${1:-30}
[ -x build/tests/it_load ] || { echo "build/tests/it_load is missing: run scripts/build.sh first" >&2; exit 2; }
NETBLK_LOAD_COPIES=$copies build/tests/it_load --gtest_brief=1 | grep -E '^load:|FAILED|PASSED|Failure|error'
