"""SECURITY row 1: a symbolic link at every component of every path the tool uses.

Precedent: nginx log folder (CVE-2016-1247), systemd-tmpfiles (CVE-2018-6954).
Each component is replaced by a link to /etc/shadow or root's canaries, to
/root or /etc, to the same place in bob's group-writable tree, and to
alice's own private files (which the kernel would NOT protect: only
O_NOFOLLOW does).  One pass as root each time; nothing may escape, the link
itself stays (nothing of alice's is deleted) and alice is told why.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .kit import Scene, snap

pytestmark = pytest.mark.attack

WEB = "wirt/service/vm/web"
# component -> (what it is, where alice's test command goes, what happens to it,
#               where the message is: "log" alice's own logs, "audit" root's only)
COMPONENTS = {
    "wirt": ("dir", None, "pending", "audit"),
    "wirt/service": ("dir", None, "pending", "log"),
    "wirt/service/vm": ("dir", None, "pending", "log"),
    WEB: ("dir", "wirt/service/vm/db/autostart", "done", "log"),
    f"{WEB}/autostart": ("file", None, "rejected", "log"),
    "wirt/logs": ("dir", f"{WEB}/autostart", "pending", "audit"),
    "wirt/logs/vm": ("dir", f"{WEB}/autostart", "done", "log"),
    "wirt/logs/history": ("dir", f"{WEB}/autostart", "pending", "log"),
    "wirt/info": ("dir", f"{WEB}/autostart", "done", "log"),
    "wirt/info/vm": ("dir", f"{WEB}/autostart", "done", "log"),
    "wirt/info/vm/web": ("dir", f"{WEB}/autostart", "done", "log"),
    "wirt/logs/vm/web.log": ("file", f"{WEB}/autostart", "done", "log"),
    "wirt/logs/wirt.log": ("file", f"{WEB}/autostart", "done", "audit"),
    "wirt/info/vm/web/status.xml": ("file", f"{WEB}/autostart", "done", "none"),
}


def targets(scene: Scene, component: str, kind: str) -> dict[str, Path]:
    bob_side = scene.bob.home / component
    if kind == "dir":
        return {"/root": Path("/root"), "/etc": Path("/etc"), "bob": bob_side,
                "own": scene.alice.home / "private"}
    return {"/etc/shadow": Path("/etc/shadow"), "etc-canary": scene.canaries["etc-canary"],
            "root-canary": scene.canaries["root-canary"], "bob": bob_side,
            "own": scene.canaries["own-precious"]}


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_symlink_at_every_component(scene: Scene, component: str) -> None:
    kind, command, outcome, told = COMPONENTS[component]
    alice = scene.alice
    assert (scene.bob.home / component).exists()  # the bob-side target is real
    for label, target in targets(scene, component, kind).items():
        scene.reset_alice()
        scene.fresh_state()
        alice.run('rm -rf "$1" && ln -s "$2" "$1"', component, str(target))
        if command:
            alice.write(command)
        if component == "wirt/logs/wirt.log":
            alice.run("mkdir 'wirt/service/vm/bad name'")  # something to report there
        link_before = snap(alice.home / component)

        scene.run()

        where = f"{label} <- ~/{component}"
        scene.check_no_escape()
        scene.check_alice_owns_her_tree()
        outcomes = [(r["vm"], r["file"], r["outcome"]) for r in scene.commands()]
        if component == "wirt/info/vm/web/status.xml":
            # the tool's own output: replaced by a fresh file, the link's target untouched
            status = alice.home / component
            assert status.is_file() and not status.is_symlink(), where
            assert b"<status" in status.read_bytes(), where
        elif outcome != "rejected":  # a rejected command file moves to history, as it is
            assert snap(alice.home / component) == link_before, f"{where}: link changed"
        if outcome == "pending":
            assert outcomes == [], where
            if command:
                assert (alice.home / command).is_file(), f"{where}: command lost"
        else:
            vm, file = Path(command or component).parent.name, Path(command or component).name
            assert outcomes == [(vm, file, outcome)], where
        shown = "~/" + component
        rule = "symbolic link"
        if told == "log":
            scene.told(alice, shown if component != "wirt/logs/vm/web.log" else "web.log", rule)
        elif told == "audit":
            scene.audit_notice(shown if component != "wirt/logs/wirt.log" else "bad name")
        if outcome == "rejected":
            scene.told(alice, shown, rule, "rejected")
            (history,) = (alice.home / "wirt/logs/history").iterdir()
            assert history.is_symlink() and history.readlink() == target, where
