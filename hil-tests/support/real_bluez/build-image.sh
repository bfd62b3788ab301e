#!/bin/sh
# Builds the real-BlueZ rig's root filesystem: Debian 12 minbase with the packages listed in PACKAGES,
# as an ext4 image plus Debian's kernel and initramfs, into OUT (which must not exist yet). The test
# suite runs this once per change of this script or of the package list; it needs root (debootstrap
# and chroot). VITALSD_DEBIAN_MIRROR overrides debootstrap's default mirror.
#
# Usage: build-image.sh PACKAGES OUT
set -eu

packages_file=$1
out=$2
work=$out.partial
rm -rf "$work"
mkdir -p "$work"
root=$work/root

include=$(grep -v '^#' "$packages_file" | grep -v '^$' | paste -sd, -)
echo "debootstrap: $include"
# shellcheck disable=SC2086 # the mirror is optional: absent, debootstrap picks its default
debootstrap --variant=minbase --include="$include" bookworm "$root" ${VITALSD_DEBIAN_MIRROR:-}

# The installed versions, compared by the suite with packages.lock.
chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' | sort > "$work/packages.installed"

# dbus-daemon refuses to start without a machine id.
chroot "$root" dbus-uuidgen --ensure=/etc/machine-id
echo rig > "$root/etc/hostname"

# PID 1: mounts the test's 9p share and hands over to the init script the test put there, so the
# guest's steps can change without rebuilding the image. Exit codes through isa-debug-exit: 125 when
# the share cannot be mounted.
cat > "$root/sbin/rig-init" <<'INIT'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
modprobe -q 9pnet_virtio
modprobe -q 9p
mkdir -p /share
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share /share && [ -f /share/init.sh ]; then
  exec /bin/sh /share/init.sh
fi
echo "rig-init: cannot mount the 9p share or find /share/init.sh" > /dev/console
printf '\175' | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
sleep 5
INIT
chmod 755 "$root/sbin/rig-init"

cp "$root"/boot/vmlinuz-* "$work/vmlinuz"

# A small initramfs instead of Debian's (34 MB, with udev): it boots about 13 s sooner under TCG. A static
# busybox loads the modules the root disk needs, in dependency order, and switches to the root.
initramfs=$root/tmp/initramfs
mkdir -p "$initramfs/bin"
cp "$root/bin/busybox" "$initramfs/bin/busybox"
kernel=$(ls "$root/lib/modules")
: > "$initramfs/modules"
for module in virtio_pci virtio_blk ext4; do
  chroot "$root" modprobe --set-version "$kernel" --show-depends "$module" | while read -r kind path _; do
    [ "$kind" = insmod ] || continue
    [ -f "$initramfs$path" ] && continue
    mkdir -p "$initramfs$(dirname "$path")"
    cp "$root$path" "$initramfs$path"
    echo "$path" >> "$initramfs/modules"
  done
done
cat > "$initramfs/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /dev /root
mount -t proc proc /proc
mount -t devtmpfs devtmpfs /dev
for module in $(cat /modules); do insmod "$module"; done
tries=50
while [ ! -b /dev/vda ] && [ $tries -gt 0 ]; do sleep 0.1; tries=$((tries - 1)); done
mount -t ext4 -o rw /dev/vda /root || { echo "initramfs: cannot mount /dev/vda"; exec sh; }
umount /proc
umount /dev
exec switch_root /root /sbin/rig-init
INIT
chmod 755 "$initramfs/init"
chroot "$root" sh -c 'cd /tmp/initramfs && find . | cpio -o -H newc --quiet' | gzip -1 > "$work/initrd.img"
rm -rf "$initramfs"

# What the guest never reads: downloaded packages, documentation, the kernel and initramfs (outside now).
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc \
  "$root"/usr/share/man "$root"/usr/share/locale "$root"/boot/*

size_mib=$(( $(du -sm "$root" | cut -f1) * 13 / 10 + 64 ))
mkfs.ext4 -q -F -L rig -d "$root" "$work/root.ext4" "${size_mib}M"
rm -rf "$root"
mv "$work" "$out"
echo "built $out (${size_mib} MiB)"
