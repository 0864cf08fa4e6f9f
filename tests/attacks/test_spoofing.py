"""SECURITY row 13: spoofing the tool's own outputs.

Precedent: logrotate's create-vs-rename races.  Alice prepares the names the
tool is about to write: status.xml as a link or a folder, the temporary name
status.xml is written under, and the very history names of her next commands.
To know those names in advance the pass runs with its wall clock frozen by
libfaketime (LD_PRELOAD; the executable itself is unchanged), so the stamp
of layouts.history_stamp is predictable.  Nothing of hers may be
overwritten; the outputs go to fresh names, and the log names them.
"""

from __future__ import annotations

import calendar
import random
import time

import pytest

from wirt_wrapper.rules.layouts import history_stamp

from .kit import FAKETIME_LIB, Scene, snap, snap_tree

pytestmark = [
    pytest.mark.attack,
    pytest.mark.skipif(not FAKETIME_LIB.exists(), reason="libfaketime is not installed "
                       "(tests/setup-host.sh installs it)"),
]


def test_status_xml_prepared_as_link_folder_and_temp_name(scene: Scene) -> None:
    alice = scene.alice
    precious = str(scene.canaries["own-precious"])
    alice.run(
        "mkdir -p wirt/info/vm/db wirt/info/vm/app wirt/service/vm/app"
        " && rm -f wirt/info/vm/web/status.xml"
        " && mkdir wirt/info/vm/web/status.xml && echo mine > wirt/info/vm/web/status.xml/keep"
        f" && ln -s {precious} wirt/info/vm/db/status.xml"
        f" && ln -s {precious} wirt/info/vm/app/.status.xml.new"
        " && mkdir wirt/info/vm/app/.status.xml.new-2"
    )
    kept = {rel: snap_tree(alice.home / rel) for rel in (
        "wirt/info/vm/web/status.xml", "wirt/info/vm/app/.status.xml.new",
        "wirt/info/vm/app/.status.xml.new-2")}
    for vm in ("web", "db", "app"):
        alice.write(f"wirt/service/vm/{vm}/status")

    scene.run()

    scene.check_no_escape()
    scene.check_alice_owns_her_tree()
    for rel, before in kept.items():
        assert snap_tree(alice.home / rel) == before, f"{rel} was touched"
    scene.told(alice, "~/wirt/info/vm/web/status.xml", "cannot write the status")
    for vm in ("db", "app"):
        status = alice.home / "wirt/info/vm" / vm / "status.xml"
        assert status.is_file() and not status.is_symlink(), vm
        assert b"<last-command" in status.read_bytes()
    leftovers = sorted(p.name for p in (alice.home / "wirt/info/vm/app").iterdir())
    assert leftovers == [".status.xml.new", ".status.xml.new-2", "status.xml"]


def test_history_prefilled_with_the_names_the_tool_will_choose(scene: Scene) -> None:
    alice = scene.alice
    when = calendar.timegm((2027, 1, 1, 0, 0, 0)) + random.randrange(365 * 86400)
    stamp = history_stamp(when * 10**9)
    history = alice.home / "wirt/logs/history"
    web, db = f"{stamp}-web-autostart", f"{stamp}-db-autostart"
    canary = scene.canaries["etc-canary"]
    alice.run(
        'cd wirt/logs/history && echo mine > "$1" && ln -s "$2" "$1-2" && mkdir "$1-3"'
        ' && echo also-mine > "$1-3/x" && mkfifo "$3" && ln -s ../vm/web.log "$3-2"',
        web, str(canary), db)
    before = snap_tree(history)
    alice.write("wirt/service/vm/web/autostart", "--disable", mtime=1_000_000)
    alice.write("wirt/service/vm/db/autostart", "", mtime=1_000_000)

    frozen = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when))
    scene.run(env={**scene.frozen_clock(frozen), "TZ": "UTC"})

    scene.check_no_escape()
    for rel, entry in before.items():
        if rel != ".":
            assert snap(history / rel) == entry, f"history/{rel} was touched"
    new = sorted(set(p.name for p in history.iterdir()) - set(before["."].data))  # type: ignore
    assert new == [f"{db}-3", f"{web}-4"], new
    for name, content in ((f"{web}-4", b"--disable"), (f"{db}-3", b"")):
        entry = history / name
        assert entry.is_file() and not entry.is_symlink()
        assert entry.read_bytes() == content and entry.stat().st_uid == alice.uid
        scene.told(alice, f"kept as ~/wirt/logs/history/{name})", ": done")
