#!/usr/bin/env bash
# Installs every Debian 12 package netblk needs to build, test and benchmark.
# Idempotent; quiet when everything is already there. Run as root.
set -euo pipefail

packages=(
  # build
  build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev
  libasio-dev nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev
  zlib1g-dev libzstd-dev libcurl4-openssl-dev libssl-dev libgnutls28-dev
  # reference tools and real servers for the tests and benchmarks
  qemu-utils qemu-block-extra nbdkit nbd-server nbd-client libnbd-bin fio
  nginx-light libnginx-mod-http-echo vsftpd tftpd-hpa curl openssl ca-certificates
  gnutls-bin iproute2 procps python3 bc tinyproxy
  # the guest that boots from a netblk export
  qemu-system-x86 busybox-static cpio
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Services the packages start on install would hold the ports and files tests use.
for svc in nginx vsftpd tftpd-hpa nbd-server; do
  if [ -x /etc/init.d/$svc ]; then /etc/init.d/$svc stop >/dev/null 2>&1 || true; fi
done
exit 0
