#!/usr/bin/env bash
# Installs the build in BUILD (default build/) into a temporary prefix, builds this consumer
# against it with find_package(netblk) and with pkg-config, and reads the first block of a
# qcow2 image (over a raw file) through it. Fails on any step.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:-$here/../../build}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null
cmake -S "$here" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
ninja -C "$work/build" >/dev/null
# The same program through pkg-config.
pc_dir=$(dirname "$(find "$prefix" -name netblk.pc | head -1)")
# shellcheck disable=SC2046
c++ -O1 -o "$work/read_block_pc" "$here/main.cpp" $(PKG_CONFIG_PATH=$pc_dir pkg-config --cflags --libs netblk)

printf 'netblk consumer test block\n' >"$work/disk.raw"
truncate -s 1M "$work/disk.raw"
"$prefix/bin/netblk" create -q -f qcow2 -b "$work/disk.raw" -F raw "$work/disk.qcow2"
want="1048576 512 6e6574626c6b20636f6e73756d657220"
for got in "$("$work/build/read_block" "$work/disk.qcow2")" \
           "$("$work/read_block_pc" --image-opts "driver=qcow2,file.driver=file,file.filename=$work/disk.qcow2")"; do
  if [ "$got" != "$want" ]; then
    echo "consumer: read '$got', expected '$want'" >&2
    exit 1
  fi
done
echo "consumer: find_package(netblk) and pkg-config builds read the first block: $want"
