"""Snapshots within a quota (SPEC 11) on real QEMU domains (qemu:///system), end to end.

The guests have one small qcow2 disk (guests.define_with_disk); command files
are dropped as the real user and run by real passes.  Each test checks libvirt's
own view (its snapshot list, the domain's state) and what the user reads back
(status.xml's <snapshots>, the VM's log, `wirt snapshots`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from typing import Any

import libvirt
import pytest
from conftest import Host
from guest import realvm
from guest.fixtures import Guest, Guests, WirtPass
from test_cli import wirt

from wirt_wrapper.rules import status as status_xml

pytestmark = pytest.mark.realvm

RUNNING = libvirt.VIR_DOMAIN_RUNNING
SHUTOFF = libvirt.VIR_DOMAIN_SHUTOFF


def snapshots(guest: Guest) -> dict[str, str]:
    """libvirt's own list: {name: description}."""
    found = {}
    for snap in guest.dom.listAllSnapshots(0):
        xml = snap.getXMLDesc(0)
        match = re.search(r"<description>(.*?)</description>", xml)
        found[snap.getName()] = match.group(1) if match else ""
    return found


def listed(guest: Guest) -> list[dict[str, Any]]:
    """status.xml's <snapshots>, as the CLI reads it."""
    found = status_xml.parse(guest.status().encode())
    assert "snapshots" in found, guest.status()
    result: list[dict[str, Any]] = found["snapshots"]
    return result


def last_line(guest: Guest) -> str:
    return guest.log_lines()[-1]


def command(guest: Guest, action: str, content: str = "") -> None:
    """A command file; several in one pass run in the order they were written (one file
    of each action name at a time: a folder holds one file of that name)."""
    assert action not in guest.spool()
    guest.command(action, content, mtime=time.time() + len(guest.spool()))


def one_by_one(guest: Guest, wirt_pass: WirtPass, action: str, *contents: str) -> None:
    for content in contents:
        command(guest, action, content)
        wirt_pass()


