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
