"""SECURITY row 15: hostile settings files (`config`, SPEC 9) against the real executable.

Alice's domain lives on the real libvirtd (qemu:///system, defined from the
test guest with a SATA CD-ROM drive, never started), so its persistent XML
after the pass is the proof: byte-identical for every hostile file.  Each
file is refused as a whole, the refusal is in alice's VM log and in an audit
record (action ``config``, outcome ``rejected``), and the file itself is
neither moved nor rewritten (inode, mtime, content).  The ISO catalogue is a
root-owned 0755 folder under /var/tmp holding ``a.iso`` and a planted link
``x.iso -> /etc/shadow``.  The control at the end shows a good file does
change the domain.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest
from guest import realvm

from .conftest import RealDomains
from .kit import SHADOW, Scene, snap, snap_tree, stand_in_pass

pytestmark = pytest.mark.attack

WEB = "wirt/service/vm/web"
QUICK = 5.0  # seconds; a blocked open of a FIFO would hold the pass for the 20 s user limit
INACTIVE = libvirt.VIR_DOMAIN_XML_INACTIVE
CDROM = ("<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
         "<target dev='sdc' bus='sata'/><readonly/></disk>")
BOB_CONFIG = '{"memory_mib": 512, "cdrom": "a.iso"}\n'


@dataclass
class Settings:
    scene: Scene
    domains: RealDomains
    isos: Path

    def xml(self, domain: str) -> str:
        return str(self.domains.conn.lookupByName(domain).XMLDesc(INACTIVE))

    @property
    def alice_web(self) -> str:
        return f"{self.scene.alice.name}-web"

    @property
    def bob_web(self) -> str:
        return f"{self.scene.bob.name}-web"

    def configs(self) -> list[dict[str, Any]]:
        return [r for r in self.scene.commands() if r["action"] == "config"]


@pytest.fixture
def settings(scene: Scene, real_domains: RealDomains, guest_image: tuple[Path, Path],
             tmp_path: Path) -> Iterator[Settings]:
    host, alice, bob = scene.host, scene.alice, scene.bob
    isos = Path(tempfile.mkdtemp(prefix="wirt-isos-", dir="/var/tmp"))
    isos.chmod(0o755)
    (isos / "a.iso").write_bytes(b"\0" * 4096)
    (isos / "x.iso").symlink_to(SHADOW)
    host.extra_config += (f'[settings]\nmax_memory_mib = 1024\nmax_vcpus = 4\n'
                          f'iso_dir = "{isos}"\n')
    host.write_config()
    for user in (alice, bob):
        name = f"{user.name}-web"
        xml = realvm.domain_xml(name, *guest_image, tmp_path / f"{name}.console",
                                owner=user.name)
        real_domains.conn.defineXML(xml.replace("<devices>", f"<devices>\n    {CDROM}", 1))
        real_domains.names.append(name)
    # bob's own settings file, in his group-writable VM folder (a target for links)
    bob.run(f'printf %s "$1" > {WEB}/config && chmod g+rw {WEB}/config', BOB_CONFIG)
    scene.bob_before = snap_tree(bob.home)
    try:
        yield Settings(scene, real_domains, isos)
    finally:
        shutil.rmtree(isos)


def attack(settings: Settings, rule: str, words: tuple[str, ...] = ()) -> None:
    """One pass over alice's hostile config: refused, told, domain and file untouched."""
    scene, alice = settings.scene, settings.scene.alice
    config = alice.home / WEB / "config"
    before_xml = settings.xml(settings.alice_web)
    before_file = snap(config)
    bob_xml = settings.xml(settings.bob_web)

    done = scene.run()
    print(f"pass: {done.seconds:.2f} s")

    assert done.seconds < QUICK
    assert settings.xml(settings.alice_web) == before_xml
    assert settings.xml(settings.bob_web) == bob_xml
    assert snap(config) == before_file  # not moved, not rewritten (inode, mtime, content)
    records = settings.configs()
    assert len(records) == 1, records
    record = records[0]
    assert (record["user"], record["vm"], record["domain"], record["outcome"]) == (
        alice.name, "web", settings.alice_web, "rejected")
    assert rule in record["reason"], record["reason"]
    line = scene.told(alice, " web config", "rejected", rule, *words)
    print(f"told: {line[25:]}")
    assert "(file config, left in place)" in line
    scene.check_no_escape()
    assert not any(SHADOW.name in text and "root:" in text for text in scene.logs(alice))
    # the same file again: not applied again, not told again
    scene.run()
    assert len(settings.configs()) == 1
    assert settings.xml(settings.alice_web) == before_xml


