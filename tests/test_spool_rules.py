"""What an entry of a spool is (wirt_wrapper.rules.spool): the one definition the prober,
the user side and the CLI share."""

from __future__ import annotations

import stat

import pytest

from wirt_wrapper.rules.layouts import LEGACY, WIRT
from wirt_wrapper.rules.spool import COMMAND, ODD, SKIP, VM, in_spool, in_vm_folder

DIR, FILE, LINK, FIFO = stat.S_IFDIR | 0o700, stat.S_IFREG | 0o600, stat.S_IFLNK | 0o777, \
    stat.S_IFIFO | 0o600


@pytest.mark.parametrize(("layout", "name", "mode", "kind", "words"), [
    (WIRT, "web", DIR, VM, None),
    (WIRT, ".tmp", DIR, SKIP, None),
    (WIRT, "web", FILE, ODD, "is a file, not a VM folder"),
    (WIRT, "web", LINK, ODD, "is a symbolic link (wirt never follows links), not a VM folder"),
    (WIRT, "web", FIFO, ODD, "is a FIFO, not a VM folder"),
    (WIRT, "-web", DIR, ODD, "VM folder name '-web' is not allowed"),
    (LEGACY, "web", DIR, ODD, "is not a VM folder (expected dom-<vm>)"),
    (LEGACY, "dom-web", DIR, VM, None),
    (LEGACY, "history", DIR, SKIP, None),
])
def test_spool_entries(layout: object, name: str, mode: int, kind: str,
                       words: str | None) -> None:
    entry = in_spool(layout, name, mode)  # type: ignore[arg-type]
    assert entry.kind == kind
    if words:
        assert words in str(entry.problem)
        assert entry.key == f"entry:{name}"  # by name only: re-creating it is not news


@pytest.mark.parametrize(("name", "mode", "kind"), [
    ("start", FILE, COMMAND), ("start", FIFO, COMMAND), ("start", LINK, COMMAND),
    ("config", FILE, SKIP), (".start.tmp", FILE, SKIP), ("reset", DIR, ODD),
])
def test_vm_folder_entries(name: str, mode: int, kind: str) -> None:
    """Anything but a folder is a command to judge (a FIFO or link is then rejected by the
    safe-open path); a folder is never one, and the CLI must not call it pending."""
    entry = in_vm_folder("web", name, mode)
    assert entry.kind == kind
    if kind == ODD:
        assert entry.key == "entry:web/reset" and "folder, not a command" in str(entry.problem)
