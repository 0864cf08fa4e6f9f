"""Every action on real QEMU domains (qemu:///system), end to end through the executable.

Each test defines ``<user>-<vm>`` domains from the tiny real guest (TCG, boots
in ~3 s, prints "WIRT-GUEST: booted" on its serial console, powers off on the
ACPI power button), drops command files as the real user, runs passes through
the ``wirt_pass`` fixture, and checks both sides: the VM's real state in
libvirt (and its console), and what the user reads back (status.xml, the
per-VM log, history).  Guests of one test run in parallel to save time.
"""

from __future__ import annotations

from typing import Any

import libvirt
import pytest
from conftest import Host, User
from guest.fixtures import Guest, Guests, WirtPass
from lxml import etree

from wirt_wrapper.rules.actions import no_domain

pytestmark = pytest.mark.realvm

RUNNING = libvirt.VIR_DOMAIN_RUNNING
PAUSED = libvirt.VIR_DOMAIN_PAUSED
SHUTOFF = libvirt.VIR_DOMAIN_SHUTOFF
STILL_RUNNING = "asked the guest to power off; it is still running"


def status(guest: Guest | tuple[User, str]) -> dict[str, Any]:
    """What the user reads in status.xml (of a Guest, or of (user, vm)), as a flat dict."""
    user, vm = (guest.user, guest.vm) if isinstance(guest, Guest) else guest
    root = etree.fromstring(user.status(vm).encode())
    found: dict[str, Any] = {"domain": root.findtext("domain")}
    state = root.find("state")
    if state is not None:
        found.update(state=state.text, reason=state.get("reason"),
                     autostart=root.findtext("autostart"))
    problem = root.find("problem")
    if problem is not None:
        found.update(problem=problem.text, problem_kind=problem.get("kind"))
    graphics = root.find("graphics")
    found["graphics"] = dict(graphics.attrib) if graphics is not None else {}
    last = root.find("last-command")
    if last is not None:
        found["last"] = (last.get("action"), last.get("params", ""), last.get("outcome"),
                         last.text or "")
    return found


def outcomes(host: Host, guest: Guest) -> list[tuple[str, str]]:
    """(action, outcome) of every audited command of *guest*, in audit order."""
    return [(str(r["action"]), str(r["outcome"])) for r in host.commands()
            if r["user"] == guest.user.name and r["vm"] == guest.vm]


def logged(guest: Guest) -> list[str]:
    """'action params: outcome...' of each line of the user's per-VM log."""
    return [line.split(" ", 2)[2].split(" (file ")[0] for line in guest.log_lines()]


def history_of(guest: Guest) -> list[str]:
    """The VM's processed command files in history, oldest first (action part only)."""
    prefix = f"-{guest.vm}-"
    return [name.rsplit(prefix, 1)[1] for name in guest.user.history() if prefix in name]


def test_start_boots_and_shutdown_powers_off(realhost: Host, guests: Guests,
                                             wirt_pass: WirtPass) -> None:
    """`start` boots the guest; `shutdown` (default and --mode acpi) powers it off."""
    alice = realhost.add_user("alice")
    plain, acpi = guests.define(alice, "plain"), guests.define(alice, "acpi")
    for guest in (plain, acpi):
        guest.command("start")
    wirt_pass()
    for guest in (plain, acpi):
        assert guest.state() == RUNNING
        seen = status(guest)
        assert (seen["state"], seen["reason"]) == ("running", "booted")
        assert seen["last"] == ("start", "", "done", "")
        # a running domain's VNC console: the port libvirt picked (autoport)
        assert seen["graphics"]["type"] == "vnc"
        assert seen["graphics"]["listen"] == "127.0.0.1"
        assert int(seen["graphics"]["port"]) >= 5900
        assert guest.spool() == [] and history_of(guest) == ["start"]
    for guest in (plain, acpi):
        guest.wait_boots(1)  # the console shows the guest came up

    plain.command("shutdown")
    acpi.command("shutdown", "--mode acpi\n")
    wirt_pass()
    # The pass only asks the guest to power off; it does not wait.
    for guest in (plain, acpi):
        guest.wait_state(SHUTOFF)
        assert guest.reason() == libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN
        assert guest.presses() == 1, guest.console_text()  # the guest saw the button
    # done: libvirt delivered the request; the state read back at once says the rest
    assert logged(plain) == ["start: done", f"shutdown: done: {STILL_RUNNING}"]
    assert logged(acpi) == ["start: done", f"shutdown --mode acpi: done: {STILL_RUNNING}"]
    assert history_of(acpi) == ["start", "shutdown"]

    wirt_pass()  # a later pass shows the user what happened meanwhile
    for guest in (plain, acpi):
        seen = status(guest)
        assert (seen["state"], seen["reason"]) == ("shut off", "shutdown")
        assert "port" not in seen["graphics"]  # no console port while shut off
    assert status(acpi)["last"] == ("shutdown", "--mode acpi", "done", STILL_RUNNING)


