"""Where a layout keeps commands and results under a home (pure data, no I/O).

Both sides use these: the user side to find files, the privileged side to
check that names the user side reports fit the layout.  A layout is one
object; the legacy ``dom-<vm>`` layout (:data:`LEGACY`) differs from the
wirt layout only in its names, not in how a command is handled.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import ClassVar

from wirt_wrapper.rules.actions import printable

__all__ = ["CHECKED_FILE", "LAYOUTS", "LEGACY", "SET_ASIDE", "STATUS_FILE", "WIRT", "Layout",
           "LegacyLayout", "history_stamp", "legacy_stamp"]

SET_ASIDE = ".virsh-wrapper"  # log -> log.virsh-wrapper: the old tool's root-owned folder
STATUS_FILE = "status.xml"  # in each VM's info folder
# beside the VM info folders (~/wirt/info/status-checked): its modification time is the
# time a pass last read libvirt and found every status.xml of the user current (SPEC 2c)
CHECKED_FILE = "status-checked"
HISTORY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
LEGACY_STAMP = re.compile(r"[0-9]{2}_[A-Z][a-z]{2}_[0-9]{2}_[0-9]{2}\.[0-9]{2}\.[0-9]{2}")


def history_stamp(now_ns: int) -> str:
    """``20261125-154001.123456``: sortable, microsecond resolution, no colons."""
    seconds, rest = divmod(now_ns, 1_000_000_000)
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(seconds)) + f".{rest // 1000:06d}"


def legacy_stamp(now_ns: int) -> str:
    """``25_Nov_26_15.15.07``: the old ``date +%d_%h_%y_%H.%M`` (local time) plus seconds.

    Seconds make a clash rare; the O_EXCL ``-2``, ``-3`` suffix makes names unique.
    The month is English whatever the locale, as the old script's cron run printed it.
    """
    t = time.localtime(now_ns // 1_000_000_000)
    return (f"{t.tm_mday:02d}_{MONTHS[t.tm_mon - 1]}_{t.tm_year % 100:02d}_"
            f"{t.tm_hour:02d}.{t.tm_min:02d}.{t.tm_sec:02d}")


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def safe_token(text: str, limit: int = 40) -> str:
    """A user-chosen file name reduced to characters that are safe in a history name."""
    cleaned = _UNSAFE.sub("_", text)[:limit].lstrip(".")
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
    # the folders above the spool and the names each may hold (anything else is told once)
    parents: tuple[tuple[tuple[str, ...], frozenset[str]], ...] = ()
    # False: append to one log per VM; True: one new log file per command
    per_command_log: ClassVar[bool] = False
    # spool entries an older tool made as root: set aside (renamed to NAME + SET_ASIDE)
    made_by_root: ClassVar[tuple[str, ...]] = ()

    def stamp(self, now_ns: int) -> str:
        return history_stamp(now_ns)

    def stamp_of(self, history_name: str) -> str | None:
        """The stamp inside a history name this layout chose (None: not recoverable)."""
        return None

    def vm_of(self, entry: str) -> str | None:
        """The VM a spool entry stands for, or None if it is not a VM folder name."""
        if not entry.startswith(self.vm_prefix):
            return None
        return entry[len(self.vm_prefix) :] or None

    def folder_of(self, vm: str) -> str:
        return self.vm_prefix + vm

    def history_base(self, stamp: str, vm: str, file_name: str, user: str) -> str:
        return f"{stamp}-{self.vm_prefix}{vm}-{safe_token(file_name)}"

    def rejected_base(self, stamp: str, vm: str, file_name: str, user: str) -> str:
        """History name of a file the user side rejected."""
        return self.history_base(stamp, vm, file_name, user)

    def log_name(self, stamp: str, vm: str, action: str, user: str) -> str:
        return f"{vm}.log"

    def fits_history(self, name: str) -> bool:
        return bool(HISTORY_NAME.fullmatch(name)) and not name.startswith(".")

    def shown(self, *parts: str) -> str:
        """A path for messages; names the user chose may hold newlines or escapes."""
        return "~/" + "/".join(printable(part) for part in parts)


WIRT = Layout(
    name="wirt",
    spool=("wirt", "service", "vm"),
    vm_prefix="",
    own_entries=frozenset(),
    history=("wirt", "logs", "history"),
    logs=("wirt", "logs", "vm"),
    general_log=("wirt", "logs", "wirt.log"),
    info=("wirt", "info", "vm"),
    parents=((("wirt",), frozenset({"service", "info", "logs"})),
             (("wirt", "service"), frozenset({"vm"}))),
)



@dataclass(frozen=True)
class LegacyLayout(Layout):
    """virsh-wrapper's names: ``log/<stamp>-<user>-dom-<vm>-<action>.log`` per command,
    ``history/<stamp>-dom-<vm>-<action>``, ``history/ERRORFILE-<stamp>`` (LEGACY.md)."""

    per_command_log: ClassVar[bool] = True
    # virsh_wrapper.sh ran "mkdir -p ~/virsh/log ~/virsh/history" as root
    made_by_root: ClassVar[tuple[str, ...]] = ("log", "history")

    def stamp(self, now_ns: int) -> str:
        return legacy_stamp(now_ns)

    def stamp_of(self, history_name: str) -> str | None:
        found = LEGACY_STAMP.search(history_name)
        return found.group(0) if found else None

    def rejected_base(self, stamp: str, vm: str, file_name: str, user: str) -> str:
        return f"ERRORFILE-{stamp}"

    def log_name(self, stamp: str, vm: str, action: str, user: str) -> str:
        return f"{stamp}-{safe_token(user)}-{self.vm_prefix}{vm}-{safe_token(action)}.log"


LEGACY = LegacyLayout(
    name="legacy",
    spool=("virsh",),
    vm_prefix="dom-",
    own_entries=frozenset({"log", "history", "log" + SET_ASIDE, "history" + SET_ASIDE}),
    history=("virsh", "history"),
    logs=("virsh", "log"),
    general_log=("virsh", "log", "wirt.log"),
    info=None,
)

LAYOUTS: dict[str, Layout] = {WIRT.name: WIRT, LEGACY.name: LEGACY}
