"""libvirtd stopped, killed or frozen around a real pass on qemu:///system.

These tests stop the machine's one libvirtd, which disturbs everything else
using it (other test runs on the same machine), so they live in their own
file; on a shared machine skip them with ``WIRT_TEST_KEEP_LIBVIRTD=1``
(the README's test command and CI run them).  The ``libvirtd`` fixture
ALWAYS brings the daemon back (``libvirtd -d``, then waits until its socket
accepts a connection), whatever the test did.  There is no systemd here: the daemon
is found with ``pgrep -x libvirtd`` and signalled by its pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import libvirt
import psutil
import pytest
from conftest import Host
from guest import realvm
from guest.fixtures import Guest, Guests, WirtPass

pytestmark = [
    pytest.mark.realvm,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("WIRT_TEST_KEEP_LIBVIRTD") == "1",
                       reason="WIRT_TEST_KEEP_LIBVIRTD=1: this machine's libvirtd is shared"),
]

SOCKET = "/var/run/libvirt/libvirt-sock"
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
OUTCOMES = {"done", "failed", "interrupted"}


def libvirtd_pids() -> list[int]:
    """Live libvirtd processes (a killed one may linger as a zombie for a moment)."""
    return [p.info["pid"] for p in psutil.process_iter(["pid", "name", "status"])
            if p.info["name"] == "libvirtd" and p.info["status"] != psutil.STATUS_ZOMBIE]


def socket_answers() -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(SOCKET)
        except OSError:
            return False
    return True


class Libvirtd:
    """The machine's libvirtd, stopped and started the way an admin without systemd would."""

    def send(self, sig: signal.Signals) -> list[int]:
        pids = libvirtd_pids()
        assert pids, "libvirtd is not running"
        for pid in pids:
            os.kill(pid, sig)
        return pids

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        pids = self.send(sig)
        # A killed daemon's threads may hold the socket open a little after its main
        # thread turned zombie: wait until nobody answers.
        gone = realvm.wait_for(
            lambda: not set(pids) & set(libvirtd_pids()) and not socket_answers(), 30)
        assert gone, f"libvirtd {pids} did not exit on {sig.name}"

    def start(self) -> None:
        """Start libvirtd if it is not running (or frozen), and wait until it answers."""
        for pid in libvirtd_pids():
            os.kill(pid, signal.SIGCONT)
        if not libvirtd_pids():
            subprocess.run(["libvirtd", "-d"], env=CLEAN_ENV, check=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        # slow with many domains defined (other test runs on this machine define 1,000)
        assert realvm.wait_for(socket_answers, 120), "libvirtd did not come back"


@pytest.fixture
def libvirtd(guests: Guests) -> Iterator[Libvirtd]:
    """Control of libvirtd; torn down before ``guests``, so the domains can be removed."""
    daemon = Libvirtd()
    assert socket_answers(), "libvirtd must be running before this test"
    try:
        yield daemon
    finally:
        daemon.start()


def test_libvirtd_stopped_before_a_pass(realhost: Host, guests: Guests, libvirtd: Libvirtd,
                                        wirt_pass: WirtPass) -> None:
    """Commands wait while libvirtd is down, then run exactly once when it is back."""
    alice, bob = realhost.add_user("alice"), realhost.add_user("bob")
    web, mail = guests.define(alice, "web"), guests.define(bob, "mail")
    web.command("start")
    mail.command("autostart")

    libvirtd.stop()
    proc = wirt_pass()
    assert proc.returncode == 0
    assert "libvirt unreachable, commands stay pending" in proc.stderr, proc.stderr
    events = [r["event"] for r in realhost.audit_records()]
    assert events == ["libvirt-unreachable", "pass"]
    assert "cannot connect to qemu:///system" in str(realhost.audit_records()[0]["reason"])
    # nothing of the users' was touched: the commands wait in the spool
    for guest, action in ((web, "start"), (mail, "autostart")):
        assert guest.spool() == [action]
        assert guest.user.history() == [] and guest.log_lines() == []

    libvirtd.start()
    wirt_pass()
    assert sorted((r["vm"], r["action"], r["outcome"]) for r in realhost.commands()) == [
        ("mail", "autostart", "done"), ("web", "start", "done")]
    web.wait_boots(1)
    assert web.state() == libvirt.VIR_DOMAIN_RUNNING
    assert mail.dom.autostart() == 1
    for guest in (web, mail):
        assert guest.spool() == [] and len(guest.user.history()) == 1
        assert len(guest.log_lines()) == 1 and ": done" in guest.log_lines()[0]

    wirt_pass()
    assert len(realhost.commands()) == 2  # nothing ran twice
    assert web.boots() == 1


def test_libvirtd_killed_during_a_pass(realhost: Host, guests: Guests, libvirtd: Libvirtd,
                                       wirt_pass: WirtPass) -> None:
    """kill -9 libvirtd mid-pass: no command is lost, none runs twice, each has one outcome."""
    users = [realhost.add_user(name) for name in ("ann", "ben", "cat")]
    mine: list[Guest] = [guests.define(u, vm) for u in users for vm in ("a", "b", "c")]
    files: list[tuple[Guest, str]] = []
    for guest in mine:
        # start --paused: QEMU starts (~0.4 s of libvirt work) but the guest does not
        # run, so nine of them cost no CPU.
        guest.command("start", "--paused", mtime=1_000_000)
        guest.command("autostart", mtime=1_000_010)
        files += [(guest, "start"), (guest, "autostart")]

    running = wirt_pass.spawn()
    try:
        assert realvm.wait_for(lambda: len(realhost.commands()) >= 4, 60, interval=0.02)
        libvirtd.stop(signal.SIGKILL)
        out, err = running.communicate(timeout=60)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert running.returncode == 0, err
    assert "libvirt went away during the pass, the remaining commands stay pending" in err
    assert "libvirt-unreachable" in [r["event"] for r in realhost.audit_records()]
    first = realhost.commands()
    assert 4 <= len(first) < len(files), first
    assert {r["outcome"] for r in first} <= OUTCOMES
    pending = [(g, a) for g, a in files if a in g.spool()]
    assert len(first) + len(pending) == len(files)  # each file: outcome or still pending

    libvirtd.start()
    wirt_pass()
    records = realhost.commands()
    assert len(records) == len(files)
    assert len({r["id"] for r in records}) == len(files)
    assert {(r["user"], r["vm"], r["action"]) for r in records} == {
        (g.user.name, g.vm, a) for g, a in files}
    assert {r["outcome"] for r in records} <= OUTCOMES
    # One libvirt call is in flight at a time: at most one is 'interrupted'.  Users are
    # served in parallel, so each other user may have claimed one command that then
    # found libvirt gone ('failed', not run).  Everything after them ran normally.
    caught = [(r["user"], r["vm"], r["action"], r["outcome"]) for r in records
              if r["outcome"] != "done"]
    print("commands the kill caught:", caught)
    assert sum(c[3] == "interrupted" for c in caught) <= 1, caught
    assert len(caught) <= len(users), caught
    for guest in mine:
        assert guest.spool() == []
        lines = guest.log_lines()
        assert len(lines) == 2, lines  # one line per file: nothing lost, nothing twice
        by_action = {r["action"]: r for r in records
                     if r["user"] == guest.user.name and r["vm"] == guest.vm}
        # what libvirt says agrees with every "done"
        if by_action["start"]["outcome"] == "done":
            assert guest.state() == libvirt.VIR_DOMAIN_PAUSED
        if by_action["autostart"]["outcome"] == "done":
            assert guest.dom.autostart() == 1
        for record in by_action.values():
            # the command the kill caught: "failed" if libvirt went away before the
            # call (not run), "interrupted" if during it (effect unknown); the user's
            # log says which
            if record["outcome"] == "failed":
                assert "the command was not run: send it again" in str(record["reason"])
            if record["outcome"] == "interrupted":
                assert "it may or may not have taken effect" in str(record["reason"])
            if record["outcome"] != "done":
                assert f": {record['outcome']}: libvirt: " in "".join(lines)
    for user in users:
        assert len(user.history()) == 6

    wirt_pass()
    assert len(realhost.commands()) == len(files)  # nothing ran twice


def test_libvirtd_frozen_during_a_pass(realhost: Host, guests: Guests, libvirtd: Libvirtd,
                                       wirt_pass: WirtPass) -> None:
    """A hung libvirtd (SIGSTOP) costs one libvirt_timeout, not a hung pass."""
    realhost.extra_config = "[limits]\nlibvirt_timeout = 2\n"
    realhost.write_config()
    alice = realhost.add_user("alice")
    web = guests.define(alice, "web")
    web.command("autostart")

    libvirtd.send(signal.SIGSTOP)
    started = time.monotonic()
    try:
        running = wirt_pass.spawn()
        out, err = running.communicate(timeout=30)
    finally:
        libvirtd.send(signal.SIGCONT)
    took = time.monotonic() - started
    assert running.returncode == 0, err
    assert took < 10, f"the pass took {took:.1f} s with libvirt_timeout = 2"
    assert "did not answer within 2 s" in err
    assert web.spool() == ["autostart"]

    wirt_pass()
    assert [(r["action"], r["outcome"]) for r in realhost.commands()] == [("autostart", "done")]
    assert web.dom.autostart() == 1


def test_watch_service_survives_a_libvirtd_restart(realhost: Host, guests: Guests,
                                                   libvirtd: Libvirtd) -> None:
    """The watch service keeps running while libvirtd is stopped and started again: a
    command written meanwhile waits, and is served once libvirt is back (the reconnect's
    full pass); lifecycle events work again on the new connection."""
    from test_realvm import status
    from watching import stderr_of, wait_for, watching

    alice = realhost.add_user("alice")
    web = guests.define(alice, "web")
    alice.run("mkdir -p wirt/service/vm/web")
    with watching(realhost) as service:
        libvirtd.stop()
        web.command("autostart")
        wait_for(lambda: "libvirt unreachable" in stderr_of(service), 10, "the mini pass")
        assert web.spool() == ["autostart"] and service.poll() is None
        libvirtd.start()
        wait_for(lambda: web.spool() == [], 60, "the command, once libvirtd is back")
        # the file leaves the spool before the call: its audit record follows the outcome
        wait_for(lambda: [(r["action"], r["outcome"]) for r in realhost.commands()] == [
            ("autostart", "done")], 10, f"its audit record: {realhost.commands()}")
        assert web.dom.autostart() == 1
        time.sleep(1)  # the event connection is back (it came first: the full pass followed)
        web.dom.create()  # behind wirt's back
        wait_for(lambda: status(web).get("state") == "running", 5,
                 f"status.xml from the event after the restart: {status(web)}")
        assert service.poll() is None
    assert len(realhost.commands()) == 1
