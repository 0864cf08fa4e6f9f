"""SECURITY row 7: acting on another user's VM.

Precedent: confused-deputy bugs in root tools that trust user-supplied
identifiers.  Collisions between users ``a`` and ``a-b`` (the domain
``a-b-c`` could be either's), the libvirt owner metadata, and name tricks:
look-alike letters, a trailing newline, very long names.  Domains live on the
real libvirtd; each attack aims at a domain whose autostart flag the attack
would flip, so its state after the pass is the proof.
"""

from __future__ import annotations

import os

import pytest
from conftest import Host, User

from .conftest import RealDomains
from .kit import Scene

pytestmark = pytest.mark.attack


def commands(host: Host) -> dict[tuple[str, str], dict[str, object]]:
    import json

    records = [json.loads(line) for line in host.audit.read_text().splitlines()]
    return {(r["user"], r["vm"]): r for r in records if r["event"] == "command"}


def log(user: User, vm: str) -> str:
    return user.vm_log(vm)


def test_collision_between_a_and_a_b(host: Host, real_domains: RealDomains) -> None:
    a, ab = host.add_user("a"), host.add_user("a-b")
    p = host.prefix
    assert (a.name, ab.name) == (f"{p}a", f"{p}a-b")
    real_domains.define(f"{p}a-b-c")  # a's VM b-c, or a-b's VM c: nobody may
    real_domains.define(f"{p}a-b-d", owner=ab.name, autostart=True)  # a-b's by metadata
    real_domains.define(f"{p}a-b-e", owner=a.name)  # a's by metadata
    real_domains.define(f"{p}a-x")  # a's by name, no collision: the control
    a.write("wirt/service/vm/b-c/autostart")
    ab.write("wirt/service/vm/c/autostart")
    a.write("wirt/service/vm/b-d/autostart", "--disable")  # a against a-b's domain
    ab.write("wirt/service/vm/e/autostart")  # a-b against a's domain
    a.write("wirt/service/vm/x/autostart")

    host.run()

    assert real_domains.autostart(f"{p}a-b-c") is False
    assert real_domains.autostart(f"{p}a-b-d") is True
    assert real_domains.autostart(f"{p}a-b-e") is False
    assert real_domains.autostart(f"{p}a-x") is True
    got = {k: (r["domain"], r["outcome"]) for k, r in commands(host).items()}
    assert got == {
        (a.name, "b-c"): (f"{p}a-b-c", "rejected"), (ab.name, "c"): (f"{p}a-b-c", "rejected"),
        (a.name, "b-d"): (f"{p}a-b-d", "rejected"), (ab.name, "e"): (f"{p}a-b-e", "rejected"),
        (a.name, "x"): (f"{p}a-x", "done"),
    }
    assert "ambiguous" in log(a, "b-c") and f"user '{ab.name}' VM 'c'" in log(a, "b-c")
    assert "ambiguous" in log(ab, "c") and f"user '{a.name}' VM 'b-c'" in log(ab, "c")
    assert "assigned to another user" in log(a, "b-d")
    assert "assigned to another user" in log(ab, "e")
    for user, vm in ((a, "b-c"), (ab, "c"), (a, "b-d"), (ab, "e")):
        assert "<problem kind=\"not-yours\"" in user.status(vm), (user.name, vm)


NAME_TRICKS = {
    "w\u0435b": "Cyrillic e",
    "\u0430lice": "Cyrillic a",
    "\uff57\uff45\uff42": "fullwidth",
    "web\n": "trailing newline",
    "web ": "trailing blank",
    "-web": "leading dash",
    "x" * 64: "64 characters",
    "x" * 200: "200 characters",
    os.fsdecode(b"web\xff"): "not UTF-8",
}


def test_name_tricks_and_metadata_owner(scene: Scene, real_domains: RealDomains) -> None:
    alice, bob = scene.alice, scene.bob
    real_domains.define(f"{alice.name}-web", owner=bob.name)  # assigned to bob by the admin
    real_domains.define(f"{bob.name}-web")
    real_domains.define(f"{alice.name}-" + "y" * 63)  # the longest name that is allowed
    for name in NAME_TRICKS:
        alice.run('mkdir -p "wirt/service/vm/$1" && : > "wirt/service/vm/$1/autostart"', name)
    alice.write("wirt/service/vm/.web/autostart")  # hidden: ignored without a word
    alice.write("wirt/service/vm/web/autostart")
    alice.write("wirt/service/vm/" + "y" * 63 + "/autostart")
    alice.write("wirt/service/vm/" + "z" * 63 + "/autostart")  # no such domain

    scene.run()

    scene.check_no_escape()
    assert real_domains.autostart(f"{alice.name}-web") is False
    assert real_domains.autostart(f"{bob.name}-web") is False
    assert real_domains.autostart(f"{alice.name}-" + "y" * 63) is True
    got = {r["vm"]: r["outcome"] for r in scene.commands()}
    assert got == {"web": "rejected", "y" * 63: "done", "z" * 63: "failed"}
    scene.told(alice, "web autostart", "assigned to another user", "rejected")
    scene.told(alice, "z" * 63, f"no domain named '{alice.name}-{'z' * 63}'")
    for name, trick in NAME_TRICKS.items():
        shown = name.encode("ascii", "backslashreplace").decode()
        shown = shown.replace("\n", "\\x0a")[:40]
        scene.told(alice, f"VM folder name '{shown}", "is not allowed")
        assert (alice.home / "wirt/service/vm" / name / "autostart").exists(), trick
    assert (alice.home / "wirt/service/vm/.web/autostart").exists()
    assert not any(".web" in line for line in scene.logs(alice))
