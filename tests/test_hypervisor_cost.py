"""The pass's libvirt cost follows the members' VMs, not the host's domain count (issue 13).

wirt_wrapper.root.hypervisor on libvirt's test driver (a private host file per
test): the snapshot is the cheap listings only, and a domain's XML is read only
when a member's VM folder names it.  The XML reads are counted by wrapping the
real ``virDomain.XMLDesc`` (the call still reaches libvirt; the count is the only
addition).  The same budget on the real libvirtd, timed: bench/bench_pass.py
--foreign 10000.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import libvirt
import pytest

from wirt_wrapper.root.hypervisor import Hypervisor

FOREIGN = 300


def domain(name: str, owner: str = "") -> str:
    meta = (f"<metadata><wirt:owner xmlns:wirt='http://wirt.weimarnetz.de/xmlns/owner/1'>"
            f"{owner}</wirt:owner></metadata>") if owner else ""
    return (f"<domain type='test'><name>{name}</name><memory>65536</memory>{meta}"
            "<os><type>hvm</type></os></domain>")


@pytest.fixture
def host(tmp_path: Path) -> str:
    node = tmp_path / "host.xml"
    node.write_text("<node>" + domain("alice-web") + domain("alice-db", "alice")
                    + "".join(domain(f"foreign-{i:04d}") for i in range(FOREIGN)) + "</node>")
    return f"test://{node}"


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the domains whose XML was asked of libvirt."""
    asked: list[str] = []
    real = libvirt.virDomain.XMLDesc

    def counted(self: libvirt.virDomain, flags: int = 0) -> Any:
        asked.append(self.name())
        return real(self, flags)

    monkeypatch.setattr(libvirt.virDomain, "XMLDesc", counted)
    return asked


def test_the_snapshot_reads_no_domain_xml(host: str, reads: list[str]) -> None:
    """Before: connect() started reading the XML of all 302 domains."""
    hv = Hypervisor(host, 10.0)
    hv.connect()
    try:
        assert hv.exists("alice-web") and hv.exists(f"foreign-{FOREIGN - 1:04d}")
        assert len(hv.uuids()) == FOREIGN + 2
        info = hv.info("alice-web")
        assert info is not None and info.state == "running" and info.owner is None
        db = hv.info("alice-db")
        assert db is not None and db.owner == "alice"
        assert hv.info("alice-nothing") is None
        assert sorted(set(reads)) == ["alice-db", "alice-web"]
    finally:
        hv.close()


def test_details_are_read_ahead_on_request(host: str, reads: list[str]) -> None:
    """request() reads on the libvirt thread; prefetch() then waits for it, once."""
    hv = Hypervisor(host, 10.0)
    hv.connect()
    try:
        hv.request(["alice-web", "foreign-0001", "no-such-domain"])
        names = ["alice-web", "foreign-0001"]
        hv.prefetch(names)
        assert hv.details_ready(names)
        # only these; twice each: live, and the definition of a running domain
        assert sorted(reads) == ["alice-web", "alice-web", "foreign-0001", "foreign-0001"]
        hv.prefetch(names)
        assert len(reads) == 4  # read once a pass
        # the persistent list is all but the transient ones: every test domain is persistent
        info = hv.info("alice-web")
        assert info is not None and info.persistent
    finally:
        hv.close()


# -- the details of qemu:///system's domains, kept between passes (details.json) ------
SYSTEM = "qemu:///system"


def system_domain(name: str, memory_mib: int = 32, uuid: str = "") -> str:
    uuid = f"<uuid>{uuid}</uuid>" if uuid else ""
    return (f"<domain type='qemu'><name>{name}</name>{uuid}<memory unit='MiB'>{memory_mib}"
            "</memory><os><type arch='x86_64'>hvm</type></os><devices><graphics type='vnc' "
            "autoport='yes' listen='127.0.0.1'/></devices></domain>")


@pytest.fixture
def system_dom() -> Any:
    """A shut-off domain of nobody's on the real libvirtd, undefined at the end."""
    try:
        conn = libvirt.open(SYSTEM)
    except libvirt.libvirtError:
        pytest.skip("no libvirtd at qemu:///system")
    name = f"wcost-{id(conn) % 100000:05d}"
    dom = conn.defineXML(system_domain(name))
    yield dom
    try:
        dom.undefine()
    except libvirt.libvirtError:
        pass
    conn.close()


def a_pass(cache: dict[str, list[Any]], name: str) -> Any:
    """What a pass's Hypervisor says of *name*, with root's details.json *cache*."""
    hv = Hypervisor(SYSTEM, 10.0)
    hv.details_cache = cache
    hv.connect()
    try:
        return hv.info(name)
    finally:
        hv.close()


def test_unchanged_details_are_not_read_again(system_dom: Any, reads: list[str]) -> None:
    """The next pass reads no XML of a domain whose status and definition files libvirt
    did not rewrite: the stamp (inode, mtime, size; id, state, reason) is the same."""
    cache: dict[str, list[Any]] = {}
    name = system_dom.name()
    first = a_pass(cache, name)
    assert reads == [name] and name in cache and first.memory_kib == 32 * 1024
    again = a_pass(cache, name)
    assert reads == [name], "the XML was read again though nothing changed"
    assert again == first


@pytest.mark.parametrize("change", ["memory", "owner", "redefined"])
def test_a_change_made_outside_wirt_is_read(system_dom: Any, reads: list[str],
                                            change: str) -> None:
    """The admin changes the definition behind wirt's back (virsh setmem --config,
    virsh metadata, virsh define): libvirt rewrites its file, the stamp changes, and
    the next pass reads the XML and shows the change."""
    cache: dict[str, list[Any]] = {}
    name = system_dom.name()
    assert a_pass(cache, name).owner is None
    if change == "memory":
        system_dom.setMemoryFlags(24 * 1024, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    elif change == "owner":
        system_dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, "<owner>alice</owner>",
                               "wirt", "http://wirt.weimarnetz.de/xmlns/owner/1",
                               libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    else:
        system_dom.connect().defineXML(system_domain(name, 64, system_dom.UUIDString()))
    after = a_pass(cache, name)
    assert reads == [name, name]
    seen = {"memory": after.memory_kib, "owner": after.owner, "redefined": after.memory_kib}
    assert seen[change] == {"memory": 24 * 1024, "owner": "alice",
                            "redefined": 64 * 1024}[change]


def test_a_damaged_cache_entry_is_read_again(system_dom: Any, reads: list[str]) -> None:
    """details.json is root's, but an entry that is not what wirt writes (an older
    version, a hand edit) only costs a read: never a wrong status."""
    cache: dict[str, list[Any]] = {}
    name = system_dom.name()
    a_pass(cache, name)
    cache[name][1]["memory_kib"] = "lots"
    assert a_pass(cache, name).memory_kib == 32 * 1024
    assert reads == [name, name]


def test_other_hosts_have_no_stamps(host: str) -> None:
    """Only the local system QEMU driver keeps the files the stamps are made of."""
    hv = Hypervisor(host, 10.0)
    hv.connect()
    try:
        hv.info("alice-web")
        assert hv.details_cache == {}
    finally:
        hv.close()
