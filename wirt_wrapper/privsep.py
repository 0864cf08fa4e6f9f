"""The privilege boundary: fork a child that becomes the user for good, and talk to it.

The root process forks one child per user.  The child drops to the user's
uid, gid and supplementary groups with ``setres[ug]id`` (no way back), then
checks that it cannot regain root and aborts if it can (OpenSSH
``permanently_set_uid``).  It keeps only the channel descriptor: the libvirt
connection, the audit log and the lock stay with root.

Messages are JSON objects, length-prefixed, over a Unix stream socketpair.
The root side reads with a deadline, so a stopped or hung child is killed
and cannot stall the pass.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ProtocolError

__all__ = ["Channel", "Child", "Timeout", "drop_for_good", "reap", "spawn"]

MAX_MESSAGE = 4 << 20
_HEADER = struct.Struct("!I")


class Timeout(Exception):
    """The other side did not answer before the deadline."""


class Channel:
    """JSON messages over a stream socket; with a deadline, every read and write honours it."""

    def __init__(self, sock: socket.socket, deadline: float | None = None) -> None:
        self.sock = sock
        self.deadline = deadline

    def _arm(self) -> None:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise Timeout()
            self.sock.settimeout(left)

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        if len(data) > MAX_MESSAGE:
            raise ProtocolError(f"message of {len(data)} bytes is too large")
        self._arm()
        try:
            self.sock.sendall(_HEADER.pack(len(data)) + data)
        except TimeoutError:
            raise Timeout() from None

    def _read(self, size: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            self._arm()
            try:
                chunk = self.sock.recv(size - len(chunks))
            except TimeoutError:
                raise Timeout() from None
            if not chunk:
                raise EOFError("the other side closed the channel")
            chunks += chunk
        return bytes(chunks)

    def recv(self) -> dict[str, Any]:
        (size,) = _HEADER.unpack(self._read(_HEADER.size))
        if size > MAX_MESSAGE:
            raise ProtocolError(f"message of {size} bytes is too large")
        message = json.loads(self._read(size))
        if not isinstance(message, dict):
            raise ProtocolError("a message must be a JSON object")
        return message

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send(message)
        return self.recv()


def drop_for_good(user: pwd.struct_passwd) -> None:
    """Become *user* (uid, gid, all their groups) with no way back to root."""
    groups = os.getgrouplist(user.pw_name, user.pw_gid)
    os.setgroups(groups)
    os.setresgid(user.pw_gid, user.pw_gid, user.pw_gid)
    os.setresuid(user.pw_uid, user.pw_uid, user.pw_uid)
    regained = True
    try:
        os.setresuid(0, 0, 0)
    except PermissionError:
        regained = False
    if regained or os.getresuid() != (user.pw_uid,) * 3 or os.getresgid() != (user.pw_gid,) * 3:
        os.write(2, b"wirt: privilege drop failed; aborting\n")
        os._exit(70)
    if sorted(os.getgroups()) != sorted(set(groups)):
        os.write(2, b"wirt: supplementary groups not dropped; aborting\n")
        os._exit(70)


@dataclass
class Child:
    pid: int
    channel: Channel

    def fileno(self) -> int:
        return self.channel.sock.fileno()

    def end(self) -> None:
        """Close the channel and make sure the child is gone (it may be stopped by the user)."""
        self.channel.sock.close()
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


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


def spawn(user: pwd.struct_passwd, target: Callable[[Channel], None]) -> Child:
    """Run ``target(channel)`` in a child process that is *user* for good."""
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, observed through the tests
        code = 0
        try:
            keep = child_sock.fileno()
            os.closerange(3, keep)
            os.closerange(keep + 1, 1 << 16)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
                signal.signal(sig, signal.SIG_DFL)
            drop_for_good(user)
            os.umask(0o077)
            os.chdir("/")
            target(Channel(child_sock))
        except BaseException as exc:  # noqa: BLE001 - the child must never return into root code
            code = 1
            try:
                os.write(2, f"wirt: user side for {user.pw_name} failed: {exc!r}\n".encode())
            except OSError:
                pass
        finally:
            os._exit(code)
    child_sock.close()
    return Child(pid, Channel(parent_sock))
