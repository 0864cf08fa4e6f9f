"""What an entry in a spool is: a VM folder, a pending command, or a stray (pure rules).

The one definition used by the prober's look, the user side's turn and the
``wirt`` CLI, so that they never disagree about what is pending or what is
ignored.  Judged on the name and the ``lstat`` mode only; the file itself is
judged later through the safe-open path.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from wirt_wrapper.rules.actions import Rejection, check_vm_name
from wirt_wrapper.rules.layouts import Layout

__all__ = ["COMMAND", "ODD", "OUTCOMES", "RESERVED", "SKIP", "VM", "Entry", "in_parent",
           "in_spool", "in_vm_folder", "kind_of"]

# File names that live in a VM folder but are never commands.
RESERVED = frozenset({"config"})
OUTCOMES = ("done", "failed", "rejected", "interrupted")  # every command ends in one

VM, COMMAND, ODD, SKIP = "vm", "command", "odd", "skip"

_KINDS = (
    (stat.S_ISLNK, "a symbolic link (wirt never follows links)"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def kind_of(mode: int) -> str:
    """What an entry is, in words ("a file" for a regular file)."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a file" if stat.S_ISREG(mode) else "not a regular file"


@dataclass(frozen=True)
class Entry:
    """One entry, judged.  *key* names a stray entry in notices (told once per key)."""

    kind: str  # VM, COMMAND, ODD or SKIP
    vm: str | None = None
    problem: str | None = None  # ODD: why it is ignored, in the user's words
    key: str = ""


def _hidden(name: str) -> bool:
    """Dot-names are how writers place a file atomically: never read, never reported."""
    return name.startswith(".")


def in_spool(layout: Layout, name: str, mode: int) -> Entry:
    """An entry of the layout's spool folder (``~/wirt/service/vm``, ``~/virsh``)."""
    if _hidden(name) or name in layout.own_entries:
        return Entry(SKIP)
    key = f"entry:{name}"
    vm = layout.vm_of(name)
    if vm is None:
        return Entry(ODD, problem=f"is not a VM folder (expected {layout.folder_of('<vm>')})",
                     key=key)
    if not stat.S_ISDIR(mode):
        return Entry(ODD, problem=f"is {kind_of(mode)}, not a VM folder", key=key)
    try:
        return Entry(VM, vm=check_vm_name(vm))
    except Rejection as exc:
        return Entry(ODD, problem=str(exc), key=key)


def in_parent(layout: Layout, parts: tuple[str, ...], expected: frozenset[str],
              name: str, mode: int) -> Entry:
    """An entry of a folder above the spool (``~/wirt``, ``~/wirt/service``): wirt's own
    names are skipped, anything else is a stray (a VM folder one level too high, say)."""
    if _hidden(name) or name in expected:
        return Entry(SKIP)
    return Entry(ODD, problem=f"is not one of wirt's folders here ({', '.join(sorted(expected))}"
                 f"); VM folders go in {layout.shown(*layout.spool)}/",
                 key=f"entry:{'/'.join(parts)}/{name}")


def in_vm_folder(folder: str, name: str, mode: int) -> Entry:
    """An entry of a VM folder: a command waiting (any non-folder), skipped, or a stray folder."""
    if _hidden(name) or name in RESERVED:
        return Entry(SKIP)
    if stat.S_ISDIR(mode):
        # never a command, and it cannot move over history's placeholder file
        return Entry(ODD, problem="is a folder, not a command file", key=f"entry:{folder}/{name}")
    return Entry(COMMAND)
