"""A rehearsal the spawner runs once, before it forks its first user side: a turn's pure work.

Python 3.11 specializes code as it runs it, writing into the code objects,
and libxml2 and the json module set themselves up on first use.  Done in a
fresh user side, every page those writes touch is a page the kernel copies
(the spawner's memory is shared copy-on-write): on the project's machine a
child that rendered five status.xml files used about 120 page faults and
1.5 ms of CPU more when the spawner had not done it first.  So the spawner
runs the user side's pure functions on a made-up VM here, a few times each.
Nothing here opens a file or asks anyone (messages go round a private
socket pair) or keeps anything: the results are thrown away.
"""

from __future__ import annotations

import socket
import stat
import time

from wirt_wrapper.boundary.channel import Channel
from wirt_wrapper.rules import logline
from wirt_wrapper.rules import spool as spool_rules
from wirt_wrapper.rules import status as status_xml
from wirt_wrapper.rules import vms as vms_rules
from wirt_wrapper.rules.actions import parse_command, printable
from wirt_wrapper.rules.layouts import LAYOUTS, Layout

__all__ = ["rehearse"]

ROUNDS = 10  # more than the specializer's warm-up of a function (a few calls)

_INFO = {
    "domain": "rehearsal-vm", "state": "running", "reason": "booted", "autostart": True,
    "persistent": True, "memory_kib": 65536, "vcpus": 1,
    "settings": {"memory_mib": 64, "vcpus": 1, "boot": ["hd"], "has_cdrom": True,
                 "cdrom": "", "restart_needed": False},
    "snapshots": [{"name": "s1", "time": "2026-01-01T00:00:00Z", "state": "shutoff",
                   "current": True, "by": "rehearsal"}],
}


def rehearse() -> None:
    """Run the user side's pure rules, and its messages round a socket pair, on made-up
    input; raises only on a bug."""
    layout = LAYOUTS["wirt"]
    read = status_xml.stamp(time.time())
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ours, root = Channel(mine, time.monotonic() + 10), Channel(theirs)
        for _ in range(ROUNDS):
            _round(layout, read)
            ours.send({"op": "intend", "vm": "vm", "file": "autostart"})
            root.recv()
            root.send({"ok": True, "status": _INFO})
            ours.recv()
    finally:
        mine.close()
        theirs.close()


def _round(layout: Layout, read: str) -> None:
    """One pass over what a user side does with one command, on made-up values."""
    regular, folder = stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755
    spool_rules.in_spool(layout, layout.folder_of("vm"), folder)
    spool_rules.in_vm_folder("vm", "autostart", regular)
    spool_rules.in_vm_folder("vm", ".hidden", regular)
    for name, content in (("autostart", b""), ("autostart", b"--disable\n"), ("start", b""),
                          ("shutdown", b"")):
        parse_command(name, content, 4096)
    last = {"action": "autostart", "params": "", "outcome": "done",
            "message": "autostart set", "time": logline.now_text()}
    document = status_xml.render("vm", _INFO, last, None, read)
    status_xml.kept(document)
    status_xml.restamp(document, read, read)
    status_xml.info_digest(_INFO)
    logline.render(stamp=last["time"], vm="vm", action="autostart", params="", outcome="done",
                   message="autostart set", file="autostart",
                   history=layout.shown(*layout.history, "x"), cid="c-1")
    logline.state_line(_INFO)
    printable("rehearsal\n")
    vms_rules.digest(vms_rules.render([{"vm": "vm", "domain": "rehearsal-vm",
                                        "state": "running"}]))
