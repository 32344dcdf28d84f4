#!/bin/bash
# netblk vs qemu-img vs the rbd tool on a Ceph cluster on 127.0.0.1 (one monitor, one
# memstore OSD, no authentication): 256 MiB file -> RBD (netblk convert, qemu-img convert,
# rbd import: each makes the image anew), RBD -> file (netblk convert, qemu-img convert,
# rbd export) and RBD -> local qcow2 (netblk convert, qemu-img convert). Runs are
# interleaved; medians of REPS repetitions and the ratios are printed (> 1 means netblk is
# faster). Targets: >= 1.5x qemu-img and >= 1.0x the rbd tool on each row.
#
#   bench/rbd.sh [REPS=3]
#
# memstore keeps every object in the OSD's memory (about 1 GB after a few 256 MiB writes):
# each image is removed before the next command makes it again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

REPS=${1:-3}
NETBLK=${NETBLK:-$here/../build/netblk}
[ -x "$NETBLK" ] || { echo "no netblk binary at $NETBLK (set NETBLK=)"; exit 1; }
for p in ceph-mon ceph-osd ceph rbd rados monmaptool qemu-img; do
  command -v $p >/dev/null || { echo "$p is not installed (apt-get install ceph-mon ceph-osd ceph-common)"; exit 1; }
done

bench_workdir rbd
osd_pid=
stop_ceph() {
  [ -n "$osd_pid" ] && { kill "$osd_pid" 2>/dev/null || true; wait "$osd_pid" 2>/dev/null || true; }
  bench_stop_server  # the monitor
}
trap 'stop_ceph; rm -rf "$work"' EXIT

p1=$(bench_free_port)
p2=$(bench_free_port)
fsid=$(cat /proc/sys/kernel/random/uuid)
addrs="[v2:127.0.0.1:$p2,v1:127.0.0.1:$p1]"
mkdir -p "$work/mon" "$work/osd/osd.0" "$work/run"
cat >"$work/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = $addrs
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv4 = true
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd crush chooseleaf type = 0
mon allow pool size one = true
run dir = $work/run
pid file = $work/run/\$name.pid
admin socket = $work/run/\$name.asok
log file = $work/\$name.log
mon data = $work/mon/\$name
osd data = $work/osd/\$name
osd objectstore = memstore
client mount timeout = 10
rados mon op timeout = 10
EOF
export CEPH_CONF=$work/ceph.conf
monmaptool --create --fsid "$fsid" --addv a "$addrs" "$work/monmap" >/dev/null
ceph-mon -i a --mkfs --monmap "$work/monmap"
ceph-mon -i a -f >"$work/mon.out" 2>&1 &
server_pid=$!
for _ in $(seq 300); do ceph mon stat >/dev/null 2>&1 && break; sleep 0.1; done
ceph osd create >/dev/null
ceph osd crush add osd.0 1 root=default >/dev/null 2>&1
ceph-osd -i 0 --mkfs --osd-uuid "$(cat /proc/sys/kernel/random/uuid)" >/dev/null 2>&1
ceph-osd -i 0 -f >"$work/osd.out" 2>&1 &
osd_pid=$!
for _ in $(seq 600); do ceph osd dump 2>/dev/null | grep -q '^osd.0 up' && break; sleep 0.1; done
ceph osd pool create rbd 8 8 >/dev/null 2>&1
rbd pool init rbd
echo x >"$work/probe"
for _ in $(seq 600); do rados -p rbd put probe "$work/probe" 2>/dev/null && break; sleep 0.1; done

src=$work/src.raw
out=$work/out.raw
dd if=/dev/urandom of="$src" bs=1M count=256 status=none
bytes=$(stat -c %s "$src")
C=$work/ceph.conf
img=rbd:rbd/image:conf=$C
made=rbd:rbd/made:conf=$C

# The copies must be right before they are timed.
"$NETBLK" convert -O raw "$src" "$img"
rbd export rbd/image "$out" >/dev/null 2>&1
cmp "$src" "$out" || { echo "netblk convert into RBD produced different bytes"; exit 1; }
rm -f "$out"
"$NETBLK" convert -O raw "$img" "$out"
cmp "$src" "$out" || { echo "netblk convert from RBD produced different bytes"; exit 1; }

BENCH_PREPARE="rbd rm rbd/made >/dev/null 2>&1 || true; bench_warm_memory 512"
bench_run "convert 256 MiB file -> RBD (a new image)" "$REPS" "$bytes" \
  "'$NETBLK' convert -O raw '$src' '$made'" \
  "qemu-img convert -O raw '$src' '$made'" \
  "rbd import --no-progress '$src' rbd/made"
rbd rm rbd/made >/dev/null 2>&1 || true

BENCH_PREPARE="rm -f '$out'; bench_warm_memory 512"
bench_run "convert 256 MiB RBD -> file" "$REPS" "$bytes" \
  "'$NETBLK' convert -O raw '$img' '$out'" \
  "qemu-img convert -O raw '$img' '$out'" \
  "rbd export --no-progress rbd/image '$out'"
cmp "$src" "$out" || { echo "the last copy out of RBD is not the source"; exit 1; }

BENCH_PREPARE="rm -f '$work/out.qcow2'; bench_warm_memory 512"
bench_run "convert 256 MiB RBD -> local qcow2" "$REPS" "$bytes" \
  "'$NETBLK' convert -O qcow2 '$img' '$work/out.qcow2'" \
  "qemu-img convert -O qcow2 '$img' '$work/out.qcow2'"
