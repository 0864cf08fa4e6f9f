"""Issue 15.5 on the real guest (qemu:///system): a state changed outside wirt shows its
age until a pass reads it again.

Everything runs through the real executables: passes of ``virsh_wrapper`` (the
``wirt_pass`` fixture) and ``wirt`` as the real user.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import libvirt
import pytest
from conftest import BIN, Host, User, readable_config
from guest.fixtures import Guests, WirtPass

from wirt_wrapper.rules import status as status_xml

pytestmark = pytest.mark.realvm

WIRT = str(BIN / "wirt")


def wirt(user: User, config: str, *args: str) -> subprocess.CompletedProcess[str]:
    return user.run('exec "$@"', WIRT, "--config", config, *args, check=False)


def state_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("state:"))


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
