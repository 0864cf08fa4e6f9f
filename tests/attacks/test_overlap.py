"""SECURITY row 12: overlapping passes must not process a command twice.

Precedent: the legacy script had no lock, so two overlapping cron runs
handled the same files twice.  A pass that finds the lock held exits 0 at
once, quietly, touching nothing; several passes started at the same moment
on a busy spool handle each command exactly once.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time

import pytest
from conftest import VIRSH_WRAPPER, Host
from outcomes import check_exactly_once, write_commands

from .kit import snap_tree

pytestmark = pytest.mark.attack

FILES = [("autostart", ""), ("start", "--paused"), ("status", ""), ("destroy", "--graceful"),
         ("reset", "--domain x"), ("suspend", "")]


def test_second_pass_exits_quietly_while_the_lock_is_held(host: Host) -> None:
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None})
    alice.write("wirt/service/vm/web/autostart")
    before = snap_tree(alice.home)
    lock = host.root / "state" / "lock"
    lock.parent.mkdir(mode=0o700)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        started = time.monotonic()
        proc = host.run()
        assert time.monotonic() - started < 5
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
        assert snap_tree(alice.home) == before
        assert host.audit_records() == []
    finally:
        os.close(fd)
    host.run()  # the lock is free: now it runs
    assert [r["outcome"] for r in host.commands()] == ["done"]


def test_passes_started_together_handle_each_command_once(host: Host) -> None:
    users = [host.add_user(n) for n in ("alice", "bob", "carol")]
    rounds = [[f"r{r}v{i}" for i in range(5)] for r in range(3)]  # new folders each round
    host.write_config({f"{u.name}-{vm}": None for u in users for vms in rounds for vm in vms})
    expected = {}
    locked_out = 0
    for round_, vms in enumerate(rounds):
        for user in users:
            expected |= write_commands(user, vms, FILES, (1_700_000_000 + round_ * 100) * 10**9)
        procs = [subprocess.Popen([VIRSH_WRAPPER, "--config", str(host.config), "--verbose"],
                                  env={"PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(6)]
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert (proc.returncode, err) == (0, ""), err
            locked_out += "another pass is running" in out
        host.run()
    counts = check_exactly_once(host, users, expected)
    assert sum(counts.values()) == len(expected) == 3 * len(users) * 5 * len(FILES)
    assert counts["interrupted"] == 0
    assert [r for r in host.audit_records() if r["event"] == "user-incomplete"] == []
    print(f"outcomes: {dict(counts)}; passes that found the lock held: {locked_out} of 18")
    assert locked_out > 0, "no two passes overlapped: the test proves nothing"
