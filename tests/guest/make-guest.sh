#!/usr/bin/env bash
# Builds the test guest into DIR (reused when already there): a Debian cloud kernel
# (downloaded as a .deb and unpacked privately, never installed) and a busybox initramfs
# whose /init checks /dev/vda and powers off. Usage: tests/guest/make-guest.sh DIR
#
# The guest's /init prints, on the serial console:
#   NETBLK-SUM <sha256 of the first $SUMBYTES bytes of /dev/vda, all of it when 0>
#   NETBLK-MARKER-WRITTEN   after writing "netblk-marker-$MARKER" at sector $MARKER_SECTOR
#   NETBLK-DONE
# KEY=VALUE words on the kernel command line (no dots) reach /init as variables.
set -euo pipefail
dir=$1
mkdir -p "$dir"
cd "$dir"
if [ ! -s vmlinuz ] || [ ! -s initramfs.gz ]; then
  rm -rf deb kernel initramfs ./*.deb
  pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [ -n "$pkg" ] || { echo "make-guest: no linux-image-*-cloud-amd64 package known to apt" >&2; exit 1; }
  apt-get download "$pkg" >/dev/null
  dpkg -x ./"$pkg"_*.deb kernel
  cp kernel/boot/vmlinuz-* vmlinuz.tmp
  moddir=$(echo kernel/lib/modules/*/kernel)
  mkdir -p initramfs/bin initramfs/dev initramfs/proc initramfs/sys initramfs/modules
  cp /bin/busybox initramfs/bin/busybox
  # virtio_blk and what it needs, in load order.
  for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
           drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci drivers/block/virtio_blk; do
    f=$(ls "$moddir/$m.ko"* | head -1)
    case "$f" in
      *.xz) xz -dc "$f" >"initramfs/modules/$(basename "$m").ko" ;;
      *.zst) zstd -qdc "$f" >"initramfs/modules/$(basename "$m").ko" ;;
      *) cp "$f" "initramfs/modules/$(basename "$m").ko" ;;
    esac
  done
  mknod initramfs/dev/console c 5 1
  cat >initramfs/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
  insmod /modules/$m.ko 2>/dev/null
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if [ -b /dev/vda ]; then
  if [ "${SUMBYTES:-0}" = 0 ]; then
    sum=$(sha256sum /dev/vda | cut -d' ' -f1)
  else
    sum=$(head -c "$SUMBYTES" /dev/vda | sha256sum | cut -d' ' -f1)
  fi
  echo "NETBLK-SUM $sum"
  if [ -n "${MARKER:-}" ]; then
    printf 'netblk-marker-%s' "$MARKER" | dd of=/dev/vda bs=512 seek="${MARKER_SECTOR:-0}" conv=notrunc,fsync 2>/dev/null \
      && echo "NETBLK-MARKER-WRITTEN"
  fi
else
  echo "NETBLK-NO-DISK"
fi
sync
echo "NETBLK-DONE"
poweroff -f
INIT
  chmod +x initramfs/init
  (cd initramfs && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) >initramfs.gz.tmp
  mv vmlinuz.tmp vmlinuz
  mv initramfs.gz.tmp initramfs.gz
  rm -rf kernel initramfs ./*.deb
fi
echo "$dir/vmlinuz $dir/initramfs.gz"
