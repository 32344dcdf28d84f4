#!/bin/bash
# netblk vs qemu-img on a GlusterFS volume (glusterd on 127.0.0.1, one brick on disk):
# convert 256 MiB volume -> file and file -> volume, then `info` of the image. Runs are
# interleaved; medians of REPS repetitions and the ratios netblk/qemu-img are printed (> 1
# means netblk is faster), three ways for the copies:
#   - whole command: from start to exit, as a user waits for it (qemu-img's glfs_fini spends
#     ~10 s of it polling);
#   - transfer alone: each tool from its start to the moment its progress (-p) reaches 100%,
#     which leaves out qemu-img's teardown (and, writing, sending what gfapi's write-behind
#     still holds then: qemu-img does that in its teardown, netblk in its close); and
#     netblk's whole command against qemu-img's 100%, the stricter ratio. (qemu-img's whole
#     convert less its whole `info` is no measure: glfs_fini polls in 1 s steps, and the
#     difference came out between -0.01 and 1.2 s.)
#   - throughput: each tool from its first progress line at or past 10% to 100%, the same
#     bytes in both (their progress lines are alike), leaving out both starts and teardowns.
#
#   bench/gluster.sh [REPS=5]
#
# Only one glusterd can run on a machine (port 24007): the script waits for the lock the
# integration test's launcher takes too (/run/lock/netblk-glusterd.lock), and refuses to
# start when another glusterd holds the port.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

REPS=${1:-5}
NETBLK=${NETBLK:-$here/../build/netblk}
[ -x "$NETBLK" ] || { echo "no netblk binary at $NETBLK (set NETBLK=)"; exit 1; }
for p in glusterd gluster qemu-img python3 flock; do command -v $p >/dev/null || { echo "$p is not installed"; exit 1; }; done

exec 9>/run/lock/netblk-glusterd.lock
flock -w 600 9 || { echo "another glusterd instance holds /run/lock/netblk-glusterd.lock"; exit 1; }
if ss -Hltn "sport = :24007" | grep -q .; then echo "port 24007 is taken: $(ss -Hltnp 'sport = :24007')"; exit 1; fi

