"""SECURITY row 5: another group member writes into a group-writable spool.

Precedent: the legacy README told users to make their spools group-writable,
so any member could drop commands into anyone's spool.  Bob (a member) writes
command files (readable and unreadable ones), a whole VM folder and a log
file into alice's group-writable spool.  Alice's domain lives on the real
libvirtd, so its state after the pass is the proof.
"""

from __future__ import annotations

import pytest

from .conftest import RealDomains
from .kit import Scene

pytestmark = pytest.mark.attack

WEB = "wirt/service/vm/web"


def test_group_member_writes_into_a_group_writable_spool(scene: Scene,
                                                         real_domains: RealDomains) -> None:
    alice, bob = scene.alice, scene.bob
    real_domains.define(f"{alice.name}-web")
    real_domains.define(f"{bob.name}-web")
    alice.run(f"chgrp -R {scene.host.group} wirt && chmod -R g+rwX wirt"
              " && find wirt -type d -exec chmod g+s {} +")
    intruded = [f"{WEB}/autostart", f"{WEB}/start", "wirt/service/vm/evil",
                "wirt/service/vm/evil/autostart", "wirt/logs/vm/db.log"]
    bob.run('cd "$1" && umask 022 && : > "$2" && umask 077 && printf -- --paused > "$3"'
            ' && mkdir "$4" && : > "$5" && : > "$6"', str(alice.home), *intruded)
    for rel in intruded:
        scene.plant(alice.home / rel)
    alice.write("wirt/service/vm/db/status")  # alice's own command, for the db log

    scene.run()

    scene.check_no_escape()
    assert real_domains.autostart(f"{alice.name}-web") is False
    assert real_domains.autostart(f"{bob.name}-web") is False
    outcomes = {(r["vm"], r["file"]): (r["outcome"], r["reason"]) for r in scene.commands()}
    assert set(outcomes) == {("web", "autostart"), ("web", "start"), ("db", "status")}
    for file in ("autostart", "start"):
        outcome, reason = outcomes[("web", file)]
        assert outcome == "rejected" and f"owned by uid {bob.uid}" in reason
        scene.told(alice, f"~/{WEB}/{file}", f"owned by uid {bob.uid}", "another user",
                   "rejected")
    scene.told(alice, "~/wirt/service/vm/evil", f"owned by uid {bob.uid}")
    assert (alice.home / "wirt/service/vm/evil/autostart").exists()  # not alice's to move
    assert (alice.home / "wirt/logs/vm/db.log").read_bytes() == b""  # bob's file, unwritten
    scene.told(alice, "~/wirt/logs/vm/db.log", "cannot write the log of VM 'db'",
               f"owned by uid {bob.uid}")

    # control: alice's own command in the same folder does reach libvirt
    alice.write(f"{WEB}/autostart")
    scene.run()
    assert real_domains.autostart(f"{alice.name}-web") is True
