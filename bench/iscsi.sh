#!/bin/bash
# netblk convert vs qemu-img convert -m 1 against one tgtd LUN (a 256 MiB backing file):
# LUN -> file and file -> LUN; then netblk serve vs qemu-nbd exporting the LUN, fio 4k random
# reads and writes at iodepth 32. Runs are interleaved; medians of REPS repetitions and the
# ratios netblk/qemu-img are printed (> 1 means netblk is faster). qemu-img runs under
# `timeout` with -m 1 (its default -m 8 can hang for ever on a busy machine).
#
#   bench/iscsi.sh [REPS=7]   (FIO_SECONDS=5: each fio run of the serve comparison)
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

bench_workdir iscsi
# tgtd ignores SIGTERM: stop it with SIGKILL, by PID.
nbd_pid=
stop_tgtd() {
  [ -n "$nbd_pid" ] && kill "$nbd_pid" 2>/dev/null
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

# The LUN exported over NBD: netblk serve vs qemu-nbd, each started for its run and fed by
# fio's nbd engine (libnbd), 4 KiB random reads and writes at iodepth 32.
SECS=${FIO_SECONDS:-5}
declare -A iops
for workload in randread randwrite; do
  echo "== serve the LUN, fio 4k $workload iodepth 32 ($REPS repetitions of ${SECS}s, interleaved)"
  for ((rep = 1; rep <= REPS; rep++)); do
    servers=(netblk qemu-nbd); ((rep % 2)) || servers=(qemu-nbd netblk)
    for s in "${servers[@]}"; do
      nbd_port=$(bench_free_port)
      case $s in
        netblk) "$NETBLK" serve -t -e 0 -f raw -b 127.0.0.1 -p "$nbd_port" "$url" & ;;
        qemu-nbd) qemu-nbd -t -e 0 -f raw -b 127.0.0.1 -p "$nbd_port" "$url" & ;;
      esac
      nbd_pid=$!
      bench_wait_listen tcp "$nbd_port"
      bench_warm_memory 512
      n=$(bench_fio_iops --name=bench --ioengine=nbd --uri="nbd://127.0.0.1:$nbd_port/" --rw="$workload" --bs=4k \
            --iodepth=32 --size=256M --runtime="$SECS" --time_based --ramp_time=1)
      kill "$nbd_pid"; wait "$nbd_pid" 2>/dev/null || true; nbd_pid=
      iops[$workload.$s]+="$n "
      printf '  run %d  %-9s %8d IOPS\n' "$rep" "$s" "$n"
    done
  done
  for s in netblk qemu-nbd; do
    med=$(echo "${iops[$workload.$s]}" | tr ' ' '\n' | grep . | bench_median)
    iops[$workload.median.$s]=$med
    printf '  median %-9s %8.0f IOPS\n' "$s" "$med"
  done
  printf '  ratio %.2fx  (netblk / qemu-nbd)\n' "$(echo "${iops[$workload.median.netblk]} / ${iops[$workload.median.qemu-nbd]}" | bc -l)"
done
