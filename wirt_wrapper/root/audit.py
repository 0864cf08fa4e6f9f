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

import json
import os
import time
from typing import Any

from wirt_wrapper.root.state import open_root_file, replace_root_file

__all__ = ["AuditLog", "Journal"]


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()


class AuditLog:
    """The audit log; *path* None keeps the records in :attr:`kept` instead (unit tests)."""

    def __init__(self, path: str | None, *, dry_run: bool = False) -> None:
        self.path = path
        self.kept: list[dict[str, Any]] = []
        self.fd = -1 if dry_run or path is None else open_root_file(
            path, os.O_WRONLY | os.O_APPEND, "audit log")

    def write(self, event: str, **fields: Any) -> int:
        """Append one record; returns the file offset where it starts."""
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time())),
                  "event": event, **fields}
        if self.path is None:
            self.kept.append(record)
        if self.fd < 0:
            return 0
        offset = os.lseek(self.fd, 0, os.SEEK_END)
        os.write(self.fd, _line(record))
        return offset

    def end(self) -> int:
        """Where the next record will start."""
        return os.lseek(self.fd, 0, os.SEEK_END) if self.fd >= 0 else 0

    def contains(self, command_id: str, offset: int) -> bool:
        """Whether a record for *command_id* was written at or after *offset*."""
        if self.path is None:
            return any(r.get("id") == command_id for r in self.kept)
        needle = f'"id":"{command_id}"'.encode()
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            return needle in handle.read(1 << 20)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


class Journal:
    """Commands between "intent" and "closed", keyed by command id.

    *state_dir* None: kept in memory only (unit tests).
    """

    def __init__(self, state_dir: str | None, *, dry_run: bool = False) -> None:
        self.path = os.path.join(state_dir, "journal.jsonl") if state_dir else ""
        self.dry_run = dry_run or not state_dir
        self.entries: dict[str, dict[str, Any]] = {}
        self.dirty = False  # anything recorded this pass (else compact has nothing to do)
        self.fd = -1
        if self.path and os.path.lexists(self.path):
            fd = open_root_file(self.path, os.O_RDONLY, "journal")
            with os.fdopen(fd, "rb") as handle:
                for raw in handle:
                    self._apply(raw)
        if not self.dry_run:
            self.fd = open_root_file(self.path, os.O_WRONLY | os.O_APPEND, "journal")

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
        line = _line({"id": cid, "stage": stage, **fields})
        self._apply(line)  # as a later pass reads it back
        if self.fd >= 0:
            os.write(self.fd, line)

    def open_for(self, uid: int) -> list[dict[str, Any]]:
        return [e for e in self.entries.values() if e.get("uid") == uid]

    def compact(self) -> None:
        """Rewrite the journal with only the entries still open (when anything changed)."""
        if self.fd < 0 or not self.dirty:
            return
        replace_root_file(self.path, b"".join(_line(e) for e in self.entries.values()))
        os.close(self.fd)
        self.fd = open_root_file(self.path, os.O_WRONLY | os.O_APPEND, "journal")