def test_reboot_and_reset_boot_the_guest_again(realhost: Host, guests: Guests,
                                              wirt_pass: WirtPass) -> None:
    """`reboot` powers off through ACPI and boots again; `reset` reboots hard, no ACPI."""
    alice = realhost.add_user("alice")
    rebooted, reset = guests.define(alice, "rb"), guests.define(alice, "rs")
    for guest in (rebooted, reset):
        guest.command("start")
    wirt_pass()
    for guest in (rebooted, reset):
        guest.wait_boots(1)
    ids = {guest.vm: guest.dom.ID() for guest in (rebooted, reset)}

    rebooted.command("reboot")
    reset.command("reset")
    wirt_pass()
    for guest in (rebooted, reset):
        guest.wait_boots(2)  # the console shows a second boot ...
        assert guest.state() == RUNNING
        assert guest.dom.ID() == ids[guest.vm]  # ... in the same QEMU process
        assert status(guest)["state"] == "running"
    assert rebooted.presses() == 1  # a reboot asks the guest (ACPI power button) ...
    assert reset.presses() == 0  # ... a reset does not
    assert logged(rebooted) == ["start: done", "reboot: done: asked the guest to reboot; "
                                "it is running"]
    assert logged(reset) == ["start: done", "reset: done"]
    assert status(rebooted)["last"] == ("reboot", "", "done",
                                        "asked the guest to reboot; it is running")
    assert status(reset)["last"] == ("reset", "", "done", "")


def test_destroy_and_graceful_destroy(realhost: Host, guests: Guests,
                                      wirt_pass: WirtPass) -> None:
    """`destroy` and `kill --graceful` power the guest off at once, without asking it."""
    alice = realhost.add_user("alice")
    hard, graceful = guests.define(alice, "hard"), guests.define(alice, "soft")
    for guest in (hard, graceful):
        guest.command("start")
    wirt_pass()
    for guest in (hard, graceful):
        guest.wait_boots(1)

    hard.command("destroy")
    graceful.command("kill", "--graceful")  # the alias and the flag legacy users write
    wirt_pass()
    for guest in (hard, graceful):
        # destroy is synchronous: the pass's own status.xml already shows it
        assert guest.state() == SHUTOFF
        assert guest.reason() == libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED
        assert (status(guest)["state"], status(guest)["reason"]) == ("shut off", "destroyed")
        assert guest.presses() == 0
    assert logged(hard) == ["start: done", "destroy: done"]
    assert logged(graceful) == ["start: done", "destroy --graceful: done"]
    assert status(graceful)["last"] == ("destroy", "--graceful", "done", "")
    assert history_of(graceful) == ["start", "kill"]


def test_suspend_then_resume(realhost: Host, guests: Guests, wirt_pass: WirtPass) -> None:
    alice = realhost.add_user("alice")
    guest = guests.define(alice, "web")
    guest.command("start")
    wirt_pass()
    guest.wait_boots(1)
    first_id = guest.dom.ID()

    guest.command("suspend")
    wirt_pass()
    assert guest.state() == PAUSED
    assert guest.reason() == libvirt.VIR_DOMAIN_PAUSED_USER
    assert (status(guest)["state"], status(guest)["reason"]) == ("paused", "user")

    guest.command("resume")
    wirt_pass()
    assert guest.state() == RUNNING
    assert (status(guest)["state"], status(guest)["reason"]) == ("running", "unpaused")
    assert logged(guest) == ["start: done", "suspend: done", "resume: done"]
    assert guest.dom.ID() == first_id and guest.boots() == 1  # the same boot went on


def test_autostart_sets_and_clears_the_flag(realhost: Host, guests: Guests,
                                            wirt_pass: WirtPass) -> None:
    alice = realhost.add_user("alice")
    guest = guests.define(alice, "web")
    assert guest.dom.autostart() == 0

    guest.command("autostart")
    wirt_pass()
    assert guest.dom.autostart() == 1
    assert status(guest)["autostart"] == "yes"
    assert guest.state() == SHUTOFF  # the flag only; nothing started

    guest.command("autostart", "--disable\n")
    wirt_pass()
    assert guest.dom.autostart() == 0
    assert status(guest)["autostart"] == "no"
    assert logged(guest) == ["autostart: done", "autostart --disable: done"]
    assert history_of(guest) == ["autostart", "autostart"]


