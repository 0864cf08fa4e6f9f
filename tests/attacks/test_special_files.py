"""SECURITY row 4: FIFO, socket, device or folder named like an action (or like an output).

Precedent: cronie check_open(), OpenSSH auth_openfile().  A FIFO without a
writer blocks a plain open() forever; a device may be anything.  Devices are
made by root with mknod inside alice's spool (a simulation: users cannot
mknod), one of them chowned to alice so that only the file-type rule stands
in the way.  The pass must not block (it is timed; the per-user limit is
20 s) and must reject each one, naming it and its kind.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from .kit import Scene

pytestmark = pytest.mark.attack

WEB = "wirt/service/vm/web"
QUICK = 5.0  # seconds; a blocked open would hold the pass for the 20 s user limit


def mknod(scene: Scene, rel: str, kind: int, major: int, minor: int,
          owner: int = 0) -> None:
    path = scene.alice.home / rel
    os.mknod(path, kind | 0o666, os.makedev(major, minor))
    os.chown(path, owner, scene.alice.gid if owner else 0)
    if owner == 0:
        scene.plant(path)


def bind_socket(scene: Scene, rel: str) -> None:
    """A listening Unix socket made by alice (runs as her)."""
    scene.alice.run(
        "/usr/bin/python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX);"
        " s.bind(sys.argv[1])' \"$1\"", str(scene.alice.home / rel))


def test_special_command_files(scene: Scene) -> None:
    alice = scene.alice
    alice.run(f"mkfifo {WEB}/autostart && mkdir -p {WEB}/stop/inside && : > {WEB}/stop/inside/x"
              " && mkfifo wirt/service/vm/fifo-vm")
    bind_socket(scene, f"{WEB}/start")
    mknod(scene, f"{WEB}/reset", stat.S_IFCHR, 1, 5)  # root's /dev/zero twin
    mknod(scene, f"{WEB}/suspend", stat.S_IFCHR, 1, 3, owner=alice.uid)  # hers: /dev/null
    mknod(scene, f"{WEB}/resume", stat.S_IFBLK, 7, 0)
    alice.write("wirt/service/vm/db/autostart")  # the rest of the pass still runs

    ran = scene.run()

    assert ran.seconds < QUICK, f"the pass took {ran.seconds:.1f} s: something blocked"
    scene.check_no_escape()
    outcomes = {(r["vm"], r["file"]): r["outcome"] for r in scene.commands()}
    assert outcomes == {("web", "autostart"): "rejected", ("web", "start"): "rejected",
                        ("web", "reset"): "rejected", ("web", "suspend"): "rejected",
                        ("web", "resume"): "rejected", ("db", "autostart"): "done"}
    scene.told(alice, f"~/{WEB}/autostart", "is a FIFO", "rejected")
    scene.told(alice, f"~/{WEB}/start", "is a socket", "rejected")
    scene.told(alice, f"~/{WEB}/reset", "is a character device", "rejected")
    scene.told(alice, f"~/{WEB}/suspend", "is a character device", "rejected")
    scene.told(alice, f"~/{WEB}/resume", "is a block device", "rejected")
    scene.told(alice, f"~/{WEB}/stop: ignored: is a folder, not a command file")
    scene.told(alice, "~/wirt/service/vm/fifo-vm", "is a FIFO", "not a VM folder")
    # the folder is left as it is (nothing of alice's is deleted or moved)
    assert (alice.home / WEB / "stop/inside/x").is_file()
    # a second pass reports nothing new and still does not block
    again = scene.run()
    assert again.seconds < QUICK
    assert len([r for r in scene.audit() if r["event"] == "notice"]) == 2


def test_special_output_files(scene: Scene) -> None:
    """FIFOs where the tool writes: the log, the general log, status.xml; one with a reader."""
    alice = scene.alice
    alice.run("rm -f wirt/logs/vm/web.log wirt/logs/wirt.log wirt/info/vm/web/status.xml"
              " && mkfifo wirt/logs/vm/web.log wirt/logs/wirt.log wirt/info/vm/web/status.xml"
              " && mkfifo wirt/logs/vm/db.log && mkdir -p wirt/info/vm/db"
              " && mkdir wirt/service/vm/Bad\\ name")
    alice.write(f"{WEB}/autostart")
    alice.write("wirt/service/vm/db/autostart")
    bind_socket(scene, "wirt/info/vm/db/status.xml")
    # alice holds the db.log FIFO open for reading, so an open for writing would succeed
    reader = subprocess.Popen(
        ["/usr/sbin/runuser", "-u", alice.name, "--", "sh", "-c",
         'exec 3<>"$1"; sleep 30', "sh", str(alice.home / "wirt/logs/vm/db.log")])
    try:
        ran = scene.run()
    finally:
        reader.kill()
        reader.wait()
    assert ran.seconds < QUICK, f"the pass took {ran.seconds:.1f} s"
    scene.check_no_escape()
    outcomes = {(r["vm"], r["file"]): r["outcome"] for r in scene.commands()}
    assert outcomes == {("web", "autostart"): "done", ("db", "autostart"): "done"}
    for rel in ("wirt/logs/vm/web.log", "wirt/logs/wirt.log", "wirt/logs/vm/db.log"):
        assert stat.S_ISFIFO(os.lstat(alice.home / rel).st_mode), rel  # left alone
    notices = " | ".join(str(r.get("message")) for r in scene.audit()
                         if r["event"] == "notice")
    assert "cannot write the log of VM 'web'" in notices
    assert "cannot write the log of VM 'db'" in notices and "FIFO" in notices
    # status.xml is the tool's own output: a fresh file replaces the FIFO and the socket
    for vm in ("web", "db"):
        status = alice.home / "wirt/info/vm" / vm / "status.xml"
        assert status.is_file() and not status.is_symlink()
        assert b"<last-command" in Path(status).read_bytes()
