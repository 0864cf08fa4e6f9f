"""Root-only records: the audit log and the in-flight journal (runs as root).

The audit log gets one JSON object per line: one per command file with its
outcome, plus a few pass-level events.  The journal makes "exactly one
outcome" survive a kill: a command is journaled *before* its file is claimed
and before libvirt is called, so the next pass can tell "never started"
(file still pending: nothing to do) from "claimed or begun" (``interrupted``).
Both files are written with plain ``write(2)`` on ``O_APPEND`` descriptors:
a killed process loses nothing it wrote.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import time
from typing import Any

from .errors import LockError, WirtError

__all__ = [
    "AuditLog", "Journal", "acquire_lock", "load_state", "open_root_file", "replace_root_file",
    "save_state",
]


def open_root_file(path: str, flags: int, what: str) -> int:
    """Open a root-only file (mode 0600, folder 0700 made if missing); refuse anything odd."""
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_CREAT, 0o600)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o077:
        os.close(fd)
        raise WirtError(f"{what} {path} must be a regular file owned by root with mode 0600")
    return fd


def replace_root_file(path: str, data: bytes) -> None:
    """Write a root-only file whole: a fresh ``.new`` file, fsync, rename over *path*."""
    temp = path + ".new"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, path)


def load_state(path: str) -> dict[str, Any]:
    """A root-only JSON state file ({} when missing, torn or not an object)."""
    if not os.path.lexists(path):
        return {}
    fd = open_root_file(path, os.O_RDONLY, "state file")
    with os.fdopen(fd, "rb") as handle:
        try:
            data = json.load(handle)
        except ValueError:
            return {}
    return data if isinstance(data, dict) else {}


def save_state(path: str, data: dict[str, Any]) -> None:
    replace_root_file(path, json.dumps(data, sort_keys=True).encode())


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()


class AuditLog:
    def __init__(self, path: str, *, dry_run: bool = False) -> None:
        self.path = path
        self.fd = -1 if dry_run else open_root_file(path, os.O_WRONLY | os.O_APPEND, "audit log")

    def write(self, event: str, **fields: Any) -> int:
        """Append one record; returns the file offset where it starts."""
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": event, **fields}
        if self.fd < 0:
            return 0
        offset = os.lseek(self.fd, 0, os.SEEK_END)
        os.write(self.fd, _line(record))
        return offset

    def contains(self, command_id: str, offset: int) -> bool:
        """Whether a record for *command_id* was written at or after *offset*."""
        needle = f'"id":"{command_id}"'.encode()
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            return needle in handle.read(1 << 20)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


class Journal:
    """Commands between "intent" and "closed", keyed by command id."""

    def __init__(self, state_dir: str, *, dry_run: bool = False) -> None:
        self.path = os.path.join(state_dir, "journal.jsonl")
        self.dry_run = dry_run
        self.entries: dict[str, dict[str, Any]] = {}
        self.dirty = False  # anything recorded this pass (else compact has nothing to do)
        if os.path.lexists(self.path):
            fd = open_root_file(self.path, os.O_RDONLY, "journal")
            with os.fdopen(fd, "rb") as handle:
                for raw in handle:
                    self._apply(raw)
        self.fd = -1 if dry_run else open_root_file(
            self.path, os.O_WRONLY | os.O_APPEND, "journal"
        )

    def _apply(self, raw: bytes) -> None:
        try:
            record = json.loads(raw)
            cid = record["id"]
        except (ValueError, KeyError, TypeError):
            return  # a torn last line from a kill: the entry stays at its earlier stage
        if record.get("stage") == "closed":
            self.entries.pop(cid, None)
        else:
            self.entries.setdefault(cid, {}).update(record)

    def record(self, cid: str, stage: str, **fields: Any) -> None:
        self.dirty = True
        record = {"id": cid, "stage": stage, **fields}
        self._apply(_line(record))
        if self.fd >= 0:
            os.write(self.fd, _line(record))

    def open_for(self, uid: int) -> list[dict[str, Any]]:
        return [e for e in self.entries.values() if e.get("uid") == uid]

    def compact(self) -> None:
        """Rewrite the journal with only the entries still open (when anything changed)."""
        if self.fd < 0 or not self.dirty:
            return
        replace_root_file(self.path, b"".join(_line(e) for e in self.entries.values()))
        os.close(self.fd)
        self.fd = open_root_file(self.path, os.O_WRONLY | os.O_APPEND, "journal")


def acquire_lock(path: str) -> int | None:
    """The pass lock's descriptor, or None if another pass holds it."""
    try:
        fd = open_root_file(path, os.O_RDWR, "lock file")
    except Exception as exc:
        raise LockError(str(exc)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
