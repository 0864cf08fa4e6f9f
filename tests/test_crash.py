"""A pass killed at random points, many times: exactly one outcome per command file.

SECURITY row 12 and SPEC section 3 ("never silently repeated").  A busy
spool (3 users x 10 VMs x 10 command files) is served by passes that are
killed with SIGKILL after a random delay between 0 and a typical pass time,
30 times: sometimes only the root process (its user-side child then finds
the channel closed), sometimes the whole process group, sometimes only the
user-side child.  Then clean passes
run until the spools are empty.  Every file must have exactly one history
entry, one audit record and one log line, with the same command id.

libvirt's test driver keeps its state per process, so the domains' state is
not what is checked here: the records are.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import psutil
import pytest
from conftest import VIRSH_WRAPPER, Host
from outcomes import check_exactly_once, descendants, write_commands

pytestmark = pytest.mark.slow

KILLS = 30
FILES = [("start", ""), ("shutdown", "--mode acpi"), ("stop", ""), ("destroy", "--graceful"),
         ("kill", ""), ("reboot", "--mode agent"), ("reset", "--bad"), ("suspend", ""),
         ("resume", ""), ("autostart", "--disable")]


def start_pass(host: Host) -> subprocess.Popen[bytes]:
    return subprocess.Popen([VIRSH_WRAPPER, "--config", str(host.config)],
                            env={"PATH": "/usr/bin:/bin"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def user_sides(pid: int) -> list[int]:
    """Descendants of the pass that have dropped to a user (not root's own helpers)."""
    found = []
    for child in descendants(pid):
        try:
            if psutil.Process(child).uids().real != 0:
                found.append(child)
        except psutil.Error:
            continue  # ended meanwhile
    return found


def test_killed_passes_lose_and_repeat_nothing(host: Host) -> None:
    seed = int(os.environ.get("WIRT_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"seed {seed} (WIRT_CRASH_SEED to repeat)", file=sys.stderr)
    users = [host.add_user(n) for n in ("alice", "bob", "carol")]
    vms = [f"v{i}" for i in range(10)]
    host.extra_config = "[limits]\nmax_files_per_user = 3\n"  # busy for all the kills
    host.write_config({f"{u.name}-{vm}": None for u in users for vm in vms})
    expected = {}
    for index, user in enumerate(users):
        expected |= write_commands(user, vms, FILES, (1_600_000_000 + index * 1000) * 10**9)
    assert len(expected) == 300

    started = time.monotonic()
    host.run("--dry-run")
    typical = max(0.2, time.monotonic() - started)  # a capped pass: about a busy one

    kinds: Counter[str] = Counter()
    for _ in range(KILLS):
        proc = start_pass(host)
        time.sleep(rng.uniform(0, typical))
        kind = rng.choice(["root", "group", "user side"])
        if kind == "user side":  # the child alone, as the OOM killer might
            targets = user_sides(proc.pid)
        else:
            targets = [proc.pid] if proc.poll() is None else []
        for pid in targets:
            try:
                if kind == "group":
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                targets = []
        kinds[f"killed {kind}" if targets else "finished first"] += 1
        _, err = proc.communicate(timeout=60)
        assert b"Traceback" not in err, err.decode()

    clean = 0
    while any(not p.name.startswith(".") for u in users
              for p in (u.home / "wirt/service/vm").glob("*/*")):
        host.run()
        clean += 1
        assert clean < 100, "the spools do not empty"
    host.run()  # one more: recovery of anything the last kill left, and nothing else
    counts = check_exactly_once(host, users, expected)
    print(f"{dict(kinds)}; {clean + 1} clean passes; outcomes {dict(counts)}", file=sys.stderr)
    assert sum(counts.values()) == 300
