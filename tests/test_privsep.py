"""The privilege boundary itself: the prober's filesystem identity, enforced by the kernel."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from conftest import Host

from wirt_wrapper.boundary.privsep import Identity, filesystem_identity


def in_child(fn: Callable[[], int]) -> int:
    """Run *fn* in a forked child (root's credentials must not change here); its exit code."""
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(fn())
        except BaseException:
            os._exit(99)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_filesystem_identity_is_enforced_by_the_kernel(host: Host) -> None:
    alice = host.add_user("alice")
    bob = host.add_user("bob")
    secret = bob.home / "secret"
    secret.write_text("bob's")
    os.chown(secret, bob.uid, bob.gid)
    secret.chmod(0o600)
    bob.home.chmod(0o755)
    me = Identity(alice.name, alice.uid, alice.gid, (alice.gid,))

    def probe() -> int:
        # root reads it; as alice's filesystem identity the kernel says no; then root again
        os.stat(secret)
        open(secret).close()
        with filesystem_identity(me):
            try:
                open(secret).close()
                return 1  # read another user's 0600 file: the identity did not hold
            except PermissionError:
                pass
            try:
                os.listdir("/root")
                return 2
            except PermissionError:
                pass
            if os.geteuid() != 0:
                return 3  # only the filesystem identity changes
        open(secret).close()  # root's access is back
        return 0

    assert in_child(probe) == 0


def test_groups_follow_the_filesystem_identity(host: Host) -> None:
    alice = host.add_user("alice")
    folder = Path(tempfile.mkdtemp(prefix="wirt-group-"))  # a folder she may search
    folder.chmod(0o755)
    group_file = folder / "for-the-group"
    group_file.write_text("x")
    os.chown(group_file, 0, alice.gid)
    group_file.chmod(0o640)
    # her group only as a supplementary group: the file opens through setgroups alone
    member = Identity(alice.name, alice.uid, 65534, (65534, alice.gid))
    outsider = Identity(alice.name, alice.uid, 65534, (65534,))

    def probe() -> int:
        with filesystem_identity(member):
            open(group_file).close()  # a member of its group may read it
        with filesystem_identity(outsider):
            try:
                open(group_file).close()
                return 1
            except PermissionError:
                pass
        return 0

    try:
        assert in_child(probe) == 0
    finally:
        shutil.rmtree(folder)


def _helper_in_fresh_python(setup: str) -> str:
    import subprocess
    import sys

    code = (f"{setup}\nfrom wirt_wrapper.boundary.privsep import Spawner\n"
            "try:\n    Spawner().close()\nexcept Exception as exc:\n    print(exc)\n"
            "else:\n    print('forked')\n")
    return subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_helpers_fork_only_before_libvirt_and_threads() -> None:
    """A helper forked from a process holding libvirt (its event thread, its connection)
    or a second thread could inherit locks held mid-call: refused at fork time."""
    assert _helper_in_fresh_python("") == "forked"
    assert "before libvirt is loaded" in _helper_in_fresh_python("import libvirt")
    assert "while one thread runs" in _helper_in_fresh_python(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(5,), daemon=True)"
        ".start()")


def test_the_spawner_collects_ended_user_sides_while_idle(host: Host) -> None:
    """A user side that ended is reaped within REAP_SECONDS even when no request follows
    (a watch service may be idle for minutes): no zombie of a member's stays behind.
    In a fresh interpreter: the spawner forks only before libvirt is loaded."""
    import subprocess
    import sys

    alice = host.add_user("alice")
    code = f"""
import contextlib, time, psutil
from wirt_wrapper.boundary.privsep import REAP_SECONDS, Identity, Spawner
spawner = Spawner()
try:
    me = Identity({alice.name!r}, {alice.uid}, {alice.gid}, ({alice.gid},))
    child = spawner.spawn(me, {{"not": "a job"}})  # the side ends at once (a bad job)
    with contextlib.suppress(EOFError, OSError):
        child.channel.recv()
    def children():  # the side, still ending, then a zombie until the spawner collects it
        return psutil.Process(spawner.pid).children()
    deadline = time.monotonic() + 10 * REAP_SECONDS + 2
    while children() and time.monotonic() < deadline:
        time.sleep(0.05)
    print("children", [p.status() for p in children()])
finally:
    spawner.close()
"""
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "children []", out


# Modules that register an at-fork handler (os.register_at_fork) when imported: Python runs
# it in every child, and the spawner forks one per member with work.
_AT_FORK = ("threading", "random", "logging", "concurrent.futures.thread", "PIL")


def test_no_at_fork_work_in_the_spawners_children() -> None:
    """What root imports before it forks the spawner, and what the spawner preloads for
    the user sides, registers no at-fork handler: none of them would run in each user
    side (threading's costs about 1 ms of CPU per fork on the project's machine)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import wirt_wrapper.root.main as main\n"
            # what main.run imports before Prober() and Spawner() ...
            "from wirt_wrapper.boundary.privsep import Prober, Spawner\n"
            "from wirt_wrapper.root.state import acquire_lock, prepare_state\n"
            "from wirt_wrapper.rules.config import load_config\n"
            "from wirt_wrapper.rules.layouts import LAYOUTS\n"
            # ... and what the prober and the spawner preload
            "from wirt_wrapper.user.probe import look\n"
            "from wirt_wrapper.user.side import user_main\n"
            "from wirt_wrapper.user.watch import watch_main\n"
            f"print(sorted(m for m in {_AT_FORK!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]", out



def test_the_spawners_rehearsal_touches_no_file() -> None:
    """user.warm.rehearse runs in the spawner, as root, before any fork: it may run the
    rules and send messages round its own socket pair, and nothing else (every file
    opened, renamed, listed or removed, every process or connection, is an audit event)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from wirt_wrapper.user.warm import rehearse\n"
            "seen = []\n"
            "watched = ('open', 'os.', 'shutil.', 'subprocess.', 'socket.connect',"
            " 'socket.bind', 'pty.', 'ctypes.')\n"
            "sys.addaudithook(lambda event, args: seen.append(event)"
            " if event.startswith(watched) else None)\n"
            "rehearse()\n"
            "print(sorted(set(seen)))\n")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]", out
