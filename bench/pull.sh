#!/usr/bin/env bash
# netblk pull vs QEMU's block-stream (qemu-storage-daemon, QMP over a unix socket) vs
# netblk convert of the same URL: each fills a fresh qcow2 overlay (or, for convert, a raw
# file) from a 1 GiB image that nginx serves from the page cache on 127.0.0.1. The
# overlay and the raw target live on disk (under TMPDIR, /var/tmp by default), created
# again before every run.
#   NETBLK=path/to/netblk REPS=5 [SIZE_MIB=1024] bench/pull.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
NETBLK=${NETBLK:-$here/../build/netblk}
REPS=${REPS:-5}
SIZE=$((${SIZE_MIB:-1024} << 20))

bench_workdir pull "${TMPDIR:-/var/tmp}"
chmod 755 "$work"
mkdir -p "$work/www" "$work/tmp"
head -c $SIZE /dev/urandom > "$work/www/disk.img"
chmod 755 "$work/www"; chmod 644 "$work/www/disk.img"
cat "$work/www/disk.img" > /dev/null

http=$(bench_free_port)
cat > "$work/nginx.conf" <<CONF
daemon off;
worker_processes 2;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 512; }
http {
  access_log off;
  client_body_temp_path $work/tmp/b; proxy_temp_path $work/tmp/p; fastcgi_temp_path $work/tmp/f;
  uwsgi_temp_path $work/tmp/u; scgi_temp_path $work/tmp/s;
  sendfile on;
  server { listen 127.0.0.1:$http; root $work/www; }
}
CONF
/usr/sbin/nginx -p "$work" -c "$work/nginx.conf" -e "$work/error.log" & server_pid=$!
bench_wait_listen tcp $http
url="http://127.0.0.1:$http/disk.img"
backing="json:{\"file.driver\":\"http\", \"file.url\":\"$url\"}"
export work

# QEMU's block-stream of the overlay into itself, to the end of the job.
qemu_stream() {
  rm -f "$work/qmp.sock"
  qemu-storage-daemon --blockdev "driver=qcow2,node-name=ov,file.driver=file,file.filename=$work/ov.qcow2" \
    --chardev "socket,id=m,path=$work/qmp.sock,server=on,wait=off" --monitor chardev=m &
  local qsd=$!
  bench_wait_listen unix "$work/qmp.sock"
  python3 - "$work/qmp.sock" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
def recv():
    return json.loads(f.readline())
def cmd(name, **args):
    f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
    f.flush()
    while True:
        r = recv()
        if "error" in r:
            sys.exit(f"{name}: {r}")
        if "return" in r:
            return r
recv()
cmd("qmp_capabilities")
cmd("block-stream", **{"job-id": "pull", "device": "ov"})
while True:
    r = recv()
    if r.get("event") == "BLOCK_JOB_COMPLETED":
        if r["data"].get("error"):
            sys.exit(str(r))
        break
cmd("quit")
PY
  wait $qsd
}

BENCH_PREPARE='rm -f "$work/ov.qcow2" "$work/out.raw"; qemu-img create -q -f qcow2 -b "$backing" -F raw "$work/ov.qcow2"; sync'
echo "netblk pull of a $((SIZE >> 20)) MiB http-backed overlay, on $(nproc) CPUs; work directory $work"
# Like for like: pull and block-stream sync the overlay when they end (pull also as it goes,
# for power loss), and convert by default does not (qemu-img's cache=unsafe for a target).
# So each comparison is made twice: with every result synced, and with none.
bench_run "synced: pull vs block-stream vs convert -t writeback" "$REPS" $SIZE \
  "$NETBLK pull \"\$work/ov.qcow2\"" \
  "qemu_stream" \
  "$NETBLK convert -t writeback -O raw \"$url\" \"\$work/out.raw\""
# The last run's overlays: both streams give the image.
qemu-img compare -q -f qcow2 -F raw "$work/ov.qcow2" "$work/www/disk.img" && echo "  last overlay identical to the image"
bench_run "unsynced: pull -t unsafe vs convert (its default)" "$REPS" $SIZE \
  "$NETBLK pull -t unsafe \"\$work/ov.qcow2\"" \
  "$NETBLK convert -O raw \"$url\" \"\$work/out.raw\""
qemu-img compare -q -f qcow2 -F raw "$work/ov.qcow2" "$work/www/disk.img" && echo "  last overlay identical to the image"
