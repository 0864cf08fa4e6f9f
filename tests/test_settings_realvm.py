"""Hypervisor.configure and usage on real QEMU domains (qemu:///system), SPEC 9.

Domains with a CD-ROM drive (SATA, like an installer VM) built from the tiny
test guest (tests/guest), changed while shut off and while running, and read
back with libvirt's own XMLDesc: memory, vCPUs, boot order, CD and eject; the
live CD change; restart_needed; the refusals that leave the domain as it was.
The ISOs are small files in a root-owned folder that QEMU can traverse.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
import pytest
from guest import realvm
from lxml import etree

from wirt_wrapper.root.definition import read_settings
from wirt_wrapper.root.hypervisor import Hypervisor
from wirt_wrapper.rules.actions import Rejection, lookup_action

pytestmark = pytest.mark.realvm

URI = "qemu:///system"
CDROM = ("<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
         "<target dev='sdc' bus='sata'/><readonly/></disk>")
INACTIVE = libvirt.VIR_DOMAIN_XML_INACTIVE


@dataclass
class Lab:
    """Domains and ISOs made for one test; all removed at teardown."""

    conn: Any
    kernel: Path
    initrd: Path
    folder: Path
    isos: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    made: list[str] = field(default_factory=list)

    def define(self, vm: str, owner: str = "alice", cdrom: bool = True) -> Any:
        name = f"wirtdef-{self.tag}-{vm}"
        xml = realvm.domain_xml(name, self.kernel, self.initrd, self.folder / f"{name}.log",
                                owner=owner)
        if cdrom:  # a copy of the shared guest's XML, with a CD-ROM drive
            xml = xml.replace("<devices>", f"<devices>\n    {CDROM}", 1)
        self.made.append(name)
        return self.conn.defineXML(xml)

    def iso(self, name: str) -> str:
        path = self.isos / name
        subprocess.run(["truncate", "-s", "1M", str(path)], check=True)
        return str(path)

    def hypervisor(self) -> Hypervisor:
        hv = Hypervisor(URI, 30.0, iso_dir=str(self.isos))
        hv.connect()
        return hv


@pytest.fixture
def lab(guest_image: tuple[Path, Path], tmp_path: Path) -> Iterator[Lab]:
    conn = libvirt.open(URI)
    # Root-owned, not group/other-writable, and traversable by libvirt-qemu (tmp_path is not).
    isos = Path(tempfile.mkdtemp(prefix="wirt-isos-", dir="/var/tmp"))
    isos.chmod(0o755)
    made = Lab(conn, *guest_image, tmp_path, isos)
    try:
        yield made
    finally:
        for name in made.made:
            try:
                dom = conn.lookupByName(name)
            except libvirt.libvirtError:
                continue
            try:
                if dom.isActive():
                    dom.destroy()
            finally:
                dom.undefine()
        conn.close()
        shutil.rmtree(isos)


def alice(owner: str | None, _vm: str | None) -> str | None:
    return None if owner == "alice" else f"owner is {owner!r}, not alice"


def allow(_held: dict[str, Any]) -> None:
    return None


def held(dom: Any, iso_dir: Path, flags: int = INACTIVE) -> dict[str, Any]:
    return read_settings(dom.XMLDesc(flags), str(iso_dir))


def cd_source(dom: Any, flags: int) -> str | None:
    disk = etree.fromstring(dom.XMLDesc(flags).encode()).find("devices/disk[@device='cdrom']")
    source = disk.find("source")
    return None if source is None else source.get("file")


def timed(fn: Callable[[], Any], seconds: list[float]) -> Any:
    started = time.perf_counter()
    result = fn()
    seconds.append(time.perf_counter() - started)
    return result


def test_configure_shut_off(lab: Lab) -> None:
    dom = lab.define("off")
    a_iso, b_iso = lab.iso("a.iso"), lab.iso("b.iso")
    hv = lab.hypervisor()
    seen: list[dict[str, Any]] = []
    times: list[float] = []
    try:
        wanted = {"memory_mib": 128, "vcpus": 2, "boot": ("cdrom", "hd"), "cdrom": "a.iso"}
        outcome, message, info = timed(lambda: hv.configure(
            dom.name(), wanted, a_iso, alice, seen.append), times)
        assert outcome == "done", message
        assert message == ("set memory 128 MiB (was 96), vCPUs 2 (was 1), boot order cdrom,hd "
                           "(was hd), CD a.iso (was empty); in effect at the next start")
        assert seen[0]["memory_mib"] == 96 and seen[0]["has_cdrom"] is True  # before
        now = held(dom, lab.isos)
        assert (now["memory_mib"], now["vcpus"], now["boot"], now["cdrom"]) == \
            (128, 2, ["cdrom", "hd"], "a.iso")
        assert cd_source(dom, INACTIVE) == a_iso
        assert info is not None and info.state == "shut off"
        assert info.settings == {"memory_mib": 128, "vcpus": 2, "boot": ["cdrom", "hd"],
                                 "cdrom": "a.iso", "has_cdrom": True, "restart_needed": False}
        assert info.as_status()["settings"] == info.settings
        assert info.memory_kib == 128 * 1024 and info.vcpus == 2

        outcome, message, info = timed(lambda: hv.configure(
            dom.name(), {"cdrom": "b.iso", "boot": ("hd",)}, b_iso, alice, allow), times)
        assert (outcome, message) == ("done", "set boot order hd (was cdrom,hd), CD b.iso "
                                      "(was a.iso); in effect at the next start")
        assert cd_source(dom, INACTIVE) == b_iso and held(dom, lab.isos)["memory_mib"] == 128

        outcome, message, info = timed(lambda: hv.configure(
            dom.name(), {"cdrom": None}, None, alice, allow), times)
        assert (outcome, message) == ("done", "set CD ejected (was b.iso); in effect at the "
                                      "next start")
        assert cd_source(dom, INACTIVE) is None
        assert info is not None and info.settings is not None and info.settings["cdrom"] == ""

        outcome, message, _ = timed(lambda: hv.configure(
            dom.name(), {"memory_mib": 128, "cdrom": None}, None, alice, allow), times)
        assert (outcome, message) == ("done", "no change: libvirt already holds these settings")
    finally:
        hv.close()
    print(f"configure on a shut-off qemu:///system domain: "
          f"{', '.join(f'{s * 1000:.0f} ms' for s in times)}")


def test_refusals_leave_the_domain_unchanged(lab: Lab) -> None:
    dom = lab.define("refused")
    plain = lab.define("nocd", cdrom=False)
    before = dom.XMLDesc(INACTIVE)
    hv = lab.hypervisor()
    try:
        def over_quota(held: dict[str, Any]) -> None:
            raise Rejection(f"config: memory_mib: over quota (now {held['memory_mib']})")

        outcome, message, info = hv.configure(dom.name(), {"memory_mib": 4096}, None, alice,
                                              over_quota)
        assert (outcome, message) == ("rejected", "config: memory_mib: over quota (now 96)")
        assert info is not None and info.settings is not None
        assert info.settings["memory_mib"] == 96

        outcome, message, info = hv.configure(dom.name(), {"vcpus": 2}, None,
                                              lambda _owner, _vm: "not yours", allow)
        assert (outcome, message, info) == ("rejected", "not yours", None)

        outcome, message, _ = hv.configure(plain.name(), {"cdrom": None}, None, alice, allow)
        assert outcome == "rejected" and "no CD-ROM drive" in message

        per_device = before.replace("<boot dev='hd'/>", "").replace(
            "<target dev='sdc' bus='sata'/>", "<target dev='sdc' bus='sata'/><boot order='1'/>")
        lab.conn.defineXML(per_device)
        before = dom.XMLDesc(INACTIVE)
        outcome, message, _ = hv.configure(dom.name(), {"boot": ("hd",), "vcpus": 2}, None,
                                           alice, allow)
        assert outcome == "rejected" and "admin set a per-device boot order" in message

        outcome, message, _ = hv.configure(f"wirtdef-{lab.tag}-none", {"vcpus": 2}, None,
                                           alice, allow)
        assert outcome == "failed" and "no domain" in message.lower()
    finally:
        hv.close()
    assert dom.XMLDesc(INACTIVE) == before


def test_configure_running(lab: Lab) -> None:
    dom = lab.define("run")
    a_iso, b_iso = lab.iso("a.iso"), lab.iso("b.iso")
    dom.create()
    hv = lab.hypervisor()
    times: list[float] = []
    try:
        outcome, message, info = timed(lambda: hv.configure(
            dom.name(), {"cdrom": "a.iso"}, a_iso, alice, allow), times)
        assert (outcome, message) == ("done", "set CD a.iso (was empty); the CD changed in "
                                      "the running VM too")
        assert cd_source(dom, 0) == a_iso and cd_source(dom, INACTIVE) == a_iso
        assert info is not None and info.state == "running"
        assert info.settings is not None and info.settings["restart_needed"] is False
        assert info.settings["cdrom"] == "a.iso"

        outcome, message, info = timed(lambda: hv.configure(
            dom.name(), {"memory_mib": 128, "vcpus": 2, "boot": ("cdrom", "hd"),
                         "cdrom": "b.iso"}, b_iso, alice, allow), times)
        assert outcome == "done", message
        assert message == (
            "set memory 128 MiB (was 96), vCPUs 2 (was 1), boot order cdrom,hd (was hd), "
            "CD b.iso (was a.iso); the CD changed in the running VM too; memory, vCPUs and "
            "boot order take effect when the VM is shut down and started again (a reboot "
            "inside it is not enough)")
        assert cd_source(dom, 0) == b_iso
        running, saved = held(dom, lab.isos, 0), held(dom, lab.isos)
        assert (running["memory_mib"], running["vcpus"]) == (96, 1)
        assert (saved["memory_mib"], saved["vcpus"], saved["boot"]) == (128, 2, ["cdrom", "hd"])
        assert info is not None and info.settings is not None
        assert info.settings["restart_needed"] is True
        assert (info.settings["memory_mib"], info.settings["cdrom"]) == (128, "b.iso")
        assert info.memory_kib == 96 * 1024  # status' memory stays what runs

        # an explicit `status` reads the persistent definition too: restart still needed
        _, _, info = hv.act_start(dom.name(), lookup_action("status"), {}, alice).wait()
        assert info is not None and info.settings is not None
        assert info.settings["restart_needed"] is True

        outcome, message, info = timed(lambda: hv.configure(
            dom.name(), {"cdrom": None}, None, alice, allow), times)
        assert outcome == "done" and message.startswith(
            "set CD ejected (was b.iso); the CD changed in the running VM too; memory")
        assert cd_source(dom, 0) is None and cd_source(dom, INACTIVE) is None

        # the live change fails (no such file): the saved definition keeps the new CD
        missing = str(lab.isos / "gone.iso")
        outcome, message, info = hv.configure(dom.name(), {"cdrom": "gone.iso"}, missing,
                                              alice, allow)
        assert outcome == "failed"
        assert message.startswith("set CD gone.iso (was empty); libvirt: ")
        assert "the CD in the running VM was not changed (the saved settings were, for its " \
            "next start)" in message
        assert cd_source(dom, INACTIVE) == missing and cd_source(dom, 0) is None
    finally:
        hv.close()
    print(f"configure on a running qemu:///system domain: "
          f"{', '.join(f'{s * 1000:.0f} ms' for s in times)}")

    # after a real restart the new settings run, and the idle snapshot says no restart needed
    dom.destroy()
    lab.conn.defineXML(dom.XMLDesc(INACTIVE).replace(f"<source file='{missing}'/>", ""))
    dom.create()
    assert (held(dom, lab.isos, 0)["memory_mib"], held(dom, lab.isos, 0)["vcpus"]) == (128, 2)
    hv = lab.hypervisor()
    try:
        info = hv.info(dom.name())
        assert info is not None and info.settings is not None
        # the pass's bulk read takes a running domain's definition too: known, and equal here
        assert info.settings["restart_needed"] is False
        assert info.settings["memory_mib"] == 128
    finally:
        hv.close()


def test_usage_sums_what_the_user_owns(lab: Lab) -> None:
    one, two = lab.define("one"), lab.define("two")
    lab.define("bobs", owner="bob")
    hv = lab.hypervisor()
    try:
        hv.configure(two.name(), {"memory_mib": 256, "vcpus": 3}, None, alice, allow)
        asked: list[tuple[str, str | None]] = []

        def owns(name: str, meta: str | None) -> bool:
            asked.append((name, meta))
            return name.startswith(f"wirtdef-{lab.tag}-") and meta == "alice"

        started = time.perf_counter()
        found = hv.usage("alice", owns)
        seconds = time.perf_counter() - started
    finally:
        hv.close()
    assert found == {one.name(): (96, 1), two.name(): (256, 3)}
    assert (f"wirtdef-{lab.tag}-bobs", "bob") in asked
    print(f"usage over {len(asked)} domains: {seconds * 1000:.0f} ms")


def test_iso_folder_is_root_owned(lab: Lab) -> None:
    st = os.stat(lab.isos)
    assert st.st_uid == 0 and st.st_mode & 0o022 == 0
