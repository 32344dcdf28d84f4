#!/bin/bash
# netblk convert nbd://... out.raw vs nbdcopy and qemu-img convert, all reading the same
# nbdkit file server (a 1 GiB random file) and writing a raw file, both in BENCH_DIR
# (bench/lib.sh: on disk unless set), over TCP and over a unix socket. Runs are interleaved; medians of REPS
# repetitions and the ratios netblk/other are printed (> 1 means netblk is faster).
#
#   bench/nbd_convert.sh [REPS=9]
#
# Before every copy the target is removed and 1.5 GiB of memory is written and freed
# (bench_warm_memory: on the development VMs, copies whose pages came from memory handed
# back to the host took 2-4x as long, whichever tool ran them).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

REPS=${1:-9}
NETBLK=${NETBLK:-$here/../build/netblk}
[ -x "$NETBLK" ] || { echo "no netblk binary at $NETBLK (set NETBLK=)"; exit 1; }
for p in nbdkit nbdcopy qemu-img python3; do command -v $p >/dev/null || { echo "$p is not installed"; exit 1; }; done

bench_workdir nbdconvert
image=$work/src.raw
out=$work/out.raw
dd if=/dev/urandom of="$image" bs=1M count=1024 status=none
bytes=$(stat -c %s "$image")

for transport in tcp unix; do
  if [ "$transport" = tcp ]; then
    port=$(bench_free_port)
    bench_start_server tcp "$port" nbdkit -f -i 127.0.0.1 -p "$port" file "$image"
    uri="nbd://127.0.0.1:$port/"
  else
    sock=$work/nbdkit.sock
    bench_start_server unix "$sock" nbdkit -f -U "$sock" file "$image"
    uri="nbd+unix:///?socket=$sock"
  fi
  # The copy must be right before it is timed.
  rm -f "$out"
  "$NETBLK" convert -O raw "$uri" "$out"
  cmp "$image" "$out" || { echo "netblk convert over $transport produced different bytes"; exit 1; }
  # Every tool writes a fresh raw file of the same size, into memory the host backs.
  BENCH_PREPARE="rm -f '$out'; bench_warm_memory 1536"
  bench_run "convert 1 GiB from nbdkit over $transport" "$REPS" "$bytes" \
    "'$NETBLK' convert -O raw '$uri' '$out'" \
    "nbdcopy '$uri' '$out'" \
    "qemu-img convert -O raw '$uri' '$out'"
  bench_stop_server
done
