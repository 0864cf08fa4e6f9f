"""``~/wirt/info/vms.json``: every domain the user owns, with its VM folder and state
(SPEC 2a, issue 15 item 8).  Pure: rendered from root's data, read by the CLI.

Root decides what is listed (:meth:`wirt_wrapper.root.monitor.Monitor.owned`);
the user side writes the text as it is (atomically, only when its digest
changes, like status.xml); the ``wirt`` CLI reads it back to show the VMs that
have no folder yet.  Rendering is deterministic (no clock, sorted), so an idle
pass rewrites nothing.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from wirt_wrapper.rules.actions import VM_NAME
from wirt_wrapper.rules.strictjson import StrictJSONError, loads

__all__ = ["FILE", "MAX_BYTES", "digest", "parse", "render"]

FILE = "vms.json"  # in ~/wirt/info
MAX_BYTES = 256 * 1024
KEYS = ("vm", "domain", "state")


def render(entries: list[dict[str, Any]]) -> str:
    """The file's text: {"vms": [{"vm", "domain", "state"}, ...]} sorted by folder, then
    domain; "vm" is null for a domain of the user's that no folder can reach."""
    rows = sorted(({k: e.get(k) for k in KEYS} for e in entries),
                  key=lambda e: (e["vm"] or "", e["domain"]))
    return json.dumps({"vms": rows}, indent=1, sort_keys=True) + "\n"


def digest(text: str) -> str:
    """What identifies one content: the file is rewritten only when this changes."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def parse(data: bytes) -> list[dict[str, Any]]:
    """The entries of a vms.json (written by a pass, but in the user's home: checked).

    Raises ValueError when it is not what a pass writes."""
    try:
        found = loads(data, max_bytes=MAX_BYTES, max_depth=4, floats=False)
    except StrictJSONError as exc:
        raise ValueError(str(exc)) from None
    rows = found.get("vms") if isinstance(found, dict) else None
    if not isinstance(rows, list):
        raise ValueError("no list of VMs")
    entries = []
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("domain"), str) \
                or not isinstance(row.get("state"), str):
            raise ValueError("an entry is not a VM")
        vm = row.get("vm")
        if vm is not None and not (isinstance(vm, str) and VM_NAME.fullmatch(vm)):
            raise ValueError("an entry's VM folder name is not one")
        entries.append({"vm": vm, "domain": row["domain"], "state": row["state"]})
    return entries
