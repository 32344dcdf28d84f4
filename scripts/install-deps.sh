#!/usr/bin/env bash
# Installs every Debian 12 package netblk needs to build, test and benchmark: the ones
# below, and those each protocol folder lists in src/protocols/NAME/packages (its library
# and the real servers its tests start). Idempotent; quiet when everything is already
# there. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  # build
  build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev
  libasio-dev nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev
  zlib1g-dev libzstd-dev libgnutls28-dev
  # man pages (docs/man: scdoc turns them into roff; man-db reads them) and the .deb
  # (scripts/package.sh: CPack runs dpkg-shlibdeps and file)
  scdoc man-db dpkg-dev file
  # reference tools for the tests and benchmarks (qemu-nbd serves the NBD export tests too)
  qemu-utils qemu-block-extra nbdkit libnbd-bin fio ca-certificates iproute2 procps python3 bc
  # the guest that boots from a netblk export
  qemu-system-x86 busybox-static cpio
)
for list in src/protocols/*/packages; do
  [ -e "$list" ] || continue
  read -ra listed <<<"$(sed 's/#.*//' "$list" | tr '\n' ' ')"
  packages+=("${listed[@]}")
done

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
