#!/usr/bin/env bash
# The main job, end to end on loopback, from a fresh Debian 12 machine (as root):
# installs the packages, builds, then shows netblk doing what users use it for.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release >/dev/null
N=$PWD/build/netblk
work=$(mktemp -d /tmp/netblk-demo-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

echo "== a local image"
step "$N" create -f raw "$work/disk.raw" 64M
head -c 8M /dev/urandom | dd of="$work/disk.raw" bs=1M seek=4 conv=notrunc status=none
step "$N" info "$work/disk.raw"
step "$N" info --output=json "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"$work/disk.raw\"}}"
step "$N" map "$work/disk.raw"
step "$N" convert -p -O raw "$work/disk.raw" "$work/copy.raw"
step "$N" compare "$work/disk.raw" "$work/copy.raw"
step qemu-img compare "$work/disk.raw" "$work/copy.raw"

if "$N" serve --help >/dev/null 2>&1; then
  echo; echo "== the image exported over NBD, read back by netblk and by qemu-img"
  "$N" serve -r -k "$work/nbd.sock" -x disk -f raw -t "$work/disk.raw" & pids+=($!)
  for _ in $(seq 200); do [ -S "$work/nbd.sock" ] && break; sleep 0.05; done
  step "$N" info "nbd+unix:///disk?socket=$work/nbd.sock"
  step "$N" compare -f raw "nbd+unix:///disk?socket=$work/nbd.sock" "$work/disk.raw"
  step qemu-img compare -f raw "nbd+unix:///disk?socket=$work/nbd.sock" "$work/disk.raw"
fi

echo; echo "== the documented remote-image setup: a qcow2 overlay on an http image, exported with copy-on-read"
mkdir -p "$work/www" "$work/nginx-tmp"
cp "$work/disk.raw" "$work/www/disk.img"
chmod -R a+rX "$work"
port=18080
while ss -ltn | grep -q ":$port "; do port=$((port + 1)); done
cat >"$work/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $work/nginx.pid; error_log $work/nginx-error.log;
events { worker_connections 64; }
http { access_log off; client_body_temp_path $work/nginx-tmp/b; proxy_temp_path $work/nginx-tmp/p;
  fastcgi_temp_path $work/nginx-tmp/f; uwsgi_temp_path $work/nginx-tmp/u; scgi_temp_path $work/nginx-tmp/s;
  server { listen 127.0.0.1:$port; root $work/www; } }
CONF
/usr/sbin/nginx -p "$work" -c "$work/nginx.conf" -e "$work/nginx-error.log" & nginx_pid=$!; pids+=($nginx_pid)
for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
step "$N" info "http://127.0.0.1:$port/disk.img"
step "$N" create -f qcow2 -o "backing_file=json:{\"file.driver\":\"http\",, \"file.url\":\"http://127.0.0.1:$port/disk.img\",, \"file.readahead\":\"64k\"}" -F raw "$work/ov.qcow2"
step "$N" info --backing-chain "$work/ov.qcow2"
"$N" serve -t -e 0 -k "$work/ov.sock" -x disk --drive "file=$work/ov.qcow2,format=qcow2,copy-on-read=on" & pids+=($!)
for _ in $(seq 200); do [ -S "$work/ov.sock" ] && break; sleep 0.05; done
step "$N" compare -f raw "nbd+unix:///disk?socket=$work/ov.sock" "$work/disk.raw"
echo "(stopping the web server: the overlay now holds everything that was read)"
kill "$nginx_pid"; wait "$nginx_pid" 2>/dev/null || true
step "$N" compare -f raw "nbd+unix:///disk?socket=$work/ov.sock" "$work/disk.raw"
step qemu-img compare -f raw "nbd+unix:///disk?socket=$work/ov.sock" "$work/disk.raw"
echo; echo "== demo finished"
