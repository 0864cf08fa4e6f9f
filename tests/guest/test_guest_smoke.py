"""Boot the tiny real guest on qemu:///system: ACPI shutdown and ACPI reboot."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from . import realvm

pytestmark = pytest.mark.realvm


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[tuple[libvirt.virDomain, Path]]:
    kernel, initrd = realvm.build_guest()
    console_log = tmp_path / "console.log"
    name = f"wirt-smoke-{uuid.uuid4().hex[:8]}"
    conn = libvirt.open("qemu:///system")
    dom = conn.defineXML(realvm.domain_xml(name, kernel, initrd, console_log, owner="root"))
    try:
        yield dom, console_log
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        conn.close()


def test_boot_reboot_and_acpi_shutdown(guest: tuple[libvirt.virDomain, Path]) -> None:
    dom, console_log = guest

    def boots() -> int:
        return realvm.console_text(console_log).count(realvm.BOOTED)

    dom.create()
    assert realvm.wait_for(lambda: boots() == 1, 60), realvm.console_text(console_log)

    # libvirt's ACPI reboot: power button, guest powers off, libvirt resets the
    # still-running QEMU process (-no-shutdown), the guest boots a second time.
    dom.reboot(libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)
    assert realvm.wait_for(lambda: boots() == 2, 60), realvm.console_text(console_log)
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING

    dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
    shut_off = realvm.wait_for(lambda: dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF, 30)
    assert shut_off, realvm.console_text(console_log)
    text = realvm.console_text(console_log)
    assert text.count(realvm.POWER_BUTTON) == 2
    assert boots() == 2
