"""Where a layout keeps commands and results under a home (pure data, no I/O).

Both sides use these: the user side to find files, the privileged side to
check that names the user side reports fit the layout.  A layout is one
object; adding one (the legacy ``dom-<vm>`` layout) does not touch the pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["LAYOUTS", "Layout", "history_stamp"]

HISTORY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")


def history_stamp(now_ns: int) -> str:
    """``20261125-154001.123456``: sortable, microsecond resolution, no colons."""
    import time

    seconds, rest = divmod(now_ns, 1_000_000_000)
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(seconds)) + f".{rest // 1000:06d}"


def safe_token(text: str, limit: int = 40) -> str:
    """A user-chosen file name reduced to characters that are safe in a history name."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:limit].lstrip(".")
    return cleaned or "_"


@dataclass(frozen=True)
class Layout:
    name: str
    spool: tuple[str, ...]  # folder holding one folder per VM
    vm_prefix: str  # "dom-" for legacy folders, "" for wirt
    own_entries: frozenset[str]  # entries in the spool folder that belong to the tool
    history: tuple[str, ...]
    logs: tuple[str, ...]  # per-VM logs (wirt) or per-command logs (legacy)
    general_log: tuple[str, ...]  # messages not tied to one VM: folder, file name
    info: tuple[str, ...] | None  # status.xml folders; None: this layout has none

    def vm_of(self, entry: str) -> str | None:
        """The VM a spool entry stands for, or None if it is not a VM folder name."""
        if not entry.startswith(self.vm_prefix):
            return None
        return entry[len(self.vm_prefix) :] or None

    def folder_of(self, vm: str) -> str:
        return self.vm_prefix + vm

    def history_base(self, stamp: str, vm: str, file_name: str, user: str) -> str:
        return f"{stamp}-{self.vm_prefix}{vm}-{safe_token(file_name)}"

    def log_name(self, stamp: str, vm: str, action: str, user: str) -> str:
        return f"{vm}.log"

    def fits_history(self, name: str) -> bool:
        return bool(HISTORY_NAME.fullmatch(name)) and not name.startswith(".")

    def shown(self, *parts: str) -> str:
        return "~/" + "/".join(parts)


WIRT = Layout(
    name="wirt",
    spool=("wirt", "service", "vm"),
    vm_prefix="",
    own_entries=frozenset(),
    history=("wirt", "logs", "history"),
    logs=("wirt", "logs", "vm"),
    general_log=("wirt", "logs", "wirt.log"),
    info=("wirt", "info", "vm"),
)

LAYOUTS: dict[str, Layout] = {WIRT.name: WIRT}
