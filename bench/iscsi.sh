#!/bin/bash
# netblk convert vs qemu-img convert -m 1 against one tgtd LUN (a 256 MiB backing file):
# LUN -> file and file -> LUN. Runs are interleaved; medians of REPS repetitions and the
# ratios netblk/qemu-img are printed (> 1 means netblk is faster). qemu-img runs under
# `timeout` with -m 1 (its default -m 8 can hang for ever on a busy machine).
#
#   bench/iscsi.sh [REPS=7]
#
# Images live on disk (under $BENCH_DIR, /var/tmp by default), not in /dev/shm: tgtd writes
# its backing file with pwrite and reads it through the page cache either way.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

REPS=${1:-7}
NETBLK=${NETBLK:-$here/../build/netblk}
[ -x "$NETBLK" ] || { echo "no netblk binary at $NETBLK (set NETBLK=)"; exit 1; }
for p in tgtd tgtadm qemu-img python3; do command -v $p >/dev/null || { echo "$p is not installed"; exit 1; }; done

bench_workdir iscsi "${BENCH_DIR:-/var/tmp}"
# tgtd ignores SIGTERM: stop it with SIGKILL, by PID.
stop_tgtd() {
  [ -n "$server_pid" ] || return 0
  kill -9 "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}
trap 'stop_tgtd; rm -rf "$work"' EXIT

lun=$work/lun.img
src=$work/src.raw
out=$work/out.raw
dd if=/dev/urandom of="$lun" bs=1M count=256 status=none
dd if=/dev/urandom of="$src" bs=1M count=256 status=none
bytes=$(stat -c %s "$lun")

port=$(bench_free_port)
control=$((200 + $$ % 500))
export TGT_IPC_SOCKET=$work/sock
iqn=iqn.2026-12.bench.netblk:lun
/usr/sbin/tgtd -f -C "$control" --iscsi portal=127.0.0.1:$port >"$work/tgtd.log" 2>&1 &
server_pid=$!
for _ in $(seq 200); do tgtadm -C "$control" --lld iscsi --mode sys --op show >/dev/null 2>&1 && break; sleep 0.05; done
bench_wait_listen tcp "$port"
tgtadm -C "$control" --lld iscsi --mode target --op new --tid 1 --targetname "$iqn"
tgtadm -C "$control" --lld iscsi --mode logicalunit --op new --tid 1 --lun 1 --backing-store "$lun" --bstype rdwr
tgtadm -C "$control" --lld iscsi --mode target --op bind --tid 1 --initiator-address ALL
url=iscsi://127.0.0.1:$port/$iqn/1

# The copies must be right before they are timed.
rm -f "$out"
"$NETBLK" convert -O raw "$url" "$out"
cmp "$lun" "$out" || { echo "netblk convert from the LUN produced different bytes"; exit 1; }
"$NETBLK" convert -n -O raw "$src" "$url"
cmp "$src" "$lun" || { echo "netblk convert into the LUN produced different bytes"; exit 1; }

BENCH_PREPARE="rm -f '$out'; bench_warm_memory 512"
bench_run "convert 256 MiB LUN -> file" "$REPS" "$bytes" \
  "'$NETBLK' convert -O raw '$url' '$out'" \
  "timeout 120 qemu-img convert -m 1 -O raw '$url' '$out'"

BENCH_PREPARE="bench_warm_memory 512"
bench_run "convert 256 MiB file -> LUN" "$REPS" "$bytes" \
  "'$NETBLK' convert -n -O raw '$src' '$url'" \
  "timeout 120 qemu-img convert -m 1 -n -O raw '$src' '$url'"
