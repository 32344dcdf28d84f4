#!/usr/bin/env bash
# netblk serve vs qemu-nbd exporting the same qcow2 overlay over a 1 GiB raw base, driven
# by fio's nbd engine (libnbd) over TCP, 4 KiB requests at iodepth 32:
#   1. randread on a fresh overlay (every read goes through to the base),
#   2. randwrite on it (allocating: copy-on-write of 64 KiB clusters from the base),
#   3. randread after the writes (a mix of overlay and base clusters).
# Each repetition starts from a fresh overlay; the servers alternate. Prints every run's
# IOPS, the medians and the ratio netblk / qemu-nbd (> 1: netblk is faster).
#
#   bench/qcow2_serve.sh [REPS] [SECONDS]      (NETBLK=path/to/netblk, default build/netblk)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
NETBLK=${NETBLK:-$here/../build/netblk}
REPS=${1:-3}
SECS=${2:-10}
bench_workdir qcow2serve

port=$(bench_free_port)
echo "base: 1 GiB of random data; overlay: qcow2, 64 KiB clusters; fio 4k iodepth 32, ${SECS}s per phase"
head -c 1G /dev/urandom >"$work/base.raw"

start_server() {  # $1 = netblk | qemu-nbd
  rm -f "$work/ov.qcow2"
  qemu-img create -q -f qcow2 -b "$work/base.raw" -F raw "$work/ov.qcow2"
  local log=$work/server.log
  if [ "$1" = netblk ]; then
    bench_start_server tcp "$port" --log "$log" "$NETBLK" serve -f qcow2 -b 127.0.0.1 -p "$port" -x disk -t "$work/ov.qcow2"
  else
    bench_start_server tcp "$port" --log "$log" qemu-nbd -t -f qcow2 -x disk -b 127.0.0.1 -p "$port" "$work/ov.qcow2"
  fi
}

stop_server() {
  bench_stop_server
  qemu-img check -q "$work/ov.qcow2" || { echo "overlay does not check clean after $1" >&2; exit 1; }
}

fio_phase() {  # $1 = rw; fio's nbd engine prints a line before the JSON
  fio --output-format=json --name=p --ioengine=nbd --uri="nbd://127.0.0.1:$port/disk" --rw="$1" --bs=4k --iodepth=32 \
    --runtime="$SECS" --time_based --norandommap --randrepeat=0 |
    sed -n '/^{/,$p' | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print(int(j["read"]["iops"]+j["write"]["iops"]))'
}

declare -A results
phases=(randread-fresh randwrite-alloc randread-after)
for ((rep = 1; rep <= REPS; rep++)); do
  for tool in netblk qemu-nbd; do
    start_server "$tool"
    r1=$(fio_phase randread)
    r2=$(fio_phase randwrite)
    r3=$(fio_phase randread)
    stop_server "$tool"
    results[$tool.randread-fresh]+="$r1 "
    results[$tool.randwrite-alloc]+="$r2 "
    results[$tool.randread-after]+="$r3 "
    printf 'rep %d %-8s  randread-fresh %7d  randwrite-alloc %7d  randread-after %7d IOPS\n' "$rep" "$tool" "$r1" "$r2" "$r3"
  done
done

median() { tr ' ' '\n' | grep -v '^$' | bench_median; }
echo "== medians (IOPS) and ratio netblk / qemu-nbd"
for p in "${phases[@]}"; do
  n=$(echo "${results[netblk.$p]}" | median)
  q=$(echo "${results[qemu-nbd.$p]}" | median)
  printf '  %-16s netblk %8.0f   qemu-nbd %8.0f   ratio %.2fx\n' "$p" "$n" "$q" "$(echo "$n / $q" | bc -l)"
done
