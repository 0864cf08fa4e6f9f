"""Fixtures for the attack suite: an attacker, a victim, canaries, real libvirtd domains."""

from __future__ import annotations

from collections.abc import Iterator

import libvirt
import pytest
from conftest import Host

from .kit import Scene

OWNER_NS = "http://wirt.weimarnetz.de/xmlns/owner/1"


@pytest.fixture
def scene(host: Host) -> Iterator[Scene]:
    alice = host.add_user("alice")
    bob = host.add_user("bob")
    host.extra_config = "[limits]\nseconds_per_user = 20\n"
    host.write_config({f"{alice.name}-web": None, f"{alice.name}-db": None,
                       f"{bob.name}-web": None})
    made = Scene(host, alice, bob)
    try:
        made.prepare()
        made.reset_alice()
        yield made
    finally:
        made.cleanup()


class RealDomains:
    """Domains defined (never started) on the real libvirtd, so their state outlives a pass."""

    def __init__(self) -> None:
        self.conn = libvirt.open("qemu:///system")
        self.names: list[str] = []

    def define(self, name: str, owner: str | None = None, autostart: bool = False) -> None:
        meta = (f"<metadata><wirt:owner xmlns:wirt='{OWNER_NS}'>{owner}</wirt:owner>"
                "</metadata>") if owner else ""
        self.conn.defineXML(
            f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>"
            f"<vcpu>1</vcpu>{meta}<os><type arch='x86_64'>hvm</type></os></domain>"
        )
        self.names.append(name)
        if autostart:
            self.conn.lookupByName(name).setAutostart(1)

    def autostart(self, name: str) -> bool:
        return bool(self.conn.lookupByName(name).autostart())

    def close(self) -> None:
        for name in self.names:
            try:
                self.conn.lookupByName(name).undefine()
            except libvirt.libvirtError:
                pass
        self.conn.close()


@pytest.fixture
def real_domains(host: Host) -> Iterator[RealDomains]:
    """The scene's config pointed at qemu:///system; domains named with the test's prefix."""
    domains = RealDomains()
    host.uri = "qemu:///system"
    host.write_config()
    try:
        yield domains
    finally:
        domains.close()
