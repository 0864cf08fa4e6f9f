"""A domain handed to a member's VM folder by its owner metadata (SPEC 4, issue 15 item 2).

``<wirt:owner vm="box">alice</wirt:owner>``: alice's folder ``box`` drives that
domain whatever it is called; ``wirt admin assign DOMAIN USER --as VM`` writes it
and warns when no folder of the user's reaches the domain.  The pass finds such
domains through its owner index (wirt_wrapper.root.owners) and checks the
metadata fresh when it acts (the stale-index attack: tests/attacks/test_owner_index.py).

The real executables throughout; the ambiguity cases on libvirt's test driver
(each pass reads the host file again), assign-and-drive on qemu:///system, which
keeps what ``wirt admin assign`` wrote between processes.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest
from conftest import BIN, Host, User, owner_meta

WIRT = str(BIN / "wirt")


def host_file(host: Host, domains: dict[str, str]) -> None:
    """A test-driver host file with these domains ({name: metadata XML or ''})."""
    host.write_config({})
    body = "".join(
        f"<domain type='test'><name>{name}</name><memory>65536</memory>{meta}"
        "<os><type>hvm</type></os></domain>" for name, meta in domains.items())
    (host.root / "etc" / "host.xml").write_text(f"<node>{body}</node>")


def outcome(host: Host, user: User, vm: str) -> dict[str, Any]:
    """The audit record of *user*'s latest command in VM folder *vm*."""
    return [r for r in host.commands() if r["user"] == user.name and r["vm"] == vm][-1]


def test_two_domains_for_one_folder_are_ambiguous(host: Host) -> None:
    """alice-box exists and other-box is assigned to alice's box: neither is driven."""
    alice = host.add_user("alice")
    named, assigned = f"{alice.name}-box", f"{host.prefix}other-box"
    host_file(host, {named: "", assigned: owner_meta(alice.name, "box")})
    alice.write("wirt/service/vm/box/autostart")
    host.run()
    record = outcome(host, alice, "box")
    assert record["outcome"] == "rejected", record
    reason = str(record["reason"])
    assert "VM folder 'box' is ambiguous" in reason
    assert f"'{assigned}'" in reason and f"'{named}'" in reason
    assert f"wirt admin assign {named} {alice.name} --as OTHER" in reason
    log = alice.vm_log("box")
    assert "autostart: rejected: " in log and "ambiguous" in log
    status = alice.status("box")
    assert "ambiguous" in status and assigned in status


def test_two_domains_assigned_to_one_folder_are_ambiguous(host: Host) -> None:
    alice = host.add_user("alice")
    one, two = f"{host.prefix}one", f"{host.prefix}two"
    host_file(host, {one: owner_meta(alice.name, "box"), two: owner_meta(alice.name, "box")})
    alice.write("wirt/service/vm/box/autostart")
    host.run()
    record = outcome(host, alice, "box")
    assert record["outcome"] == "rejected", record
    assert f"the domains '{one}', '{two}' are all assigned to {alice.name}'s folder 'box'" \
        in str(record["reason"])


def test_the_named_domain_of_someone_else_does_not_compete(host: Host) -> None:
    """alice-box is bob's (metadata): alice's box means the domain assigned to it."""
    alice, bob = host.add_user("alice"), host.add_user("bob")
    assigned = f"{host.prefix}other-box"
    host_file(host, {f"{alice.name}-box": owner_meta(bob.name),
                     assigned: owner_meta(alice.name, "box")})
    alice.write("wirt/service/vm/box/autostart")
    host.run()
    record = outcome(host, alice, "box")
    assert (record["outcome"], record["domain"]) == ("done", assigned), record
    # and the index remembers the assignment, by UUID (the test driver makes new ones
    # each pass: here only the shape counts)
    index = json.loads((host.root / "state" / "owners.json").read_text())
    assert sorted(map(tuple, index["owners"].values())) == [
        (alice.name, "box"), (bob.name, None)]


def test_a_folder_named_in_the_metadata_is_the_only_one(host: Host) -> None:
    """alice-box assigned to alice's folder 'web': 'box' no longer drives it."""
    alice = host.add_user("alice")
    host_file(host, {f"{alice.name}-box": owner_meta(alice.name, "web")})
    alice.write("wirt/service/vm/box/autostart")
    alice.write("wirt/service/vm/web/autostart")
    host.run()
    assert outcome(host, alice, "web")["outcome"] == "done"
    record = outcome(host, alice, "box")
    assert record["outcome"] == "rejected"
    assert "is assigned to your VM folder 'web' (libvirt owner metadata), not to 'box'" in \
        str(record["reason"])


# -- wirt admin assign --as on qemu:///system -------------------------------------------
@pytest.fixture
def handed(host: Host) -> Iterator[tuple[Host, User, User, User, Any]]:
    """other-box on qemu:///system (never booted, no owner yet); alice, bob and 'other'
    (whose folder 'box' would name other-box by its name) in the group."""
    alice, bob, other = host.add_user("alice"), host.add_user("bob"), host.add_user("other")
    host.uri = "qemu:///system"
    host.write_config()
    conn = libvirt.open("qemu:///system")
    dom = conn.defineXML(
        f"<domain type='qemu'><name>{other.name}-box</name><uuid>{uuid.uuid4()}</uuid>"
        "<memory unit='MiB'>32</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>")
    try:
        yield host, alice, bob, other, dom
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        conn.close()


def admin(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WIRT, "admin", *args, "--config", str(host.config)],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})


@pytest.mark.realvm
def test_assign_as_a_folder_then_the_member_drives_it(
        handed: tuple[Host, User, User, User, Any]) -> None:
    host, alice, bob, other, dom = handed
    domain = dom.name()
    host.run()  # alice has no folder yet: the pass records none
    proc = admin(host, "assign", domain, alice.name)
    assert proc.returncode == 0, proc.stderr
    assert (f"wirt: warning: no VM folder of {alice.name}'s reaches '{domain}' by its name "
            f"(their folders drive the domains named {alice.name}-VM); give it a folder: "
            f"wirt admin assign {domain} {alice.name} --as VM") in proc.stderr
    proc = admin(host, "assign", domain, alice.name, "--as", "box")
    assert proc.returncode == 0, proc.stderr
    assert f"{domain}: assigned to {alice.name}'s VM folder 'box'" in proc.stdout
    assert (f"wirt: warning: {alice.name} has no VM folder 'box' yet as of the last pass "
            "(they create it with: wirt create box)") in proc.stderr
    assert "vm=\"box\"" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    proc = admin(host, "assign", domain, alice.name, "--as", "../x")
    assert proc.returncode == 64 and "--as: VM folder name '../x' is not allowed" in proc.stderr

    alice.write("wirt/service/vm/box/status")
    host.run()
    proc = admin(host, "assign", domain, alice.name, "--as", "box")
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr

    alice.write("wirt/service/vm/box/start")
    other.write("wirt/service/vm/box/autostart")  # names other-box by its name
    bob.write("wirt/service/vm/box/autostart")
    host.run()
    record = outcome(host, alice, "box")
    assert (record["action"], record["outcome"], record["domain"]) == (
        "start", "done", domain), record
    assert dom.isActive()
    assert f"<domain>{domain}</domain>" in alice.status("box")
    theirs = outcome(host, other, "box")
    assert theirs["outcome"] == "rejected" and "assigned to another user" in str(
        theirs["reason"])
    bobs = outcome(host, bob, "box")
    assert bobs["outcome"] == "failed" and f"no domain named '{bob.name}-box'" in str(
        bobs["reason"])
    assert not dom.autostart()