HOSTILE = {
    "traversal": ('{"cdrom": "../../etc/shadow"}',
                  'cdrom: must be the name of an ISO in the catalogue'),
    "absolute": ('{"cdrom": "/etc/shadow"}', 'cdrom: must be the name of an ISO'),
    "catalogue-link": ('{"cdrom": "x.iso"}', "cdrom: 'x.iso' is not in the catalogue"),
    "not-in-catalogue": ('{"cdrom": "b.iso"}', "cdrom: 'b.iso' is not in the catalogue"),
    "deep": ('{"boot": ' + "[" * 40 + '"hd"' + "]" * 40 + "}", "nested deeper than 2 levels"),
    "duplicate": ('{"vcpus": 1, "vcpus": 2}', "key 'vcpus' is given twice"),
    "over-limit": ('{"memory_mib": 999999999}',
                   "999999999 is more than the limit of 1024 MiB per VM"),
    "huge": ('{"memory_mib": 1' + "0" * 4000 + "}",
             "100000000000... (a number of 4001 digits) is more than the limit of 1024 MiB"),
    "huge-negative": ('{"vcpus": -1' + "0" * 4000 + "}",
                      "must be at least 1, not -10000000000... (a number of 4001 digits)"),
    "huge-vcpus": ('{"vcpus": 123456789012345678901234567890}',
                   "is more than the limit of 4 per VM"),
    "float": ('{"vcpus": 2.0}', "2.0 is not a whole number"),
    "exponent": ('{"memory_mib": 1e3}', "1e3 is not a whole number"),
    "infinity": ('{"memory_mib": Infinity}', "Infinity is not a number JSON allows"),
    "nan": ('{"vcpus": NaN}', "NaN is not a number JSON allows"),
    "true": ('{"vcpus": true}', "vcpus: must be a whole number, not true"),
    "brackets": ("[" * 4096, "nested deeper than 2 levels"),
    "too-big": ("[" * 4097, "has 4097 bytes, more than the limit of 4096; a settings file "
                "holds one small JSON object"),
    "non-ascii": ('{"cdrom": "d\u00e9bian.iso"}', "byte 0xc3 at position 12 is not printable"),
    "control": ('{"cdrom": "a\x1b[2J.iso"}', "byte 0x1b at position 12 is not printable"),
    "unknown": ('{"colour": "red"}', "config: colour: is not a setting (known: memory_mib,"),
    "not-an-object": ('["hd"]', 'must be one JSON object, not ["hd"]'),
    "boot-twice": ('{"boot": ["hd", "hd"]}', "boot: names a device twice"),
    "below-minimum": ('{"memory_mib": 1}', "memory_mib: must be at least 64, not 1"),
    "negative": ('{"vcpus": -1}', "vcpus: must be at least 1, not -1"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_content(settings: Settings, case: str) -> None:
    content, rule = HOSTILE[case]
    settings.scene.alice.write(f"{WEB}/config", content)
    attack(settings, rule)
    if case == "catalogue-link":
        listed = (settings.scene.alice.home / "wirt/info/isos.txt").read_text().splitlines()
        assert listed[1:] == ["a.iso"]  # the link is not listed


def test_symlinked_config_to_shadow(settings: Settings) -> None:
    alice = settings.scene.alice
    alice.run(f"ln -s /etc/shadow {WEB}/config")
    attack(settings, "symbolic link")


def test_symlinked_config_to_another_users_config(settings: Settings) -> None:
    alice, bob = settings.scene.alice, settings.scene.bob
    alice.run(f'ln -s "$1" {WEB}/config', str(bob.home / WEB / "config"))
    attack(settings, "symbolic link")
    assert "<memory unit='KiB'>524288</memory>" not in settings.xml(settings.alice_web)


def test_hard_link_as_config(settings: Settings) -> None:
    alice = settings.scene.alice
    alice.write("notes/settings", '{"vcpus": 2}')
    alice.run(f"ln notes/settings {WEB}/config")
    attack(settings, "2 hard links")


def test_hard_link_to_another_users_config(settings: Settings) -> None:
    """Bob's config is group-writable: protected_hardlinks lets alice link it."""
    scene, alice, bob = settings.scene, settings.scene.alice, settings.scene.bob
    alice.run(f'ln "$1" {WEB}/config', str(bob.home / WEB / "config"))
    scene.plant(alice.home / WEB / "config")
    scene.bob_before = snap_tree(bob.home)  # the link count of bob's file went up
    attack(settings, f"owned by uid {bob.uid}")


def test_fifo_as_config(settings: Settings) -> None:
    alice = settings.scene.alice
    alice.run(f"mkfifo {WEB}/config")
    attack(settings, "FIFO")


def test_folder_as_config(settings: Settings) -> None:
    alice = settings.scene.alice
    alice.run(f"mkdir {WEB}/config")
    attack(settings, "folder")


def test_intruder_writes_config_into_a_group_writable_vm_folder(settings: Settings) -> None:
    """Alice (a member) writes `config` into bob's group-writable VM folder: bob's pass
    refuses it by its owner and tells bob; bob's domain keeps its definition."""
    scene, alice, bob = settings.scene, settings.scene.alice, settings.scene.bob
    (bob.home / WEB / "config").unlink()
    alice.run('umask 002 && printf %s "$1" > "$2"', '{"memory_mib": 1024, "vcpus": 4}',
              str(bob.home / WEB / "config"))
    planted = bob.home / WEB / "config"
    scene.plant(planted)
    before_file = snap(planted)
    before_xml = settings.xml(settings.bob_web)
    alice_xml = settings.xml(settings.alice_web)

    done = scene.run("--user", bob.name, only_alice=False)
    print(f"pass: {done.seconds:.2f} s")

    assert settings.xml(settings.bob_web) == before_xml
    assert settings.xml(settings.alice_web) == alice_xml
    assert snap(planted) == before_file
    records = settings.configs()
    assert [(r["user"], r["vm"], r["outcome"]) for r in records] == [
        (bob.name, "web", "rejected")]
    assert f"owned by uid {alice.uid}" in records[0]["reason"]
    scene.told(bob, " web config", "rejected", f"owned by uid {alice.uid}")
    for path, before in scene.before.items():
        assert snap(path) == before, f"{path} changed"
    for path in [Path(folder) / name for folder, dirs, files in os.walk(bob.home)
                 for name in dirs + files]:
        st = os.lstat(path)
        assert st.st_uid == (alice.uid if path == planted else bob.uid), path


def test_control_a_good_config_is_applied(settings: Settings) -> None:
    scene, alice = settings.scene, settings.scene.alice
    config = alice.write(f"{WEB}/config", json.dumps({"vcpus": 2, "cdrom": "a.iso"}))
    before_file = snap(config)
    scene.run()
    assert "<vcpu placement='static'>2</vcpu>" in settings.xml(settings.alice_web)
    assert str(settings.isos / "a.iso") in settings.xml(settings.alice_web)
    assert [r["outcome"] for r in settings.configs()] == ["done"]
    assert snap(config) == before_file
    scene.check_no_escape()


# -- root parses again: a subverted user side sends what the real one would refuse -----
EVIL = r'''
def evil(chan, content):
    ask(chan, {"op": "inventory", "layout": "wirt", "vms": ["web"]})
    ask(chan, {"op": "settings", "layout": "wirt", "vm": "web", "digest": "e" * 32,
               "content": content})
'''


def forged_pass(scene: Scene, content: str) -> subprocess.CompletedProcess[str]:
    return stand_in_pass(scene.host.config, scene.alice.name, EVIL, content,
                         "--user", scene.alice.name)


FORGED = {
    "traversal": ('{"cdrom": "../../etc/shadow"}', "cdrom: must be the name of an ISO"),
    "catalogue-link": ('{"cdrom": "x.iso"}', "cdrom: 'x.iso' is not in the catalogue"),
    "brackets": ("[" * 4096, "nested deeper than 2 levels"),
    "too-big": ("{}" + " " * 4095, "more than the 4096 allowed"),
    "duplicate": ('{"vcpus": 1, "vcpus": 2}', "key 'vcpus' is given twice"),
    "float": ('{"memory_mib": 1e3}', "1e3 is not a whole number"),
    "latin-1": ('{"cdrom": "d\u00e9bian.iso"}', "byte 0xe9 at position 12"),
    "over-limit": ('{"vcpus": 64}', "64 is more than the limit of 4 per VM"),
}


@pytest.mark.parametrize("case", sorted(FORGED))
def test_root_parses_the_file_again(settings: Settings, case: str) -> None:
    """The user side's verdict is not trusted: a stand-in sends the content unjudged."""
    scene = settings.scene
    content, rule = FORGED[case]
    before = settings.xml(settings.alice_web)
    proc = forged_pass(scene, content)
    assert proc.returncode == 0, proc.stderr
    assert settings.xml(settings.alice_web) == before
    (record,) = settings.configs()
    assert record["outcome"] == "rejected" and rule in record["reason"], record
    assert not [r for r in scene.audit() if r["event"] == "user-incomplete"]


def test_root_refuses_content_that_is_not_bytes(settings: Settings) -> None:
    """Characters past U+00FF cannot be the file's bytes: a protocol error ends the turn."""
    scene = settings.scene
    before = settings.xml(settings.alice_web)
    proc = forged_pass(scene, '{"cdrom": "\u0100.iso"}')
    assert proc.returncode == 0, proc.stderr
    assert settings.xml(settings.alice_web) == before
    assert settings.configs() == []
    (incomplete,) = [r for r in scene.audit() if r["event"] == "user-incomplete"]
    assert "not bytes" in str(incomplete["reason"]), incomplete
