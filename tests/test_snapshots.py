"""Snapshots (SPEC 11) without a hypervisor: the quota keys, who made a snapshot, which
disks allow one, status.xml's <snapshots>, and the legacy state line.

The whole path on real QEMU domains is tests/test_snapshots_realvm.py.
"""

from __future__ import annotations

from typing import Any

import libvirt
import pytest

from wirt_wrapper.root.hypervisor import SNAPSHOT_MARK, not_qcow2, read_snapshots, snapshot_by
from wirt_wrapper.rules import logline
from wirt_wrapper.rules.config import SnapshotsConfig, parse_config
from wirt_wrapper.rules.errors import ConfigError
from wirt_wrapper.rules.status import info_digest, render
from wirt_wrapper.rules.status import parse as read_back

INFO: dict[str, Any] = {
    "domain": "alice-web", "state": "shut off", "reason": "shutdown", "autostart": False,
    "persistent": True, "memory_kib": 65536, "vcpus": 1, "graphics": {},
}
SNAPS = [
    {"name": "adm", "time": "2026-12-01T10:00:00Z", "state": "shutoff", "current": False,
     "by": "admin"},
    {"name": "snap-20261201-110000", "time": "2026-12-01T11:00:00Z", "state": "running",
     "current": True, "by": "alice"},
]


class TestConfig:
    def test_defaults(self) -> None:
        assert parse_config({}, "x").snapshots == SnapshotsConfig(per_vm=3, per_user=10)
        assert SnapshotsConfig().enabled

    @pytest.mark.parametrize("table", [{"per_vm": 0}, {"per_user": 0}])
    def test_zero_turns_them_off(self, table: dict[str, int]) -> None:
        assert not parse_config({"snapshots": table}, "x").snapshots.enabled

    @pytest.mark.parametrize("table,key", [
        ({"per_vm": -1}, "snapshots.per_vm"), ({"per_user": 1.5}, "snapshots.per_user"),
        ({"per_vm": 1001}, "snapshots.per_vm"), ({"per_user": True}, "snapshots.per_user"),
        ({"max": 3}, "snapshots.max"),
    ])
    def test_bad_values_name_the_key(self, table: dict[str, Any], key: str) -> None:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse_config({"snapshots": table}, "x")


class TestWhoMadeIt:
    @pytest.mark.parametrize("description,by", [
        (f"{SNAPSHOT_MARK}alice", "alice"), (f"  {SNAPSHOT_MARK}bob \n", "bob"),
        (None, "admin"), ("", "admin"), ("before the upgrade", "admin"),
        (SNAPSHOT_MARK, "admin"), (f"{SNAPSHOT_MARK}admin", "admin"),
        (f"x {SNAPSHOT_MARK}alice", "admin"),
    ])
    def test_the_mark(self, description: str | None, by: str) -> None:
        assert snapshot_by(description) == by

    def test_on_the_test_driver(self) -> None:
        """libvirt keeps the description as wirt wrote it (the test driver has snapshots)."""
        conn = libvirt.open("test:///default")
        try:
            dom = conn.lookupByName("test")
            dom.snapshotCreateXML("<domainsnapshot><name>a</name></domainsnapshot>", 0)
            dom.snapshotCreateXML("<domainsnapshot><name>b</name><description>"
                                  f"{SNAPSHOT_MARK}alice</description></domainsnapshot>", 0)
            found = read_snapshots(dom)
            assert [(s["name"], s["by"], s["current"], s["state"]) for s in found] == [
                ("a", "admin", False, "running"), ("b", "alice", True, "running")]
        finally:
            conn.close()


def disk(kind: str | None, device: str = "disk") -> str:
    driver = f"<driver name='qemu' type='{kind}'/>" if kind else ""
    dev = kind or "x"
    return (f"<disk type='file' device='{device}'>{driver}<source file='/i/{kind}.img'/>"
            f"<target dev='vd{dev}'/></disk>")


class TestDisks:
    def domain(self, *disks: str) -> str:
        return f"<domain><name>d</name><devices>{''.join(disks)}</devices></domain>"

    def test_every_disk_qcow2(self) -> None:
        assert not_qcow2(self.domain(disk("qcow2"), disk("qcow2"))) is None
        assert not_qcow2(self.domain(disk("qcow2"), disk(None, "cdrom"))) is None

    def test_the_disk_that_is_not_is_named(self) -> None:
        message = not_qcow2(self.domain(disk("qcow2"), disk("raw")))
        assert message is not None and "disk vdraw (/i/raw.img) is raw, not qcow2" in message
        message = not_qcow2(self.domain(disk(None)))
        assert message is not None and "of an unknown format, not qcow2" in message

    def test_no_disk(self) -> None:
        assert "has no disk" in str(not_qcow2(self.domain(disk(None, "cdrom"))))


class TestStatus:
    def test_round_trip(self) -> None:
        document = render("web", {**INFO, "snapshots": SNAPS}, None)
        assert b'<snapshots count="2">' in document
        assert read_back(document)["snapshots"] == SNAPS

    def test_none_listed_yet(self) -> None:
        assert "snapshots" not in read_back(render("web", INFO, None))
        assert read_back(render("web", {**INFO, "snapshots": []}, None))["snapshots"] == []

    def test_a_new_snapshot_changes_the_digest(self) -> None:
        """The idle path compares digests: a snapshot the admin made is a change to write."""
        assert info_digest({**INFO, "snapshots": SNAPS}) != \
            info_digest({**INFO, "snapshots": SNAPS[1:]})

    def test_hostile_names_stay_xml(self) -> None:
        """Names come from libvirt: the admin's may hold anything."""
        odd = [{**SNAPS[0], "name": "a\x01<b>&\"c"}]
        assert read_back(render("web", {**INFO, "snapshots": odd}, None))["snapshots"][0][
            "name"] == "a\\x01<b>&\"c"

    def test_legacy_state_line_lists_them(self) -> None:
        line = logline.state_line({**INFO, "snapshots": SNAPS})
        assert line.endswith("\n") and line.count("\n") == 1
        assert "snapshots: adm (shutoff, 2026-12-01T10:00:00Z, by admin), " \
            "snap-20261201-110000 (running, 2026-12-01T11:00:00Z, by alice, current)" in line
        assert "snapshots: none" in logline.state_line({**INFO, "snapshots": []})
        assert "snapshots" not in logline.state_line(INFO)
