"""SECURITY row 7: a stale owner index never lets a member act on a domain not theirs.

The pass maps a VM folder to the domain assigned to it through root's owner
index (state_dir/owners.json), which reads a domain's metadata only when the
domain is new (and once a day).  The admin then gives the domain to bob by hand
(``virsh metadata``-style, not through ``wirt admin``): the index still says
alice's folder ``box``.  alice's commands from ``box`` must be refused by the
owner check that reads the metadata fresh at act time, and the domain left as it
was.  The same when the metadata is removed altogether (then only its name could
make it alice's, and it is not named for her).  Real executable, real users,
qemu:///system (it keeps metadata between passes).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest
from conftest import OWNER_NS, Host, User, owner_meta

pytestmark = [pytest.mark.attack, pytest.mark.realvm]



@pytest.fixture
def assigned(host: Host) -> Iterator[tuple[Host, User, User, Any]]:
    """A domain named for nobody, assigned to alice's folder 'box' by its metadata."""
    alice, bob = host.add_user("alice"), host.add_user("bob")
    host.uri = "qemu:///system"
    host.write_config()
    conn = libvirt.open("qemu:///system")
    dom = conn.defineXML(
        f"<domain type='qemu'><name>{host.prefix}handed</name><uuid>{uuid.uuid4()}</uuid>"
        "<memory unit='MiB'>32</memory><vcpu>1</vcpu>"
        f"{owner_meta(alice.name, 'box')}"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>")
    try:
        yield host, alice, bob, dom
    finally:
        dom.setAutostart(0)
        dom.undefine()
        conn.close()


def index_of(host: Host, dom: Any) -> Any:
    return json.loads((host.root / "state" / "owners.json").read_text())["owners"].get(
        dom.UUIDString())


def latest(host: Host, user: User) -> dict[str, Any]:
    return [r for r in host.commands() if r["user"] == user.name][-1]


def test_a_stale_index_cannot_hand_over_a_domain(assigned: tuple[Host, User, User, Any]
                                                 ) -> None:
    host, alice, bob, dom = assigned
    alice.write("wirt/service/vm/box/autostart")
    host.run()
    assert latest(host, alice)["outcome"] == "done" and dom.autostart()  # hers, for now
    assert index_of(host, dom) == [alice.name, "box"]
    dom.setAutostart(0)

    # the admin gives it to bob by hand: the index is not told
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, f"<owner>{bob.name}</owner>", "wirt",
                    OWNER_NS, flags)
    alice.write("wirt/service/vm/box/autostart")
    host.run()
    assert index_of(host, dom) == [alice.name, "box"]  # still stale: seen already
    record = latest(host, alice)
    assert (record["outcome"], record["domain"]) == ("rejected", dom.name()), record
    assert "is assigned to another user (libvirt owner metadata)" in str(record["reason"])
    assert not dom.autostart()
    assert "autostart: rejected: " in alice.vm_log("box")

    # no owner metadata at all: not named for alice either, so still not hers
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, None, None, OWNER_NS, flags)
    alice.write("wirt/service/vm/box/autostart")
    host.run()
    record = latest(host, alice)
    assert record["outcome"] == "rejected", record
    assert f"domain '{dom.name()}' is not assigned to you (it has no owner metadata now)" in \
        str(record["reason"])
    assert not dom.autostart()
