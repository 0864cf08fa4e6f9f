"""Helpers for tests that boot the tiny real guest on qemu:///system.

The guest (built by build.sh) prints "WIRT-GUEST: booted" on its serial
console, and powers off when it gets the ACPI power button.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from xml.sax.saxutils import escape

REPO = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO / ".cache" / "guest"
BUILD_SH = Path(__file__).resolve().with_name("build.sh")
QEMU_USER = "libvirt-qemu"  # the user qemu:///system runs QEMU as on Debian
OWNER_NS = "http://wirt.weimarnetz.de/xmlns/owner/1"
BOOTED = "WIRT-GUEST: booted"
POWER_BUTTON = "WIRT-GUEST: power button"
# TCG, not KVM: on the project machines (nested under a Firecracker host) a
# type='kvm' guest starts but its kernel dies early with "KVM internal error.
# Suberror: 1" (emulation failure on lock cmpxchg16b); with host-passthrough or
# host-model QEMU aborts on MSR 0x10a. TCG boots this guest in about 3 s.
VIRT_TYPE = os.environ.get("WIRT_TEST_VIRT_TYPE", "qemu")


def _usable_by(path: Path, user: str, want: int) -> bool:
    """True if `user` has the permission bits `want` (e.g. 0o4 = read) on `path`."""
    pw = pwd.getpwnam(user)
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    st = path.stat()
    if st.st_uid == pw.pw_uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid in gids:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & want == want


def _check_readable_by_qemu(path: Path) -> None:
    for parent in reversed(path.parents):
        if not _usable_by(parent, QEMU_USER, 0o1):
            raise PermissionError(f"{QEMU_USER} cannot traverse {parent} (needed for {path})")
    if not _usable_by(path, QEMU_USER, 0o4):
        raise PermissionError(f"{QEMU_USER} cannot read {path}")


def build_guest(cache_dir: Path = CACHE_DIR) -> tuple[Path, Path]:
    """Build (or reuse) the guest in cache_dir; return (kernel, initrd)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(BUILD_SH), str(cache_dir)], check=True)
    kernel, initrd = cache_dir / "vmlinuz", cache_dir / "initrd.gz"
    # Under a restrictive umask the folders we created would be closed to QEMU.
    for d in (cache_dir, cache_dir.parent):
        if d.stat().st_uid == os.getuid():
            d.chmod(d.stat().st_mode | stat.S_IRWXU | 0o055)
    for f in (kernel, initrd):
        f.chmod(0o644)
        _check_readable_by_qemu(f)
    return kernel, initrd


def domain_xml(
    name: str,
    kernel: Path,
    initrd: Path,
    console_log: Path,
    owner: str | None = None,
    memory_mib: int = 96,
) -> str:
    """XML for a diskless, networkless guest with its serial console in console_log, a VNC
    console on 127.0.0.1 (no password: the console lock gives it one) and a VGA screen.

    libvirt (not QEMU) opens console_log, as root, and hands QEMU the file
    descriptor, so its folder need not be open to QEMU_USER; the file ends up
    owned by root, mode 0600. append='on' keeps the text across a destroy and
    start; a reboot (same QEMU process) always appends.
    """
    metadata = ""
    if owner is not None:
        metadata = (
            f"<metadata><wirt:owner xmlns:wirt=\"{OWNER_NS}\">{escape(owner)}"
            "</wirt:owner></metadata>"
        )
    return f"""<domain type='{VIRT_TYPE}'>
  <name>{escape(name)}</name>
  {metadata}
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(kernel))}</kernel>
    <initrd>{escape(str(initrd))}</initrd>
    <cmdline>console=ttyS0 quiet</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'>
      <source path='{escape(str(console_log))}' append='on'/>
      <target port='0'/>
    </serial>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <video><model type='vga'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    """Poll predicate until it is truthy (True) or timeout seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def console_text(path: Path) -> str:
    """What the guest has written to its serial console so far ('' if nothing yet)."""
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""


def with_qcow2_disk(xml: str, image: Path) -> str:
    """*xml* (from domain_xml) with one virtio disk, qcow2 at *image*, added to its devices.

    A separate step, not a domain_xml parameter, so that the guest's own
    devices can change without touching it.  Internal snapshots (SPEC 11) need
    every disk in qcow2; QEMU (as QEMU_USER) must be able to reach *image*.
    """
    disk = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{escape(str(image))}'/><target dev='vda' bus='virtio'/></disk>\n")
    head, sep, tail = xml.rpartition("</devices>")
    if not sep:
        raise ValueError("domain XML without </devices>")
    return f"{head}  {disk}  {sep}{tail}"


def make_qcow2(image: Path, size: str = "16M") -> Path:
    """A new, empty qcow2 image (qemu-img, from qemu-utils)."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), size], check=True)
    image.chmod(0o644)
    return image
