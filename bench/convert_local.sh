#!/usr/bin/env bash
# netblk convert vs qemu-img convert: a 1 GiB local raw file (random data, fully allocated,
# in page cache) to a new raw file in the same directory. Usage: bench/convert_local.sh [REPS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
netblk=${NETBLK:-$here/../build/netblk}
reps=${1:-5}
bench_workdir local
dir=$work
size=$((1 << 30))
head -c $size /dev/urandom >"$dir/src.raw"
cat "$dir/src.raw" >/dev/null   # into the page cache
BENCH_PREPARE="rm -f '$dir/dst.raw'; bench_warm_memory 1536"
bench_run "convert 1 GiB raw -> raw (local file)" "$reps" $size \
  "$netblk convert -f raw -O raw '$dir/src.raw' '$dir/dst.raw'" \
  "qemu-img convert -f raw -O raw '$dir/src.raw' '$dir/dst.raw'"
cmp "$dir/src.raw" "$dir/dst.raw" && echo "  output identical to the source"
