"""Issue 15.4 and 15.5 on the real guest (qemu:///system): `wirt shutdown --wait` waits for
the state, a guest that ignores the request gets exit 4, and a state changed outside wirt
shows its age until a pass reads it again.

Everything runs through the real executables: passes of ``virsh_wrapper`` (conftest's
``passes`` loop or the ``wirt_pass`` fixture) and ``wirt`` as the real user.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import libvirt
import pytest
from conftest import BIN, Host, User, passes, readable_config
from guest import realvm
from guest.fixtures import Guest, Guests, WirtPass

from wirt_wrapper.rules import status as status_xml

pytestmark = pytest.mark.realvm

WIRT = str(BIN / "wirt")


def wirt(user: User, config: str, *args: str) -> subprocess.CompletedProcess[str]:
    return user.run('exec "$@"', WIRT, "--config", config, *args, check=False)


def state_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("state:"))


def deaf_guest(guests: Guests, user: User, vm: str) -> Guest:
    """A real domain with no OS (SeaBIOS finds nothing to boot): it ignores ACPI."""
    guest = Guest(guests.lv, user, vm, guests.folder / f"{user.name}-{vm}.console")
    xml = realvm.domain_xml(guest.name, guests.kernel, guests.initrd, guest.console)
    xml = re.sub(r"\s*<(kernel|initrd|cmdline)>[^<]*</\1>", "", xml)
    guests.made.append(guest)
    guests.lv.conn.defineXML(xml)
    return guest


def test_shutdown_wait_ends_with_the_guest_shut_off(realhost: Host, guests: Guests,
                                                     wirt_pass: WirtPass) -> None:
    alice = realhost.add_user("alice")
    guest = guests.define(alice, "web")
    guest.command("start")
    wirt_pass()
    guest.wait_boots(1)  # its init listens for the power button from here on
    with readable_config(realhost) as config, passes(realhost, interval=0.5):
        proc = wirt(alice, config, "shutdown", "web", "--wait", "--timeout", "120")
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    # the pass reads the state right after asking: the guest takes a second or two
    assert first in ("web: shutdown: done: asked the guest to power off; it is still running",
                     "web: shutdown: done: asked the guest to power off; it is shut off")
    assert second.startswith("web: the guest powered off: it is shut off (as of "), second
    assert guest.state() == libvirt.VIR_DOMAIN_SHUTOFF and guest.presses() == 1


def test_a_guest_that_ignores_shutdown_gets_exit_4(realhost: Host, guests: Guests,
                                                   wirt_pass: WirtPass) -> None:
    alice = realhost.add_user("alice")
    guest = deaf_guest(guests, alice, "deaf")
    guest.command("start")
    wirt_pass()
    assert guest.state() == libvirt.VIR_DOMAIN_RUNNING
    with readable_config(realhost) as config, passes(realhost, interval=0.5):
        started = time.monotonic()
        proc = wirt(alice, config, "shutdown", "deaf", "--wait", "--timeout", "10")
        took = time.monotonic() - started
    assert proc.returncode == 4, (proc.stdout, proc.stderr)
    assert proc.stdout == ("deaf: shutdown: done: asked the guest to power off; it is still "
                           "running\n")
    assert re.fullmatch(
        r"wirt: deaf: the guest did not power off within 10 s; it is still running "
        r"\(booted\), as of \d\d:\d\d:\d\d, \d+ s ago; `wirt destroy deaf` forces it off\n",
        proc.stderr), proc.stderr
    assert 10 <= took < 30  # it honoured --timeout
    assert guest.state() == libvirt.VIR_DOMAIN_RUNNING  # nothing forced it


def test_reboot_wait_ends_when_a_later_pass_reads_it_running(realhost: Host, guests: Guests,
                                                             wirt_pass: WirtPass) -> None:
    """The guest reboots inside the same QEMU (libvirt shows no other state): --wait ends
    once a pass after the request read it running; the console shows the second boot."""
    alice = realhost.add_user("alice")
    guest = guests.define(alice, "rb")
    guest.command("start")
    wirt_pass()
    guest.wait_boots(1)
    with readable_config(realhost) as config, passes(realhost, interval=0.5):
        proc = wirt(alice, config, "reboot", "rb", "--wait", "--timeout", "120")
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first == "rb: reboot: done: asked the guest to reboot; it is running"
    assert second.startswith("rb: the guest is running again (a pass read it after the "
                             "reboot request"), second
    guest.wait_boots(2)
    assert guest.state() == libvirt.VIR_DOMAIN_RUNNING and guest.presses() == 1


def test_a_state_changed_outside_wirt_shows_its_age(realhost: Host, guests: Guests,
                                                    wirt_pass: WirtPass) -> None:
    """After `virsh destroy` (not through wirt) status.xml still says running, with its age;
    old enough, it is stale; the next pass reads "shut off", fresh."""
    alice = realhost.add_user("alice")
    guest = guests.define(alice, "box")
    guest.command("start")
    wirt_pass()
    wirt_pass()  # idle: the look confirms the state (status-checked), nothing rewritten
    subprocess.run(["virsh", "-q", "-c", "qemu:///system", "destroy", guest.name], check=True,
                   capture_output=True)
    assert guest.state() == libvirt.VIR_DOMAIN_SHUTOFF
    with readable_config(realhost) as config:
        line = state_line(wirt(alice, config, "status", "box").stdout)
        assert re.fullmatch(r"state: +running \(booted\) \(as of \d\d:\d\d:\d\d, \d+ s ago\)",
                            line), line
        # no pass for 5 minutes (faked): the read time and the marker set back
        status = alice.home / "wirt/info/vm/box/status.xml"
        checked = alice.home / "wirt/info/status-checked"
        old = time.time() - 300
        data = status.read_text()
        assert "<read-at>" in data
        status.write_text(re.sub(r"<read-at>[^<]*</read-at>",
                                 f"<read-at>{status_xml.stamp(old)}</read-at>", data))
        os.utime(status, (old, old))
        os.utime(checked, (old, old))
        line = state_line(wirt(alice, config, "status", "box").stdout)
        assert "running (booted) (as of " in line and "5 min ago, stale: no pass has " \
            "confirmed it for more than two pass intervals (240 s)" in line, line
        listed = wirt(alice, config, "list").stdout.splitlines()[1]
        assert listed.split()[:2] == ["box", "running"] and listed.endswith("stale"), listed

        wirt_pass()
        line = state_line(wirt(alice, config, "status", "box").stdout)
        assert re.fullmatch(r"state: +shut off \(destroyed\) \(as of \d\d:\d\d:\d\d, "
                            r"\d+ s ago\)", line), line
