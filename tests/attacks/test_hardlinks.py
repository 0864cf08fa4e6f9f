"""SECURITY row 3: a command file that is a hard link to a root-owned or another user's file.

Precedent: vixie-cron (CVE-2007-1856).  With fs.protected_hardlinks=1 the
kernel stops alice from linking files she cannot write; then the test makes
the link AS ROOT to simulate a host where such a link exists (an older
kernel, a restored backup) and says so.  Bob's group-writable file she can
link herself.  Every such file is rejected, with the owner or link count in
alice's log, and never opened.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .kit import Scene

pytestmark = pytest.mark.attack


def link_as_alice_or_root(scene: Scene, source: Path, rel: str) -> str:
    """Alice tries the link; if the kernel refuses, root makes it (a simulation)."""
    dest = scene.alice.home / rel
    tried = scene.alice.run('ln "$1" "$2"', str(source), str(dest), check=False)
    how = "alice"
    if tried.returncode != 0:
        os.link(source, dest)
        how = "root (simulated: the kernel refused alice)"
    scene.plant(dest)
    return how


def test_hard_links(scene: Scene) -> None:
    alice, bob = scene.alice, scene.bob
    scene.alice.run("mkdir -p wirt/service/vm/web wirt/service/vm/db")
    made = {
        "etc": link_as_alice_or_root(scene, scene.canaries["etc-canary"],
                                     "wirt/service/vm/web/autostart"),
        "root": link_as_alice_or_root(scene, scene.canaries["root-canary"],
                                      "wirt/service/vm/web/start"),
        "bob": link_as_alice_or_root(scene, bob.home / "wirt/service/vm/web/autostart",
                                     "wirt/service/vm/db/autostart"),
    }
    # her own file under a second name: the kernel allows it, wirt must not
    alice.run("ln private/precious wirt/service/vm/web/reboot")
    print(f"links made by: {made}")
    assert made["bob"] == "alice"  # group-writable: protected_hardlinks lets her

    scene.run()

    scene.check_no_escape()
    by_file = {(r["vm"], r["file"]): r for r in scene.commands()}
    assert {k: r["outcome"] for k, r in by_file.items()} == {
        ("web", "autostart"): "rejected", ("web", "start"): "rejected",
        ("db", "autostart"): "rejected", ("web", "reboot"): "rejected",
    }
    scene.told(alice, "~/wirt/service/vm/web/autostart", "owned by uid 0", "rejected")
    scene.told(alice, "~/wirt/service/vm/web/start", "owned by uid 0", "rejected")
    scene.told(alice, "~/wirt/service/vm/db/autostart", f"owned by uid {bob.uid}", "rejected")
    scene.told(alice, "~/wirt/service/vm/web/reboot", "2 hard links", "rejected")
    # the canaries' contents were never copied anywhere alice can read
    for line in scene.logs(alice):
        assert "canary" not in line
