"""Hung hosts cost their timeout once a pass, all at the same time (SPEC 13, issue 14).

node1 is libvirt's test driver (a host file); the two other hosts are Unix
sockets that accept a connection and never answer, which is what a frozen
libvirtd looks like to a client (its listening socket still accepts).  No
real libvirtd is frozen here: the system one is everyone's, and the session
daemon case is in tests/test_hosts.py.  The pass is the real executable.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, Host
from lxml import etree

TIMEOUT = 4  # [limits] libvirt_timeout


class Silent:
    """A Unix socket that accepts every connection and never says a word."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(16)
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.held.append(conn)

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.path}"

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def silent(tmp_path: Path) -> Iterator[list[Silent]]:
    made = [Silent(tmp_path / "a.sock"), Silent(tmp_path / "b.sock")]
    try:
        yield made
    finally:
        for item in made:
            item.close()


def test_two_hung_hosts_cost_one_timeout_and_only_their_commands_wait(
        host: Host, silent: list[Silent]) -> None:
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None})  # the test driver's host file
    host.hosts = {"node1": f"test://{host.root}/etc/host.xml", "hungA": silent[0].uri,
                  "hungB": silent[1].uri}
    host.extra_config = f"[limits]\nlibvirt_timeout = {TIMEOUT}\n"
    host.write_config({f"{alice.name}-web": None})
    alice.write("wirt/service/vm/web/autostart")
    waiting = alice.write("wirt/service/vm/db/start")

    started = time.monotonic()
    proc = host.run("--verbose")
    seconds = time.monotonic() - started
    # one after the other, the two would cost 2 x TIMEOUT at least
    assert seconds < 2 * TIMEOUT - 0.5, (seconds, proc.stderr)
    assert [(r["vm"], r["outcome"], r["host"]) for r in host.commands()] == [
        ("web", "done", "node1")]
    assert waiting.exists()
    problem = etree.fromstring(alice.status("db").encode()).find("problem")
    assert problem is not None and problem.get("kind") == "unreachable"
    assert "hungA, hungB" in (problem.text or "") and "wait" in (problem.text or "")
    down = sorted(str(r["host"]) for r in host.audit_records()
                  if r["event"] == "libvirt-unreachable")
    assert down == ["hungA", "hungB"]
    assert "hungA" in proc.stderr and "hungB" in proc.stderr

    # wirt-audit finds them by host
    def audit(*args: str) -> list[dict[str, object]]:
        proc = subprocess.run([str(BIN / "wirt-audit"), "--log", str(host.audit), "--json",
                               *args], capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines()]

    assert [r["vm"] for r in audit("--host", "node1")] == ["web"]
    assert audit("--host", "hungA") == []
    assert [r["host"] for r in audit("--host", "hungB", "--event", "libvirt-unreachable")] == [
        "hungB"]
