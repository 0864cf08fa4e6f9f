"""SECURITY row 10 (item 6 of issue 9): root's syslog lines under a member's attack.

Alice names a command file so that an unquoted line would read as bob's
``destroy``, and drops 99 more broken files (a pass takes at most 100 of a
user's) so that a syslog daemon that reads slower than the pass writes fills
up (the kernel queues only a few datagrams per Unix socket).  A key=value
reader must see only alice's own rejections, each file name whole in its
``file=`` value, and every line, the pass summary last, must reach the daemon.
"""

from __future__ import annotations

import shlex
import socket
import threading
import time
from pathlib import Path

import pytest

from .kit import Scene

pytestmark = pytest.mark.attack


def read_slowly(sock: socket.socket, lines: list[str], done: threading.Event) -> None:
    while not done.is_set():
        try:
            lines.append(sock.recv(4096).decode("ascii"))
        except TimeoutError:
            continue
        time.sleep(0.005)


def test_file_names_cannot_forge_syslog_fields_nor_flood_it(scene: Scene,
                                                            tmp_path: Path) -> None:
    host, alice, bob = scene.host, scene.alice, scene.bob
    path = tmp_path / "log.sock"
    host.extra_config = f'syslog_socket = "{path}"\n' + host.extra_config
    host.write_config({f"{alice.name}-web": None, f"{alice.name}-db": None,
                       f"{bob.name}-web": None})
    forged = f"x user={bob.name} vm=web action=destroy file=destroy reason=ok"
    alice.run('cd wirt/service/vm/web && : > "$1" && '
              'for i in $(seq 101 199); do : > "bad-$i"; done', forged)
    daemon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    daemon.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    daemon.bind(str(path))
    daemon.settimeout(0.05)
    lines: list[str] = []
    done = threading.Event()
    reader = threading.Thread(target=read_slowly, args=(daemon, lines, done), daemon=True)
    reader.start()
    try:
        scene.run()
        count = -1
        while count != len(lines):  # until the queue is read empty
            count = len(lines)
            time.sleep(0.5)
    finally:
        done.set()
        reader.join()
        daemon.close()

    assert len(scene.commands()) == 100
    assert {r["outcome"] for r in scene.commands()} == {"rejected"}
    files = []
    for line in lines[:-1]:
        tag, *words = shlex.split(line.partition("]: ")[2])
        keys = [w.partition("=")[0] for w in words]
        values = dict(w.partition("=")[::2] for w in words)
        assert tag == "rejected:" and keys == ["user", "vm", "action", "file", "reason"], line
        assert values["user"] == alice.name and values["action"] == "-", line
        files.append(values["file"])
    assert sorted(files) == sorted([forged, *(f"bad-{i}" for i in range(101, 200))])
    assert ": pass: " in lines[-1] and " rejected=100 " in lines[-1], lines[-1]
    assert "syslog_dropped" not in lines[-1]
    scene.check_no_escape()
