#!/bin/bash
# Build the tiny test guest: OUTDIR/vmlinuz and OUTDIR/initrd.gz.
#
# Usage: build.sh OUTDIR      (run as root on Debian 12; needs apt-get, dpkg-deb, cpio, gzip)
#
# The kernel is Debian's cloud kernel; the initramfs is busybox-static plus the
# ACPI button and evdev modules. Its /init prints "WIRT-GUEST: booted" on the
# serial console, waits for one event from the ACPI "Power Button" input device,
# prints "WIRT-GUEST: power button" and powers off.
#
# Reboot: libvirt's reboot(VIR_DOMAIN_REBOOT_ACPI_POWER_BTN) on QEMU is a "fake
# reboot": libvirt runs QEMU with -no-shutdown, presses the power button
# (system_powerdown), and when the guest powers off libvirt resets the vCPUs and
# resumes the same QEMU process. So this guest needs no special reboot handling:
# it powers off as usual, boots again in the same QEMU process, and
# "WIRT-GUEST: booted" appears a second time in the console log
# (tests/guest/test_guest_smoke.py checks this).
#
# The build is skipped if OUTDIR already holds both files and a stamp with this
# script's hash. The stamp does not notice a newer kernel in the Debian
# archive; delete OUTDIR to pick one up.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
outdir=$1
script_hash=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)

if [ -f "$outdir/vmlinuz" ] && [ -f "$outdir/initrd.gz" ] &&
    [ "$(cat "$outdir/stamp" 2>/dev/null)" = "$script_hash" ]; then
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# linux-image-cloud-amd64 is a metapackage depending on the current real kernel.
resolve_kernel() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-.*-cloud-amd64$/ { print $2; exit }'
}
# Sandbox::User=root: the temp dir is not writable by the _apt user.
download() {
    [ -n "$kpkg" ] &&
        (cd "$work" && apt-get -q -o APT::Sandbox::User=root download "$kpkg" busybox-static)
}

kpkg=$(resolve_kernel || true)
if ! download; then
    # No package lists (a fresh image), or stale ones naming a kernel the
    # mirror no longer has: refresh them once and resolve again.
    echo "build.sh: refreshing the package lists (apt-get update) and retrying" >&2
    apt-get update -qq
    kpkg=$(resolve_kernel || true)
    if ! download; then
        echo "build.sh: cannot download the cloud kernel (${kpkg:-not found}) and busybox-static" >&2
        exit 1
    fi
fi
dpkg-deb -x "$work/$kpkg"_*.deb "$work/kernel"
dpkg-deb -x "$work"/busybox-static_*.deb "$work/busybox"

root=$work/root
mkdir -p "$root"/{bin,lib,proc,sys,dev}
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
for applet in sh mount insmod cat dd echo sleep poweroff; do
    ln -s busybox "$root/bin/$applet"
done

# Neither module has dependencies. Decompress them if the kernel ships them compressed.
moddir=$(echo "$work"/kernel/lib/modules/*/kernel)
for mod in drivers/acpi/button drivers/input/evdev; do
    dest=$root/lib/$(basename "$mod").ko
    if [ -f "$moddir/$mod.ko" ]; then cp "$moddir/$mod.ko" "$dest"
    elif [ -f "$moddir/$mod.ko.xz" ]; then xz -dc "$moddir/$mod.ko.xz" >"$dest"
    elif [ -f "$moddir/$mod.ko.zst" ]; then zstd -qdc "$moddir/$mod.ko.zst" >"$dest"
    else echo "build.sh: $mod.ko not found in $kpkg" >&2; exit 1
    fi
done

cat >"$root/init" <<'EOF'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The cpio has no /dev/console node, so the kernel gave init no stdio.
exec </dev/console >/dev/console 2>&1
insmod /lib/button.ko
insmod /lib/evdev.ko

dev=
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    for name in /sys/class/input/event*/device/name; do
        if [ "$(cat "$name" 2>/dev/null)" = "Power Button" ]; then
            dev=${name%/device/name}
            dev=/dev/input/${dev##*/}
        fi
    done
    [ -n "$dev" ] && [ -c "$dev" ] && break
    sleep 0.1
done
if [ -z "$dev" ]; then
    echo "WIRT-GUEST: no power button found"
else
    # Open before announcing the boot: evdev queues events from open onwards,
    # so a power button press right after "booted" is not lost.
    exec 3<"$dev"
fi
echo "WIRT-GUEST: booted"
if [ -n "$dev" ]; then
    dd bs=24 count=1 <&3 >/dev/null 2>&1   # one struct input_event
    echo "WIRT-GUEST: power button"
    poweroff -f
fi
while :; do sleep 3600; done
EOF
chmod 755 "$root/init"

mkdir -p "$outdir"
cp "$(echo "$work"/kernel/boot/vmlinuz-*)" "$work/vmlinuz"
(cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -9 >"$work/initrd.gz"
chmod 644 "$work/vmlinuz" "$work/initrd.gz"
mv "$work/vmlinuz" "$work/initrd.gz" "$outdir/"
echo "$script_hash" >"$outdir/stamp"
echo "build.sh: built $outdir from $kpkg"
