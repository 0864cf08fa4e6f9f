"""The VM's settings file `config` through real passes on qemu:///system (SPEC 9).

Real users write ``config`` into their VM folders; the real executable runs
the pass (the ``wirt_pass`` fixture, or ``Host.run`` where the prober's idle
path matters); the proof is libvirt's own persistent XML, the VM's log, the
audit record and status.xml.  The domains are the tiny test guest with a SATA
CD-ROM drive (as in test_settings_realvm.py); the ISOs are sparse files in a
root-owned 0755 folder under /var/tmp, which QEMU can reach.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest
from conftest import BIN, Host, User, passes, readable_config, tamper_keeping_signature
from guest import realvm
from guest.fixtures import Guest, Guests, WirtPass
from lxml import etree

from wirt_wrapper.root.definition import read_settings
from wirt_wrapper.rules import logline
from wirt_wrapper.rules import settings as settings_rules

pytestmark = pytest.mark.realvm

INACTIVE = libvirt.VIR_DOMAIN_XML_INACTIVE
RUNNING = libvirt.VIR_DOMAIN_RUNNING
CDROM = ("<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
         "<target dev='sdc' bus='sata'/><readonly/></disk>")
WIRT = str(BIN / "wirt")


@dataclass
class Lab:
    host: Host
    guests: Guests
    isos: Path

    def configure(self, quota_memory_mib: int = 0, quota_vcpus: int = 0) -> None:
        self.host.extra_config = (
            "[limits]\nseconds_per_user = 20\n"
            f"[settings]\nmax_memory_mib = 1024\nmax_vcpus = 4\niso_dir = \"{self.isos}\"\n"
            f"[quota]\nmemory_mib = {quota_memory_mib}\nvcpus = {quota_vcpus}\n")
        self.host.write_config()

    def define(self, user: User, vm: str, cdrom: bool = True) -> Guest:
        """``<user>-<vm>`` from the test guest, with a CD-ROM drive; removed at teardown."""
        guests = self.guests
        guest = Guest(guests.lv, user, vm, guests.folder / f"{user.name}-{vm}.console")
        xml = realvm.domain_xml(guest.name, guests.kernel, guests.initrd, guest.console)
        if cdrom:
            xml = xml.replace("<devices>", f"<devices>\n    {CDROM}", 1)
        guests.made.append(guest)
        guests.lv.conn.defineXML(xml)
        return guest

    def iso(self, name: str) -> str:
        path = self.isos / name
        subprocess.run(["truncate", "-s", "1M", str(path)], check=True)
        return str(path)


@pytest.fixture
def lab(realhost: Host, guests: Guests) -> Iterator[Lab]:
    isos = Path(tempfile.mkdtemp(prefix="wirt-isos-", dir="/var/tmp"))
    isos.chmod(0o755)
    made = Lab(realhost, guests, isos)
    made.configure()
    try:
        yield made
    finally:
        shutil.rmtree(isos)


# -- what the user and root see ---------------------------------------------------------
def persistent(guest: Guest) -> str:
    return str(guest.dom.XMLDesc(INACTIVE))


def held(guest: Guest, lab: Lab, flags: int = INACTIVE) -> dict[str, Any]:
    return read_settings(guest.dom.XMLDesc(flags), str(lab.isos))


def cd_source(guest: Guest, flags: int) -> str | None:
    disk = etree.fromstring(guest.dom.XMLDesc(flags).encode()).find(
        "devices/disk[@device='cdrom']")
    source = disk.find("source")
    return None if source is None else source.get("file")


def settings_shown(user: User, vm: str) -> dict[str, Any]:
    """status.xml's <settings> and <last-config>, flat."""
    root = etree.fromstring(user.status(vm).encode())
    found: dict[str, Any] = {}
    node = root.find("settings")
    if node is not None:
        found.update(restart=node.get("restart-needed"), memory=node.findtext("memory"),
                     vcpus=node.findtext("vcpus"), cdrom=node.findtext("cdrom"),
                     boot=node.findtext("boot"))
    last = root.find("last-config")
    if last is not None:
        found["last"] = (last.get("outcome"), last.text or "")
    return found