def test_status_refreshes_what_the_user_sees(realhost: Host, guests: Guests,
                                             wirt_pass: WirtPass) -> None:
    """`status` reports changes made behind wirt's back (here: by the admin)."""
    alice = realhost.add_user("alice")
    guest = guests.define(alice, "web")
    guest.command("status")
    wirt_pass()
    assert (status(guest)["state"], status(guest)["last"]) == (
        "shut off", ("status", "", "done", ""))

    guest.dom.create()  # the admin starts it with virsh
    guest.command("status")
    wirt_pass()
    seen = status(guest)
    assert (seen["state"], seen["reason"]) == ("running", "booted")
    assert int(seen["graphics"]["port"]) >= 5900
    assert logged(guest) == ["status: done", "status: done"]
    assert guest.spool() == [] and history_of(guest) == ["status", "status"]


def test_queued_commands_run_oldest_first_in_one_pass(realhost: Host, guests: Guests,
                                                      wirt_pass: WirtPass) -> None:
    """Several files for one VM run in modification-time order, not name order.

    Run the other way round (or by name: "destroy" < "start"), `destroy` and
    `shutdown` would fail on a shut-off domain and `start` would leave it running.
    """
    alice = realhost.add_user("alice")
    killed, asked = guests.define(alice, "q1"), guests.define(alice, "q2")
    killed.command("start", mtime=1_000_000)
    killed.command("destroy", mtime=1_000_010)
    asked.command("start", mtime=1_000_000)
    asked.command("shutdown", mtime=1_000_010)
    wirt_pass()

    assert outcomes(realhost, killed) == [("start", "done"), ("destroy", "done")]
    assert killed.state() == SHUTOFF
    assert killed.reason() == libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED
    assert status(killed)["state"] == "shut off"
    assert logged(killed) == ["start: done", "destroy: done"]

    assert outcomes(realhost, asked) == [("start", "done"), ("shutdown", "done")]
    assert logged(asked) == ["start: done", f"shutdown: done: {STILL_RUNNING}"]
    # What really happens to a shutdown a few milliseconds after start: libvirt
    # accepts it (done), QEMU drops the ACPI button press because the guest has
    # not enabled the power-button event yet, and the guest boots and runs on.
    # A real OS does the same; users must wait for the boot before `shutdown`.
    asked.wait_boots(1)
    assert asked.state() == RUNNING and asked.presses() == 0, asked.console_text()
    asked.command("shutdown")
    wirt_pass()
    asked.wait_state(SHUTOFF)
    assert asked.presses() == 1


def test_missing_foreign_and_already_running(realhost: Host, guests: Guests,
                                             wirt_pass: WirtPass) -> None:
    """Wrong domains end failed or rejected with a clear message; the VMs are untouched."""
    alice = realhost.add_user("al")
    alice_x = realhost.add_user("al-x")  # alice's VM "x-web" and al-x's VM "web" collide
    bob = realhost.add_user("bob")
    pinned = guests.define(alice, "pinned", owner=bob.name)  # alice's name, bob's by metadata
    clash = guests.define(alice_x, "web")  # <prefix>al-x-web: whose?
    running = guests.define(alice, "up")
    running.dom.create()
    running.wait_boots(1)
    running_id = running.dom.ID()  # a new QEMU process would get a new id

    alice.write("wirt/service/vm/gone/start")
    alice.write("wirt/service/vm/pinned/start")
    alice.write("wirt/service/vm/x-web/start")
    alice_x.write("wirt/service/vm/web/start")
    alice.write("wirt/service/vm/up/start")
    wirt_pass()

    got = {(str(r["user"]), str(r["vm"])): (r["outcome"], str(r["reason"]))
           for r in realhost.commands()}
    assert got[(alice.name, "gone")] == (
        "failed", no_domain(f"{alice.name}-gone"))
    assert got[(alice.name, "pinned")][0] == "rejected"
    assert "assigned to another user" in got[(alice.name, "pinned")][1]
    for key in ((alice.name, "x-web"), (alice_x.name, "web")):
        assert got[key][0] == "rejected" and "ambiguous" in got[key][1], got[key]
    assert got[(alice.name, "up")] == (
        "failed", "libvirt: Requested operation is not valid: domain is already running")

    # libvirt: nothing happened to any of them
    assert pinned.state() == SHUTOFF and clash.state() == SHUTOFF
    assert running.state() == RUNNING and running.dom.ID() == running_id
    # the user reads the same in the log and in status.xml
    log = alice.vm_log("gone")
    assert f"start: failed: {no_domain(f'{alice.name}-gone')}" in log
    assert status((alice, "gone"))["problem_kind"] == "missing"
    assert "start: rejected: domain" in alice.vm_log("pinned")
    assert status(pinned)["problem_kind"] == "not-yours" and "state" not in status(pinned)
    assert "ambiguous" in alice_x.vm_log("web") and "ambiguous" in alice.vm_log("x-web")
    assert "domain is already running" in alice.vm_log("up")
    assert status(running)["state"] == "running"
    assert status(running)["last"][2] == "failed"
    # every file ended in history, whatever its outcome
    assert len(alice.history()) == 4 and len(alice_x.history()) == 1
