"""SECURITY row 2: swap a checked file or folder for a symbolic link between check and use.

Precedent: logrotate "logrotten" race; Postfix safe_open's history.  Racing
processes of the attacker flip command files, VM folders, log and history
folders, log files, status files and status folders between the real thing
and links (to /etc/shadow, root's canary, bob's group-writable tree and
alice's own private file) in tight loops, while passes run one after the
other.  Over all passes nothing may escape.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .kit import Scene

pytestmark = pytest.mark.attack

RACER = Path(__file__).with_name("racer.py")
PASSES = 25


def start_racer(scene: Scene, *flips: str) -> subprocess.Popen[str]:
    alice = scene.alice
    proc = subprocess.Popen(
        ["/usr/sbin/runuser", "-u", alice.name, "--", "/usr/bin/python3", str(RACER),
         str(alice.home), str(scene.bob.home), str(scene.canaries["etc-canary"]), *flips],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def stop_racer(proc: subprocess.Popen[str]) -> int:
    # runuser passes SIGTERM on to the racer, which prints its count and exits
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    return int(out.split()[-1])


def test_flip_files_and_folders_during_passes(scene: Scene) -> None:
    racers = [start_racer(scene, "command", "vmdir", "infodir", "status"),
              start_racer(scene, "logdir", "history", "logfile")]
    try:
        for _ in range(PASSES):
            scene.run()
    finally:
        flips = [stop_racer(r) for r in racers]
    print(f"flips per racer: {flips}", file=sys.stderr)
    assert all(f > 1000 for f in flips), f"the race was not mounted: {flips}"

    scene.check_no_escape()
    scene.check_alice_owns_her_tree()
    outcomes: dict[str, int] = {}
    for record in scene.commands():
        assert record["vm"] == "web" and record["file"] == "autostart", record
        outcomes[record["outcome"]] = outcomes.get(record["outcome"], 0) + 1
        if record["outcome"] == "rejected":
            assert "symbolic link" in record["reason"] or "replaced" in record["reason"], record
    print(f"outcomes over {PASSES} passes: {outcomes}", file=sys.stderr)
    assert outcomes, "no pass saw a command: the test proves nothing"
    incomplete = [r for r in scene.audit() if r["event"] == "user-incomplete"]
    assert incomplete == [], f"a race crashed the user side: {incomplete}"