def config_lines(text: str) -> list[dict[str, str]]:
    return [p for p in map(logline.parse, text.splitlines())
            if p is not None and p["action"] == "config"]


def configs(host: Host, user: User | None = None) -> list[dict[str, Any]]:
    return [r for r in host.commands() if r["action"] == "config"
            and (user is None or r["user"] == user.name)]


def write_config(user: User, vm: str, wanted: dict[str, Any], legacy: bool = False) -> Path:
    folder = f"virsh/dom-{vm}" if legacy else f"wirt/service/vm/{vm}"
    return user.write(f"{folder}/config", json.dumps(wanted))


def timed(label: str, run: Any) -> Any:
    started = time.monotonic()
    result = run()
    print(f"{label}: {time.monotonic() - started:.2f} s")
    return result


# -- the tests -------------------------------------------------------------------------
def test_applied_once_then_again_when_changed_then_ejected(lab: Lab, wirt_pass: WirtPass
                                                            ) -> None:
    host = lab.host
    alice = host.add_user("alice")
    web = lab.define(alice, "web")
    a_iso = lab.iso("a.iso")
    lab.iso("b.iso")
    before = persistent(web)

    config = write_config(alice, "web", {"memory_mib": 128, "vcpus": 2,
                                         "boot": ["cdrom", "hd"], "cdrom": "a.iso"})
    kept = (config.lstat().st_ino, config.lstat().st_mtime_ns, config.read_bytes())
    proc = timed("first pass (config applied)", lambda: host.run("--verbose"))
    assert persistent(web) != before
    now = held(web, lab)
    assert (now["memory_mib"], now["vcpus"], now["boot"], now["cdrom"]) == \
        (128, 2, ["cdrom", "hd"], "a.iso")
    assert cd_source(web, INACTIVE) == a_iso
    message = ("set memory 128 MiB (was 96), vCPUs 2 (was 1), boot order cdrom,hd (was hd), "
               "CD a.iso (was empty); in effect at the next start")
    lines = config_lines(alice.vm_log("web"))
    assert len(lines) == 1, alice.vm_log("web")
    line = lines[0]
    assert (line["vm"], line["outcome"], line["message"], line["file"], line["history"]) == \
        ("web", "done", message, "config", "")
    assert line["params"] == "boot=cdrom,hd cdrom=a.iso memory_mib=128 vcpus=2"
    records = configs(host)
    assert len(records) == 1
    record = records[0]
    assert (record["user"], record["vm"], record["domain"], record["outcome"],
            record["reason"], record["file"]) == (alice.name, "web", web.name, "done", message,
                                                  "config")
    assert record["id"] == line["id"]
    shown = settings_shown(alice, "web")
    assert shown == {"restart": "no", "memory": "128", "vcpus": "2", "cdrom": "a.iso",
                     "boot": "cdrom hd", "last": ("done", message)}
    assert f"{alice.name} web config: done" in proc.stdout
    assert (config.lstat().st_ino, config.lstat().st_mtime_ns, config.read_bytes()) == kept
    assert (alice.home / "wirt/info/isos.txt").read_text().splitlines()[1:] == \
        ["a.iso", "b.iso"]

    # the same file again: nothing re-applied; the prober finds alice idle (no user side:
    # the forged status.xml, signature kept, is not rewritten)
    log_before, xml_before = alice.vm_log("web"), persistent(web)
    status_path = alice.home / "wirt/info/vm/web/status.xml"
    tamper_keeping_signature(status_path)
    forged = status_path.read_bytes()
    timed("second pass (unchanged config, idle)", lambda: host.run("--verbose"))
    assert len(configs(host)) == 1 and alice.vm_log("web") == log_before
    assert persistent(web) == xml_before
    assert status_path.read_bytes() == forged, "the idle pass started a user side for alice"

    # an admin change stands while the file stays the same (a full user side: a command)
    web.dom.setVcpusFlags(3, libvirt.VIR_DOMAIN_AFFECT_CONFIG
                          | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)
    web.dom.setVcpusFlags(3, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    web.command("status")
    timed("third pass (a command, config unchanged)", lambda: wirt_pass())
    assert len(configs(host)) == 1 and held(web, lab)["vcpus"] == 3
    assert settings_shown(alice, "web")["vcpus"] == "3"
    assert status_path.read_bytes() != forged  # control: a full user side rewrites it

    # changed: applied again (only the new version)
    write_config(alice, "web", {"memory_mib": 256, "vcpus": 2, "cdrom": "b.iso"})
    timed("fourth pass (changed config)", lambda: wirt_pass())
    assert len(configs(host)) == 2 and configs(host)[-1]["outcome"] == "done"
    now = held(web, lab)
    assert (now["memory_mib"], now["vcpus"], now["cdrom"]) == (256, 2, "b.iso")
    assert config_lines(alice.vm_log("web"))[-1]["message"].startswith(
        "set memory 256 MiB (was 128), vCPUs 2 (was 3), CD b.iso (was a.iso)")

    # eject
    write_config(alice, "web", {"cdrom": None})
    wirt_pass()
    assert configs(host)[-1]["outcome"] == "done"
    assert cd_source(web, INACTIVE) is None and held(web, lab)["memory_mib"] == 256
    shown = settings_shown(alice, "web")
    assert shown["cdrom"] == "" and shown["last"] == (
        "done", "set CD ejected (was b.iso); in effect at the next start")
    assert len(config_lines(alice.vm_log("web"))) == 3


def test_running_domain_gets_the_cd_live_and_restart_needed(lab: Lab,
                                                            wirt_pass: WirtPass) -> None:
    alice = lab.host.add_user("alice")
    run = lab.define(alice, "run")
    a_iso = lab.iso("a.iso")
    run.dom.create()
    write_config(alice, "run", {"cdrom": "a.iso", "memory_mib": 128})
    timed("pass on a running domain", lambda: wirt_pass())
    assert run.state() == RUNNING
    assert cd_source(run, 0) == a_iso and cd_source(run, INACTIVE) == a_iso
    assert (held(run, lab, 0)["memory_mib"], held(run, lab)["memory_mib"]) == (96, 128)
    record = configs(lab.host)[-1]
    assert record["outcome"] == "done" and "the CD changed in the running VM too" in \
        record["reason"]
    shown = settings_shown(alice, "run")
    assert (shown["restart"], shown["memory"], shown["cdrom"]) == ("yes", "128", "a.iso")
    assert "take effect when the VM is shut down and started again" in shown["last"][1]
    # the next passes: the file is not applied again, restart still needed, and once
    # settled the prober finds alice idle on a running domain too (no user side)
    lab.host.run()
    status_path = alice.home / "wirt/info/vm/run/status.xml"
    tamper_keeping_signature(status_path)
    forged = status_path.read_bytes()
    timed("idle pass on the running domain", lambda: lab.host.run())
    assert status_path.read_bytes() == forged, "the idle pass started a user side for alice"
    run.command("status")
    wirt_pass()
    assert settings_shown(alice, "run")["restart"] == "yes"
    assert len(configs(lab.host)) == 1

    # shut down and started again: the new settings run, no restart needed any more
    run.dom.destroy()
    run.dom.create()
    assert held(run, lab, 0)["memory_mib"] == 128
    wirt_pass()
    shown = settings_shown(alice, "run")
    assert (shown["restart"], shown["memory"]) == ("no", "128")
    assert len(configs(lab.host)) == 1


def test_quota_across_two_vms(lab: Lab, wirt_pass: WirtPass) -> None:
    lab.configure(quota_memory_mib=300)
    alice = lab.host.add_user("alice")
    one, two = lab.define(alice, "one"), lab.define(alice, "two")
    write_config(alice, "one", {"memory_mib": 128})
    wirt_pass()
    assert held(one, lab)["memory_mib"] == 128 and configs(lab.host)[-1]["outcome"] == "done"
    before = persistent(two)
    write_config(alice, "two", {"memory_mib": 256})
    wirt_pass()
    assert persistent(two) == before
    record = configs(lab.host)[-1]
    rule = ("config: memory_mib: 256 would take you over your quota of 300 (quota.memory_mib;"
            " your other VMs use 128, so at most 172 is left for this one)")
    assert (record["vm"], record["outcome"]) == ("two", "rejected")
    assert record["reason"].startswith(rule)
    line = config_lines(alice.vm_log("two"))[-1]
    assert line["outcome"] == "rejected" and line["message"].startswith(rule)
    assert settings_shown(alice, "two")["last"][0] == "rejected"
    assert settings_shown(alice, "two")["memory"] == "96"
    # within the quota: applied
    write_config(alice, "two", {"memory_mib": 172})
    wirt_pass()
    assert held(two, lab)["memory_mib"] == 172 and configs(lab.host)[-1]["outcome"] == "done"


def test_legacy_layout(lab: Lab, wirt_pass: WirtPass) -> None:
    alice = lab.host.add_user("alice")
    web = lab.define(alice, "web")
    lab.iso("a.iso")
    config = write_config(alice, "web", {"vcpus": 2, "cdrom": "a.iso"}, legacy=True)
    timed("legacy pass", lambda: wirt_pass())
    now = held(web, lab)
    assert (now["vcpus"], now["cdrom"]) == (2, "a.iso")
    record = configs(lab.host)[-1]
    assert (record["layout"], record["outcome"]) == ("legacy", "done")
    logs = {p.name: p.read_text() for p in (alice.home / "virsh/log").glob("*.log")
            if p.name != "wirt.log"}
    found = [(name, text) for name, text in logs.items() if "config" in name]
    assert len(found) == 1, logs
    assert "set vCPUs 2 (was 1), CD a.iso (was empty)" in found[0][1]
    assert config.exists() and os.listdir(config.parent) == ["config"]
    # unchanged: not applied again, also through the prober's idle look (root keeps the
    # file's digest, and the prober compares the file's lstat signature)
    state = lab.host.root / "state"
    applied = json.loads((state / "settings.json").read_text())[str(alice.uid)]
    assert applied["configs"] == {"legacy": {"web": settings_rules.digest(config.read_bytes())}}
    st = config.lstat()
    idle = json.loads((state / "idle.json").read_text())[str(alice.uid)]
    assert idle == {"legacy": {"web": [None, None, [st.st_ino, st.st_mtime_ns, st.st_size,
                                                    st.st_mode, st.st_nlink]]}}
    lab.host.run()
    wirt_pass()
    assert len(configs(lab.host)) == 1
    assert len([n for n in os.listdir(alice.home / "virsh/log") if "config" in n]) == 1


def test_wirt_set_wait_with_passes_running(lab: Lab) -> None:
    alice = lab.host.add_user("alice")
    web = lab.define(alice, "web")
    alice.run("mkdir -p wirt/service/vm/web")
    lab.host.run()
    with readable_config(lab.host) as site, passes(lab.host, interval=0.2) as outputs:
        started = time.monotonic()
        proc = alice.run('exec "$@"', WIRT, "--config", site, "set", "web", "vcpus=2",
                         "--wait", "--timeout", "90", check=False)
        seconds = time.monotonic() - started
    print(f"wirt set --wait: {seconds:.2f} s, {len(outputs)} passes")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "web: config: done: set vCPUs 2 (was 1)" in proc.stdout
    assert held(web, lab)["vcpus"] == 2
    assert [r["outcome"] for r in configs(lab.host)] == ["done"]


def test_wirt_set_wait_reports_a_quota_refusal(lab: Lab) -> None:
    """Only root knows the user's other domains: --wait reports its refusal (exit 2)."""
    lab.configure(quota_memory_mib=300)
    alice = lab.host.add_user("alice")
    one, two = lab.define(alice, "one"), lab.define(alice, "two")
    alice.run("mkdir -p wirt/service/vm/one wirt/service/vm/two")
    lab.host.run()
    before = persistent(two)
    with readable_config(lab.host) as site, passes(lab.host, interval=0.2):
        done = alice.run('exec "$@"', WIRT, "--config", site, "set", "one", "memory_mib=128",
                         "--wait", "--timeout", "90", check=False)
        started = time.monotonic()
        refused = alice.run('exec "$@"', WIRT, "--config", site, "set", "two",
                            "memory_mib=256", "--wait", "--timeout", "90", check=False)
        seconds = time.monotonic() - started
    print(f"wirt set --wait (refused by the quota): {seconds:.2f} s")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert "256 would take you over your quota of 300" in refused.stdout + refused.stderr
    assert held(one, lab)["memory_mib"] == 128 and persistent(two) == before
