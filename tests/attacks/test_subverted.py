"""SECURITY row 19: a subverted user side (a bug in the code that reads hostile files).

Precedent: OpenSSH's monitor checks each request's type *and* the state it
arrives in (``MON_ONCE``).  The user side here is a stand-in: a driver
script replaces ``user_main`` for the attacker only, before the real pass
forks anything, so the attacker's child (dropped to alice for good, as in
production) speaks whatever it likes on the real channel; everything else
is the real pass: real users, PAM, the spawner, root's monitor, libvirtd
with real domains.  The victim of a whole-pass crash is bob, another member
whose command must still run.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import Host

from .conftest import RealDomains
from .kit import stand_in_pass

pytestmark = pytest.mark.attack

# The attacker's user side: what each test sends on the real channel.
EVIL = r'''
def evil(chan, how):
    if how == "deep":
        frame(chan, b"[" * 4096)
        chan.sock.recv(1)
    elif how == "no-dry-flag":  # in a --dry-run pass, ask as if it were a real one
        ask(chan, {"op": "inventory", "layout": "wirt", "vms": ["web"]})
        reply = ask(chan, {"op": "intend", "layout": "wirt", "vm": "web", "file": "autostart",
                           "ino": 1, "action": "autostart", "tokens": [],
                           "hist": "20261201-000000.000000-web-autostart"})
        ask(chan, {"op": "run", "id": reply.get("id", "guess-1")})
    elif how == "snapshot-name":  # SPEC 11: a name the user side would have refused
        ask(chan, {"op": "inventory", "layout": "wirt", "vms": ["web"]})
        forged = [["--name", "../../BOB-web"], ["--name", "x", "--domain", "BOB-web"],
                  ["--name", "qemu:///system"], ["--name", "a" * 33]]
        for index, tokens in enumerate(forged):
            reply = ask(chan, {"op": "intend", "layout": "wirt", "vm": "web",
                               "file": "snapshot", "ino": 10 + index, "action": "snapshot",
                               "tokens": tokens,
                               "hist": f"20261201-00000{index}.000000-web-snapshot"})
            ask(chan, {"op": "run", "id": reply["id"]})
    elif how == "notices-again":
        items = [{"layout": "wirt", "key": f"entry:n{i}", "message": f"n{i} ignored"}
                 for i in range(1000)]
        for _ in range(5):
            ask(chan, {"op": "notices", "items": items})
'''


def attack(host: Host, how: str, attacker: str, *args: str) -> subprocess.CompletedProcess[str]:
    return stand_in_pass(host.config, attacker, EVIL, how, *args)


def setup(host: Host, real_domains: RealDomains) -> tuple[str, str]:
    alice, bob = host.add_user("alice"), host.add_user("bob")
    for user in (alice, bob):
        real_domains.define(f"{user.name}-web")
        user.write("wirt/service/vm/web/autostart")
    return alice.name, bob.name


def events(host: Host, event: str) -> list[dict[str, object]]:
    return [r for r in host.audit_records() if r["event"] == event]


def test_deep_json_ends_only_the_attackers_turn(host: Host, real_domains: RealDomains) -> None:
    """Before: json.loads raised RecursionError, uncaught: the pass died (exit 1) and bob's
    command never ran."""
    alice, bob = setup(host, real_domains)
    proc = attack(host, "deep", alice)
    assert proc.returncode == 0, proc.stderr
    assert real_domains.autostart(f"{bob}-web")  # the other member was served
    assert not real_domains.autostart(f"{alice}-web")
    (incomplete,) = events(host, "user-incomplete")
    assert incomplete["user"] == alice and "deeper than" in str(incomplete["reason"])


def test_a_dry_run_is_roots_decision(host: Host, real_domains: RealDomains) -> None:
    """Before: a user side that left out 'dry' got a command id and a real setAutostart in
    a --dry-run pass."""
    alice, bob = setup(host, real_domains)
    proc = attack(host, "no-dry-flag", alice, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert not real_domains.autostart(f"{alice}-web")
    assert not real_domains.autostart(f"{bob}-web")  # a dry run changes nothing at all
    assert "would run autostart" in proc.stdout


def test_notices_once_per_turn(host: Host, real_domains: RealDomains) -> None:
    """Before: each repeated 'notices' wrote up to 1,000 audit records again (5,000 here)."""
    alice, bob = setup(host, real_domains)
    proc = attack(host, "notices-again", alice)
    assert proc.returncode == 0, proc.stderr
    notices = [r for r in events(host, "notice") if r["user"] == alice]
    print(f"\nnotice records from one turn of 5 x 1,000 notices: {len(notices)}")
    assert len(notices) <= 21
    assert any(r.get("count") for r in notices)
    (incomplete,) = events(host, "user-incomplete")
    assert "after 'notices'" in str(incomplete["reason"])
    assert real_domains.autostart(f"{bob}-web")
    assert json.loads(json.dumps(notices))  # plain JSON records


def test_forged_snapshot_names_are_rejected_by_root(host: Host,
                                                    real_domains: RealDomains) -> None:
    """SPEC 11: root holds a snapshot's name to the table's pattern itself; a subverted
    user side's name never reaches libvirt (a rejection, not a libvirt failure)."""
    alice, bob = setup(host, real_domains)
    proc = attack(host, "snapshot-name", alice)
    assert proc.returncode == 0, proc.stderr
    mine = [r for r in events(host, "command") if r["user"] == alice]
    assert [r["outcome"] for r in mine] == ["rejected"] * 4, mine
    reasons = [str(r["reason"]) for r in mine]
    assert "'../../BOB-web' is not a valid value of '--name'" in reasons[0]
    assert "'--domain' is not accepted by 'snapshot'" in reasons[1]
    assert "'qemu:///system' is not a valid value" in reasons[2]
    assert "at most 32" in reasons[3]
    assert real_domains.autostart(f"{bob}-web")  # the other member was served
