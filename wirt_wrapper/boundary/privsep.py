"""The privilege boundary: fork a child that becomes the user for good, and talk to it.

A small spawner process (root, forked before libvirt is loaded) forks one
child per user.  The child drops to the user's uid, gid and supplementary
groups with ``setres[ug]id`` (no way back), then checks that it cannot regain
root and aborts if it can (OpenSSH ``permanently_set_uid``).  It keeps only
its channel descriptor: the libvirt connection, the audit log and the lock
are never in its process.

Messages are JSON objects, length-prefixed, over a Unix stream socketpair.
The root side reads with a deadline, so a stopped or hung child is killed
and cannot stall the pass.

Before that, a prober (root, also forked before libvirt) takes a quick look
into each home with the user's *filesystem* identity only (setfsuid,
setfsgid, the user's groups): listing and lstat, nothing else, so that users
with nothing to do cost no process at all.  Everything that opens, reads,
moves or writes a user's file happens in a child that dropped for good.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from wirt_wrapper.boundary.channel import Channel
from wirt_wrapper.rules import protocol
from wirt_wrapper.rules.errors import EXIT_DROP_FAILED, WirtError
from wirt_wrapper.rules.protocol import MAX_MESSAGE

__all__ = [
    "Child", "Identity", "Prober", "Spawner", "check_fork_safe", "drop_for_good",
    "filesystem_identity", "reap",
]

@dataclass(frozen=True)
class Identity:
    """Who a user side becomes: from the passwd database, read by root."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # every group the user is in, the primary one included


def drop_for_good(user: Identity) -> None:
    """Become *user* (uid, gid, all their groups) with no way back to root."""
    groups = list(user.groups)
    os.setgroups(groups)
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
    regained = True
    try:
        os.setresuid(0, 0, 0)
    except PermissionError:
        regained = False
    if regained or os.getresuid() != (user.uid,) * 3 or os.getresgid() != (user.gid,) * 3:
        os.write(2, b"wirt: privilege drop failed; aborting\n")
        os._exit(EXIT_DROP_FAILED)
    if sorted(os.getgroups()) != sorted(set(groups)):
        os.write(2, b"wirt: supplementary groups not dropped; aborting\n")
        os._exit(EXIT_DROP_FAILED)


@dataclass
class Child:
    number: int  # the spawner's name for it; root never needs its pid
    channel: Channel
    spawner: Spawner

    def fileno(self) -> int:
        return self.channel.sock.fileno()

    def end(self, *, kill: bool) -> None:
        """Close the channel; *kill* a child that did not finish (the user may have stopped it).

        A child that said 'bye' exits by itself; one the user stops after that is
        killed when the spawner closes, at the end of the pass.
        """
        self.channel.sock.close()
        if kill:
            self.spawner.kill(self.number)


Target = Callable[[dict[str, Any], Channel], None]