def test_take_list_revert_and_delete(realhost: Host, guests: Guests,
                                     wirt_pass: WirtPass) -> None:
    """Shut off and running snapshots; revert brings back the state each was taken in."""
    alice = realhost.add_user("alice")
    web = guests.define_with_disk(alice, "web")
    command(web, "snapshot", "--name cold")
    wirt_pass()
    assert "snapshot --name cold: done: snapshot 'cold' taken, of the shut-off VM" \
        in last_line(web)
    assert snapshots(web) == {"cold": f"wirt-owner:{alice.name}"}
    (cold,) = listed(web)
    assert (cold["name"], cold["state"], cold["current"], cold["by"]) == \
        ("cold", "shutoff", True, alice.name)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", cold["time"])

    command(web, "start")
    command(web, "snapshot")  # the default name, in UTC
    wirt_pass()
    web.wait_boots(1)
    assert web.state() == RUNNING
    default = [n for n in snapshots(web) if n != "cold"]
    assert len(default) == 1 and re.fullmatch(r"snap-\d{8}-\d{6}", default[0]), default
    assert f"snapshot --name {default[0]}: done" in last_line(web)
    assert "with the running VM's memory" in last_line(web)
    assert [(s["name"], s["state"], s["current"]) for s in listed(web)] == \
        [("cold", "shutoff", False), (default[0], "running", True)]

    command(web, "revert", "--name cold")  # running now: back to shut off
    wirt_pass()
    assert web.state() == SHUTOFF
    assert "revert --name cold: done: back to snapshot 'cold'" in last_line(web)
    assert [s["name"] for s in listed(web) if s["current"]] == ["cold"]

    command(web, "revert", f"--name {default[0]}")  # shut off now: back to running
    boots = web.boots()
    wirt_pass()
    assert web.state() == RUNNING
    assert web.boots() == boots, "a running snapshot resumes its memory, it does not boot"
    assert status_xml.parse(web.status().encode())["state"] == "running"

    command(web, "snapshot-delete", "--name cold")
    wirt_pass()
    assert "snapshot-delete --name cold: done: snapshot 'cold' deleted" in last_line(web)
    assert list(snapshots(web)) == [default[0]]
    assert [s["name"] for s in listed(web)] == [default[0]]
    proc = wirt(alice, "snapshots", "web", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [s["name"] for s in json.loads(proc.stdout)["snapshots"]] == [default[0]]
    assert outcomes_of(realhost, web) == ["snapshot: done", "start: done", "snapshot: done",
                                          "revert: done", "revert: done",
                                          "snapshot-delete: done"]


def outcomes_of(host: Host, guest: Guest) -> list[str]:
    return [f"{r['action']}: {r['outcome']}" for r in host.commands()
            if r["user"] == guest.user.name and r["vm"] == guest.vm]


def test_quotas_bad_names_and_disks(realhost: Host, guests: Guests,
                                    wirt_pass: WirtPass) -> None:
    """per_vm and per_user name the quota and the snapshots; bad names and non-qcow2 disks."""
    realhost.extra_config = "[snapshots]\nper_vm = 2\nper_user = 3\n"
    realhost.write_config()
    alice = realhost.add_user("alice")
    one, two = guests.define_with_disk(alice, "one"), guests.define_with_disk(alice, "two")
    bare = guests.define(alice, "bare")  # no disk at all
    command(bare, "snapshot", "--name x")
    one_by_one(one, wirt_pass, "snapshot", "--name a1", "--name a2", "--name a3")
    assert set(snapshots(one)) == {"a1", "a2"}
    assert "snapshot --name a3: rejected: the quota snapshots.per_vm = 2 is reached: " \
        f"{alice.name}-one has 2 made through wirt (a1, a2)" in last_line(one)
    one_by_one(two, wirt_pass, "snapshot", "--name b1", "--name b2")
    assert set(snapshots(two)) == {"b1"}
    assert ("snapshot --name b2: rejected: the quota snapshots.per_user = 3 is reached: you "
            f"have 3 ({alice.name}-one/a1, {alice.name}-one/a2, {alice.name}-two/b1)") \
        in last_line(two)
    assert "snapshot --name x: failed: the VM has no disk" in last_line(bare)

    one_by_one(two, wirt_pass, "snapshot", "--name b1",  # a name taken: another is asked for
               "--name ../../etc")
    command(two, "revert")
    command(two, "snapshot-delete", "--name nope")
    wirt_pass()
    lines = two.log_lines()[-4:]
    assert "rejected: there is already a snapshot named 'b1'" in lines[0]
    assert "token '../../etc' is not a valid value of '--name' (a snapshot name" in lines[1]
    assert "'revert' needs '--name NAME'" in lines[2]
    assert "rejected: there is no snapshot named 'nope'" in lines[3] and "(yours: b1)" in lines[3]
    assert set(snapshots(two)) == {"b1"}
    # nothing of the user's is deleted: every file is in history
    assert sum(n.endswith("-two-snapshot") for n in alice.history()) == 4

    # a raw disk: the message names it
    realhost.extra_config = "[snapshots]\nper_vm = 2\nper_user = 10\n"
    realhost.write_config()
    image = guests.folder / "raw.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(image), "1M"], check=True)
    os.chmod(image, 0o644)
    raw = Guest(guests.lv, alice, "raw", guests.folder / "raw.console")
    xml = realvm.domain_xml(raw.name, guests.kernel, guests.initrd, raw.console)
    guests.made.append(raw)
    guests.lv.conn.defineXML(realvm.with_qcow2_disk(xml, image).replace("'qcow2'", "'raw'"))
    command(raw, "snapshot", "--name r")
    wirt_pass()
    assert f"failed: disk vda ({image}) is raw, not qcow2" in last_line(raw)
    assert snapshots(raw) == {}

    # 0 turns snapshots off (deleting one's own still works)
    realhost.extra_config = "[snapshots]\nper_vm = 0\n"
    realhost.write_config()
    command(one, "snapshot", "--name a4")
    command(one, "snapshot-delete", "--name a1")
    command(one, "revert", "--name a2")
    wirt_pass()
    lines = one.log_lines()[-3:]
    assert "rejected: the admin has turned snapshots off here" in lines[0]
    assert "snapshot-delete --name a1: done" in lines[1]
    assert "revert --name a2: rejected: the admin has turned snapshots off" in lines[2]
    assert set(snapshots(one)) == {"a2"}


def test_admin_snapshots_and_other_members(realhost: Host, guests: Guests,
                                           wirt_pass: WirtPass) -> None:
    """The admin's snapshots (virsh) are listed, never touched; nor another member's."""
    alice, bob = realhost.add_user("alice"), realhost.add_user("bob")
    web = guests.define_with_disk(alice, "web")
    bobs = guests.define_with_disk(bob, "web")
    web.dom.snapshotCreateXML("<domainsnapshot><name>adm</name>"
                              "<description>before the upgrade</description></domainsnapshot>", 0)
    # a snapshot wirt made for alice, on a domain that is bob's now (say, renamed by the admin)
    bobs.dom.snapshotCreateXML("<domainsnapshot><name>hers</name><description>wirt-owner:"
                               f"{alice.name}</description></domainsnapshot>", 0)
    command(web, "status")  # a refresh lists what the admin made
    command(bobs, "status")
    wirt_pass()
    assert [(s["name"], s["by"]) for s in listed(web)] == [("adm", "admin")]
    assert [(s["name"], s["by"]) for s in listed(bobs)] == [("hers", alice.name)]

    command(web, "revert", "--name adm")
    command(web, "snapshot-delete", "--name adm")
    command(bobs, "revert", "--name hers")
    command(bobs, "snapshot-delete", "--name hers")
    wirt_pass()
    for line in web.log_lines()[-2:]:
        assert "rejected: snapshot 'adm' was made by the admin, not through wirt" in line
    for line in bobs.log_lines()[-2:]:
        assert f"rejected: snapshot 'hers' was made by user '{alice.name}'" in line
    assert list(snapshots(web)) == ["adm"] and list(snapshots(bobs)) == ["hers"]
    # an admin snapshot is not counted against the quota; each VM's list is its own
    command(web, "snapshot", "--name mine")
    wirt_pass()
    assert [(s["name"], s["by"]) for s in listed(web)] == [("adm", "admin"),
                                                            ("mine", alice.name)]
    assert "mine" not in [s["name"] for s in listed(bobs)]
    proc = wirt(bob, "snapshots", "web")
    assert "hers" in proc.stdout and "mine" not in proc.stdout and "adm" not in proc.stdout


def test_idle_passes_read_no_snapshot_list(realhost: Host, guests: Guests,
                                           wirt_pass: WirtPass) -> None:
    """The idle path keeps the lists root read (state_dir/snapshots.json); a new one is read
    when the domain's state changes, or at a refresh."""
    alice = realhost.add_user("alice")
    web = guests.define_with_disk(alice, "web")
    assert wirt(alice, "create", "web").returncode == 0
    wirt_pass()
    cache = realhost.root / "state" / "snapshots.json"
    kept = json.loads(cache.read_text())
    assert kept[web.name][1] == [] and listed(web) == []
    web.dom.snapshotCreateXML("<domainsnapshot><name>adm</name></domainsnapshot>", 0)
    wirt_pass()  # nothing about the domain changed: the list is not read again
    assert listed(web) == []
    web.dom.create()
    wirt_pass()  # its state changed: read again
    assert [s["name"] for s in listed(web)] == ["adm"]


def test_a_pass_killed_during_snapshot_ends_interrupted(realhost: Host, guests: Guests,
                                                        wirt_pass: WirtPass) -> None:
    """SIGKILL while libvirt takes the snapshot: the next pass says interrupted, and does
    not take it again (SPEC 3: never silently repeated)."""
    alice = realhost.add_user("alice")
    web = guests.define_with_disk(alice, "web")
    web.dom.create()
    web.wait_boots(1)
    command(web, "snapshot", "--name mid")
    proc = wirt_pass.spawn()
    journal = realhost.root / "state" / "journal.jsonl"
    ok = realvm.wait_for(lambda: journal.exists() and '"stage":"begin"' in journal.read_text(),
                         60, interval=0.005)
    assert ok, "the pass never began the snapshot"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    realvm.wait_for(lambda: web.state() == RUNNING, 30)  # libvirtd finishes its job alone
    made = list(snapshots(web))
    wirt_pass()  # recovery
    wirt_pass()
    assert outcomes_of(realhost, web) == ["snapshot: interrupted"]
    assert "snapshot --name mid: interrupted: the pass was stopped" in last_line(web)
    assert list(snapshots(web)) == made, "the snapshot was taken again"
    assert "snapshot" not in web.spool()
    assert sum(n.endswith("-web-snapshot") for n in alice.history()) == 1


def test_wirt_cli_writes_snapshot_commands(realhost: Host, guests: Guests,
                                           wirt_pass: WirtPass) -> None:
    """wirt snapshot VM [NAME], wirt revert VM NAME, wirt snapshot-delete VM NAME."""
    alice = realhost.add_user("alice")
    web = guests.define_with_disk(alice, "web")
    assert wirt(alice, "create", "web").returncode == 0
    assert wirt(alice, "snapshot", "web", "one").returncode == 0
    assert (alice.home / "wirt/service/vm/web/snapshot").read_text() == "--name one\n"
    wirt_pass()
    assert wirt(alice, "--vm", "web", "revert", "one").returncode == 0
    assert (alice.home / "wirt/service/vm/web/revert").read_text() == "--name one\n"
    wirt_pass()
    proc = wirt(alice, "snapshot-delete", "web", "--name", "a/b")
    assert proc.returncode == 64 and "'a/b' is not a valid value of '--name'" in proc.stderr
    assert wirt(alice, "snapshot-delete", "web", "one").returncode == 0
    wirt_pass()
    assert outcomes_of(realhost, web) == ["snapshot: done", "revert: done",
                                          "snapshot-delete: done"]
    assert "no snapshots" in wirt(alice, "snapshots", "web").stdout


def test_legacy_layout(realhost: Host, guests: Guests, wirt_pass: WirtPass) -> None:
    """~/virsh/dom-<vm>/: the same actions; with no status.xml, each command's log (one
    file per command) ends with the state line, which lists the snapshots."""
    alice = realhost.add_user("alice")
    web = guests.define_with_disk(alice, "web")

    def legacy(action: str, content: str) -> str:
        alice.write(f"virsh/dom-web/{action}", content)
        before = set((alice.home / "virsh/log").glob("*.log")) \
            if (alice.home / "virsh/log").exists() else set()
        wirt_pass()
        (new,) = set((alice.home / "virsh/log").glob(f"*-dom-web-{action}.log")) - before
        return new.read_text()

    text = legacy("snapshot", "--name l1")
    assert "snapshot --name l1: done: snapshot 'l1' taken" in text
    assert "snapshots: l1 (shutoff, " in text and f"by {alice.name}, current)" in text
    assert snapshots(web) == {"l1": f"wirt-owner:{alice.name}"}
    text = legacy("revert", "--name ../l1")
    assert "token '../l1' is not a valid value of '--name'" in text
    text = legacy("snapshot-delete", "--name l1")
    assert "snapshot-delete --name l1: done" in text and "snapshots: none" in text
    assert snapshots(web) == {}
    # a rejected file has no action in the audit record, only its file name
    assert [(r["file"], r["outcome"]) for r in realhost.commands()] == [
        ("snapshot", "done"), ("revert", "rejected"), ("snapshot-delete", "done")]
