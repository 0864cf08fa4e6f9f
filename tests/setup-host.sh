#!/usr/bin/env bash
# Prepare a Debian 12 host (as root) to run wirt's demo and tests:
# Debian packages, /dev/kvm permissions, virtlogd + libvirtd (no systemd
# needed), and a root-owned virtualenv with wirt and its test tools.
# Safe to run again: every step checks before it acts.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${WIRT_VENV:-/opt/wirt-test}

[ "$(id -u)" = 0 ] || { echo "setup-host.sh: run me as root" >&2; exit 1; }

PACKAGES=(
  libvirt-daemon-system libvirt-clients qemu-system-x86 libvirt-dev pkg-config gcc
  python3-venv python3-dev sudo cron passwd util-linux procps
  busybox-static cpio gzip xz-utils kmod
  msmtp logrotate  # mail tests relay through msmtp (no daemon); audit tests run logrotate
  libfaketime  # the history-name spoofing attack freezes the pass's clock
  strace  # the CLI tests slow or hold a process at one system call
  zstd  # tests/guest/build.sh, should the kernel ship .ko.zst modules
  man-db groff-base  # the manual pages are checked with groff and found with man -w
  qemu-utils  # qemu-img: the test guest's qcow2 disk (snapshots, SPEC 11)
  openssh-server openssh-client  # wirt --host: a real sshd on loopback, started by the test
  systemd  # systemd-analyze verify on deploy/wirt-watch.service (no PID 1 needed); the test
           # would skip without it, so a fresh machine must have it
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-host: installing ${missing[*]}"
  apt-get update -qq
  # with Recommends: the set HOST-NOTES.md describes and these tests were run on
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# tests/guest/build.sh fetches the test guest's kernel and busybox with
# `apt-get download`, which needs package lists; a fresh image may have none.
if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
  echo "setup-host: no package lists yet, running apt-get update"
  apt-get update -qq
fi

# /dev/kvm as udev would set it; without this libvirt re-probes QEMU on every
# define (HOST-NOTES.md: 40-80 s each).
if [ -e /dev/kvm ]; then
  chgrp kvm /dev/kvm && chmod 660 /dev/kvm
fi

# libvirt without systemd: start the daemons ourselves and wait for the socket.
if ! pgrep -x virtlogd >/dev/null; then virtlogd -d; fi
if ! pgrep -x libvirtd >/dev/null; then libvirtd -d; fi
for _ in $(seq 100); do
  [ -S /var/run/libvirt/libvirt-sock ] && break
  sleep 0.1
done
[ -S /var/run/libvirt/libvirt-sock ] || { echo "setup-host: libvirtd did not come up" >&2; exit 1; }

# The PAM service the tool ships (account checks only).
install -m 0644 -o root -g root "$REPO/pam.d/wirt" /etc/pam.d/wirt

# A root-owned virtualenv on Debian's Python; wirt installed from this checkout.
if [ ! -x "$VENV/bin/python" ]; then
  /usr/bin/python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO[test]" 2>&1 \
  | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -c 'import libvirt, pam, lxml, psutil, PIL, aiosmtpd, Crypto' \
  || { echo "setup-host: the virtualenv is incomplete" >&2; exit 1; }
echo "setup-host: ready ($VENV, libvirt $(virsh --version))"