bench_workdir gluster
# glusterd's brick daemons detach from it: stop them by the PIDs in their pid files (and
# remove their sockets), then glusterd.
stop_gluster() {
  local f pid sock
  for f in "$work"/run/vols/*/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    sock=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | sed -n '/^-S$/{n;p}') || true
    kill -9 "$pid" 2>/dev/null || true
    [ -n "$sock" ] && rm -f "$sock"
  done
  bench_stop_server
}
trap 'stop_gluster; rm -rf "$work"' EXIT

mkdir -p "$work/state" "$work/run" "$work/brick"
cat >"$work/glusterd.vol" <<EOF
volume management
    type mgmt/glusterd
    option working-directory $work/state
    option run-directory $work/run
    option glusterd-sockfile $work/run/glusterd.socket
    option transport-type socket
    option transport.socket.bind-address 127.0.0.1
    option transport.socket.listen-port 24007
    option ping-timeout 0
    option event-threads 1
end-volume
EOF
/usr/sbin/glusterd -N -f "$work/glusterd.vol" -p "$work/run/glusterd.pid" -l "$work/glusterd.log" >"$work/glusterd.out" 2>&1 &
server_pid=$!
bench_wait_listen tcp 24007
G=(gluster --mode=script "--glusterd-sock=$work/run/glusterd.socket" "--log-file=$work/cli.log")
for _ in $(seq 200); do "${G[@]}" volume list >/dev/null 2>&1 && break; sleep 0.05; done
# The CLI refuses 127.0.0.1 and localhost as brick hosts.
"${G[@]}" volume create bench "127.1:$work/brick" force >/dev/null
"${G[@]}" volume start bench >/dev/null
for _ in $(seq 200); do "${G[@]}" volume status bench 2>/dev/null | grep -q ' Y ' && break; sleep 0.05; done

src=$work/src.raw
out=$work/out.raw
dd if=/dev/urandom of="$src" bs=1M count=256 status=none
bytes=$(stat -c %s "$src")
url=gluster://127.0.0.1/bench/image.raw

# The copies must be right before they are timed.
"$NETBLK" convert -O raw "$src" "$url"
cmp "$src" "$work/brick/image.raw" || { echo "netblk convert into the volume produced different bytes"; exit 1; }
rm -f "$out"
"$NETBLK" convert -O raw "$url" "$out"
cmp "$src" "$out" || { echo "netblk convert from the volume produced different bytes"; exit 1; }

# Transfer times: each tool from its start to the moment its progress (-p, the same line in
# both) reaches 100%, one file per command.
to100() {  # FILE COMMAND... (with -p)
  python3 -c '
import os, re, subprocess, sys, time
out, argv = sys.argv[1], sys.argv[2:]
start = time.monotonic()
p = subprocess.Popen(["timeout", "120"] + argv, stdout=subprocess.PIPE)
seen, at10, done_at = b"", None, None
while True:
    chunk = p.stdout.read1(4096)
    if not chunk:
        break
    seen = (seen + chunk)[-64:]
    now = time.monotonic()
    shown = [float(x) for x in re.findall(rb"\((\d+\.\d+)/100%\)", seen)]
    if at10 is None and shown and max(shown) >= 10.0:
        at10 = now
    if done_at is None and b"(100.00/100%)" in seen:
        done_at = now
if p.wait() != 0 or done_at is None:
    sys.exit("%s failed or never reached 100%%" % argv[0])
if os.environ.get("BENCH_REP") != "0":  # not the untimed warm-up
    open(out, "a").write("%.6f\n" % (done_at - start))
    open(out + ".whole", "a").write("%.6f\n" % (time.monotonic() - start))
    open(out + ".from10", "a").write("%.6f\n" % (done_at - at10))
' "$@"
}
transfer_summary() {  # NAME NETBLK_FILE QEMU_FILE
  local a w b a10 b10
  a=$(bench_median <"$2")
  w=$(bench_median <"$2.whole")
  b=$(bench_median <"$3")
  a10=$(bench_median <"$2.from10")
  b10=$(bench_median <"$3.from10")
  echo "== $1: transfer alone (start to 100% progress; qemu-img's teardown left out)"
  printf '  median %8.3f s  %9.1f MB/s  netblk (start to 100%%)\n' "$a" "$(echo "$bytes / $a / 1000000" | bc -l)"
  printf '  median %8.3f s  %9.1f MB/s  netblk (whole command, close included)\n' "$w" "$(echo "$bytes / $w / 1000000" | bc -l)"
  printf '  median %8.3f s  %9.1f MB/s  qemu-img (start to 100%%)\n' "$b" "$(echo "$bytes / $b / 1000000" | bc -l)"
  printf '  ratio %.2fx  (netblk speed / qemu-img speed, both to 100%%)\n' "$(echo "$b / $a" | bc -l)"
  printf '  ratio %.2fx  (netblk whole command / qemu-img to 100%%)\n' "$(echo "$b / $w" | bc -l)"
  printf '  median %8.3f s  netblk, 10%% to 100%% progress;  %.3f s  qemu-img\n' "$a10" "$b10"
  printf '  ratio %.2fx  (throughput over the same 90%% of the bytes: neither start nor teardown)\n' "$(echo "$b10 / $a10" | bc -l)"
}

BENCH_PREPARE="rm -f '$out'; bench_warm_memory 512"
bench_run "convert 256 MiB volume -> file (whole command)" "$REPS" "$bytes" \
  "to100 '$work/t.read.netblk' '$NETBLK' convert -p -O raw '$url' '$out'" \
  "to100 '$work/t.read.qemu' qemu-img convert -p -O raw '$url' '$out'"
transfer_summary "convert 256 MiB volume -> file" "$work/t.read.netblk" "$work/t.read.qemu"

BENCH_PREPARE="bench_warm_memory 512"
bench_run "convert 256 MiB file -> volume (whole command)" "$REPS" "$bytes" \
  "to100 '$work/t.write.netblk' '$NETBLK' convert -p -n -O raw '$src' '$url'" \
  "to100 '$work/t.write.qemu' qemu-img convert -p -n -O raw '$src' '$url'"
transfer_summary "convert 256 MiB file -> volume" "$work/t.write.netblk" "$work/t.write.qemu"
cmp "$src" "$work/brick/image.raw" || { echo "the volume's image is not the source after the runs"; exit 1; }


BENCH_PREPARE=
bench_run "info on the volume (median of 3)" 3 0 \
  "'$NETBLK' info '$url'" \
  "timeout 120 qemu-img info '$url'"
