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

if "$N" info --help >/dev/null 2>&1 && "$N" create -f qcow2 "$work/probe.qcow2" 1M >/dev/null 2>&1; then
  echo; echo "== a qcow2 overlay on the raw image"
  step "$N" create -f qcow2 -b "$work/disk.raw" -F raw "$work/overlay.qcow2"
  step "$N" info --backing-chain "$work/overlay.qcow2"
  step "$N" compare "$work/overlay.qcow2" "$work/disk.raw"
  step qemu-img check "$work/overlay.qcow2"
fi
echo; echo "== demo finished"