class Spawner:
    """A small root process that forks the user sides, started before libvirt is loaded.

    Forking the pass itself would copy a process that holds libvirt, a
    worker thread and the audit log, and costs several times more per user.
    The spawner holds nothing but this channel.  It alone forks and reaps the
    user sides, so a pid it is asked to kill is always its own live child.
    It imports the user side's code before it forks any (OpenSSH preloads the
    same way), so a user side does not load it again after the drop (the
    start-up check makes sure a user could: ``startup.check_readable``).
    Pillow alone is loaded by the user side that needs it (a screenshot):
    with it come ``logging`` and ``threading``, whose at-fork handlers Python
    would run in every child, about 1.5 ms of CPU per user side on the
    project's machine.  Neither the spawner nor root before forking it imports
    a module that registers one (``threading``, ``random`` through
    ``tempfile``, ``logging``); ``tests/test_privsep.py`` keeps it so.
    Requests are single packets (SOCK_SEQPACKET); a spawn request carries the
    user side's end of a fresh socketpair as SCM_RIGHTS.
    """

    def __init__(self) -> None:
        self.pid, self.sock = _fork_helper(_serve_spawns, socket.SOCK_SEQPACKET)
        self.count = 0

    def spawn(self, user: Identity, job: dict[str, Any], target: str = "side") -> Child:
        """Ask for a user side; one-way, so root never waits for a fork.

        *target*: what the child runs once dropped: ``side`` (a user's turn,
        :func:`wirt_wrapper.user.side.user_main`) or ``watch`` (the watch placer,
        :func:`wirt_wrapper.user.watch.watch_main`).
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.count += 1
        request = {"op": "spawn", "number": self.count, "target": target,
                   "user": [user.name, user.uid, user.gid, list(user.groups)], "job": job}
        socket.send_fds(self.sock, [protocol.encode(request)], [theirs.fileno()])
        theirs.close()
        return Child(self.count, Channel(ours), self)

    def kill(self, number: int) -> None:
        self.sock.send(protocol.encode({"op": "kill", "number": number}))

    def close(self) -> None:
        """Kill and reap every user side, then end the spawner."""
        try:
            self.sock.send(b'{"op":"exit"}')
        except OSError:
            pass
        self.sock.close()
        os.waitpid(self.pid, 0)


def check_fork_safe() -> None:
    """A helper is forked from a process that holds nothing it could leak or deadlock on."""
    if "libvirt" in sys.modules or "libvirtmod" in sys.modules:
        raise WirtError("internal error: a root helper must be forked before libvirt is loaded")
    # counted by the kernel (not threading.active_count(): importing threading here would
    # give every fork of the spawner its at-fork handler to run, see _serve_spawns)
    if len(os.listdir("/proc/self/task")) != 1:
        raise WirtError("internal error: a root helper must be forked while one thread runs")


def _fork_helper(serve: Callable[[socket.socket], None],
                 kind: socket.SocketKind) -> tuple[int, socket.socket]:
    """Fork a helper that keeps only its end of a socketpair and runs *serve* on it."""
    check_fork_safe()
    mine, theirs = socket.socketpair(socket.AF_UNIX, kind)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - observed through the tests
        code = 0
        try:
            mine.close()
            keep = theirs.fileno()
            os.closerange(3, keep)
            os.closerange(keep + 1, 1 << 16)
            serve(theirs)
        except BaseException:  # noqa: BLE001 - never return into the pass's code
            code = 1
        finally:
            os._exit(code)
    theirs.close()
    return pid, mine


REAP_SECONDS = 0.5  # how soon the spawner collects a user side that ended, when idle

# The largest look the prober sends; a larger one (thousands of long names a user
# chose) is answered "busy": that user gets a full user side, everyone else a look.
MAX_LOOK = 1 << 20


def _serve_looks(sock: socket.socket) -> None:  # pragma: no cover
    from wirt_wrapper.user.probe import BUSY, look, mark

    gc.disable()
    channel = Channel(sock)
    while True:
        try:
            request = channel.recv()
        except EOFError:
            return
        if "marks" in request:  # one batch, after every look: [[user, job], ...]
            failed = []
            for index, ((name, uid, gid, groups), job) in enumerate(request["marks"]):
                with filesystem_identity(Identity(name, uid, gid, tuple(groups))):
                    if not mark(job):
                        failed.append(index)
            channel.send({"failed": failed})
            continue
        name, uid, gid, groups = request["user"]
        with filesystem_identity(Identity(name, uid, gid, tuple(groups))):
            report = look(request["job"])
        if len(protocol.encode(report)) > MAX_LOOK:
            report = {layout: BUSY for layout in report}
        channel.send(report)


def _serve_spawns(sock: socket.socket) -> None:  # pragma: no cover
    from wirt_wrapper.user.side import user_main  # and all it imports: before any drop
    from wirt_wrapper.user.warm import rehearse
    from wirt_wrapper.user.watch import watch_main

    targets: dict[str, Target] = {"side": user_main, "watch": watch_main}

    numbers: dict[int, int] = {}  # root's number -> pid, for live children only
    children: set[int] = set()
    rehearsed = False
    try:
        while True:
            # with children about, wake now and then to collect those that ended: a
            # watch service may send nothing for minutes, and they would stay zombies
            sock.settimeout(REAP_SECONDS if children else None)
            try:
                data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 1)
            except TimeoutError:
                children = set(reap(sorted(children), block=False))
                numbers = {n: p for n, p in numbers.items() if p in children}
                continue
            if not data:
                return
            request = protocol.decode(data)
            op = request.get("op")
            if op == "spawn" and len(fds) == 1 and request.get("target", "side") in targets:
                if not rehearsed:  # before the first child: an idle pass forks none
                    rehearsed = True
                    with suppress(Exception):  # only ever slower without it: serve anyway
                        rehearse()  # so that the children start warm (see user.warm)
                name, uid, gid, groups = request["user"]
                identity = Identity(name, uid, gid, tuple(groups))
                pid = _fork_user(identity, request["job"], fds[0],
                                 targets[request.get("target", "side")])
                numbers[request["number"]] = pid
                children.add(pid)
            elif op == "kill" and numbers.get(int(request["number"]), 0) in children:
                os.kill(numbers.pop(int(request["number"])), signal.SIGKILL)
            elif op == "exit":
                return
            for fd in fds:
                with suppress(OSError):
                    os.close(fd)
            children = set(reap(sorted(children), block=False))
            numbers = {n: p for n, p in numbers.items() if p in children}
    finally:
        for pid in children:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        reap(sorted(children), block=True)


def _fork_user(user: Identity, job: dict[str, Any], fd: int,
               target: Target) -> int:  # pragma: no cover
    check_fork_safe()
    pid = os.fork()
    if pid:
        return pid
    code = 0
    gc.disable()  # a short life; collecting would copy pages shared with the spawner
    try:
        os.dup2(fd, 3)
        os.closerange(4, 1 << 16)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
            signal.signal(sig, signal.SIG_DFL)
        drop_for_good(user)
        os.umask(0o077)
        os.chdir("/")
        target(job, Channel(socket.socket(fileno=3)))
    except BaseException as exc:  # noqa: BLE001 - the child must never return
        code = 1
        with suppress(OSError):
            os.write(2, f"wirt: user side for {user.name} failed: {exc!r}\n".encode())
    finally:
        os._exit(code)


_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def filesystem_identity(user: Identity) -> Iterator[None]:
    """Let the kernel judge file access as *user* (fsuid, fsgid, groups), then become root again.

    For a single-threaded root process only (setfsuid is per thread; the
    groups are per process).  Leaving fsuid 0 clears the filesystem
    capabilities (CAP_DAC_OVERRIDE, ...) from the effective set, so nothing
    reaches what the user could not.  Any failure to switch or to switch
    back ends the process.
    """
    saved = os.getgroups()
    os.setgroups(list(user.groups))
    _libc.setfsgid(user.gid)
    _libc.setfsuid(user.uid)
    try:
        # setfs[ug]id return the previous value: asking again tells the current one
        if _libc.setfsuid(user.uid) != user.uid or _libc.setfsgid(user.gid) != user.gid:
            os.write(2, b"wirt: cannot take the user's filesystem identity; aborting\n")
            os._exit(EXIT_DROP_FAILED)
        yield
    finally:
        _libc.setfsuid(0)
        _libc.setfsgid(0)
        os.setgroups(saved)
        if _libc.setfsuid(0) != 0 or _libc.setfsgid(0) != 0:
            os._exit(EXIT_DROP_FAILED)


class Prober:
    """A small root process that takes a quick look into homes, one user at a time.

    Forked before libvirt is loaded; it holds only its socket.  For each
    request it takes the user's filesystem identity (see
    :func:`filesystem_identity`), calls :func:`wirt_wrapper.user.probe.look`
    (which only lists folders and lstats, never reads or writes), and
    answers.  Requests and answers are framed messages on a stream (an answer
    grows with names a user chose: no datagram limit applies), answered in
    order; root reads them when they come.
    """

    def __init__(self) -> None:
        self.pid, sock = _fork_helper(_serve_looks, socket.SOCK_STREAM)
        self.channel = Channel(sock)

    def fileno(self) -> int:
        return self.channel.sock.fileno()

    def ask(self, user: Identity, job: dict[str, Any]) -> None:
        self.channel.send({"user": [user.name, user.uid, user.gid, list(user.groups)],
                           "job": job})

    def mark(self, items: list[tuple[Identity, dict[str, Any]]], seconds: float) -> list[int]:
        """Set each user's ``status-checked`` time (:func:`wirt_wrapper.user.probe.mark`),
        after every look was answered; the indexes of *items* it could not set."""
        self.channel.send({"marks": [[[u.name, u.uid, u.gid, list(u.groups)], job]
                                     for u, job in items]})
        failed = self.answer(seconds).get("failed", [])
        return [int(i) for i in failed] if isinstance(failed, list) else []

    def answer(self, seconds: float) -> dict[str, Any]:
        """The next answer; it has begun to arrive, so the rest follows within *seconds*."""
        self.channel.deadline = time.monotonic() + seconds
        try:
            return self.channel.recv()
        finally:
            self.channel.deadline = None

    def close(self) -> None:
        """End the prober (killed: it may be stuck in a hung file system); once only."""
        if self.pid == 0:
            return
        self.channel.sock.close()
        with suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.pid = 0  # reaped: never signal that number again


def reap(pids: list[int], *, block: bool) -> list[int]:
    """Collect ended children; returns the pids still running."""
    left = []
    for pid in pids:
        try:
            done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            continue
        if done == 0:
            left.append(pid)
    return left
