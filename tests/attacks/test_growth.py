"""SECURITY row 10 (growth of root's own records) and issue 9 item 3 (the prober's answer).

One member chooses how many entries their spool holds and how long the names
are; none of that may switch off the prober for the others or grow root's
records (``idle.json``, ``reported.json``, the audit log) pass over pass.

The numbers each test measures are printed (``pytest -s``), so a reviewer
sees the growth per pass before and after the fix.  Files are made by one
Python process running as the member (``runuser``), never one process per
file.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest
from conftest import Host, User, sh, tamper_keeping_signature

pytestmark = pytest.mark.attack

SPOOL = "wirt/service/vm"
MAX_IDLE_VMS = 500  # wirt_wrapper.root.records.MAX_IDLE_VMS
NOTICE_RECORDS = 20  # wirt_wrapper.root.monitor.NOTICE_RECORDS

# Runs as the member: (re)creates entries in a folder of their spool.
#   argv: folder, kind (file|dir), prefix, count, length, charset (ascii|bytes), recreate (0|1)
# Names are "<prefix><number>-" padded to *length* bytes with "x" (ascii) or 0xff (bytes,
# not UTF-8).  With recreate, each new entry is made under a hidden folder first and
# renamed over the old one's place after that is removed: the new inode can never be
# the old one's (a plain rm + create could reuse it).
MAKE = r"""
import os, sys
folder, kind, prefix, count, length, charset, recreate = sys.argv[1:]
count, length, recreate = int(count), int(length), recreate == "1"
pad = b"x" if charset == "ascii" else b"\xff"
folder = os.fsencode(folder)
os.makedirs(folder, exist_ok=True)
side = os.path.join(folder, b".new")
if recreate:
    os.mkdir(side)
for i in range(count):
    head = f"{prefix}{i:04d}-".encode()
    name = head + pad * (length - len(head))
    where = os.path.join(side if recreate else folder, name)
    if kind == "dir":
        os.mkdir(where)
    else:
        os.close(os.open(where, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    if recreate:
        old = os.path.join(folder, name)
        os.rmdir(old) if kind == "dir" else os.unlink(old)
        os.rename(where, old)
if recreate:
    os.rmdir(side)
"""


def make(user: User, folder: str, *, kind: str = "file", prefix: str = "s", count: int,
         length: int, charset: str = "ascii", recreate: bool = False) -> None:
    subprocess.run(
        ["/usr/sbin/runuser", "-u", user.name, "--", "/usr/bin/python3", "-I", "-c", MAKE,
         str(user.home / folder), kind, prefix, str(count), str(length), charset,
         "1" if recreate else "0"],
        cwd=user.home, check=True, capture_output=True, text=True,
        env={"HOME": str(user.home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    )


def replace_vm_folders(user: User, old: str | None, new: str, count: int) -> None:
    """The member removes their VM folders named *old*NNNN and makes *new*NNNN ones."""
    script = (f'cd {SPOOL} && for d in {old}[0-9]*; do rmdir "$d"; done; :'
              if old else f"mkdir -p {SPOOL}")
    user.run(script)
    make(user, SPOOL, kind="dir", prefix=new, count=count, length=len(new) + 5)


def state(host: Host, name: str) -> dict[str, Any]:
    path = host.root / "state" / name
    return json.loads(path.read_text()) if path.exists() else {}


def state_size(host: Host, name: str) -> int:
    path = host.root / "state" / name
    return path.stat().st_size if path.exists() else 0


def audit_size(host: Host) -> int:
    return host.audit.stat().st_size if host.audit.exists() else 0


def records_since(host: Host, offset: int) -> list[dict[str, Any]]:
    with host.audit.open("rb") as handle:
        handle.seek(offset)
        return [json.loads(line) for line in handle.read().splitlines()]


def look_bytes(count: int, length: int, charset: str) -> int:
    """What the "odd" keys of the prober's answer for such a spool weigh in JSON."""
    pad = b"x" if charset == "ascii" else b"\xff"
    head = b"s0000-"
    key = "entry:" + os.fsdecode(head + pad * (length - len(head)))
    return count * (len(json.dumps(key)) + 1)


# -- issue 9 item 3: the prober's answer ---------------------------------------------
@pytest.mark.parametrize("charset", ["ascii", "bytes"])
def test_long_stray_names_do_not_switch_off_the_prober(host: Host, charset: str) -> None:
    """995 stray files with 240-byte names: the look is ~250 KB (ASCII) or ~1.4 MB
    (non-UTF-8 names, escaped in JSON), past the old datagram's ~212 KB.  The prober
    must survive: bob, idle, keeps getting no user side; alice is told once.  Over
    1 MiB (the 'bytes' case) alice's look is answered 'busy': she gets a full side."""
    alice = host.add_user("alice")  # first in the group: the prober is asked about her first
    bob = host.add_user("bob")
    host.write_config({f"{alice.name}-web": None, f"{bob.name}-web": None})
    bob.run(f"mkdir -p {SPOOL}/web")
    alice.run(f"mkdir -p {SPOOL}/web")
    make(alice, SPOOL, count=995, length=240, charset=charset)
    print(f"\n[prober/{charset}] alice's look: ~{look_bytes(995, 240, charset) // 1024} KB "
          "(old datagram limit ~208 KB; new MAX_LOOK 1024 KB)")

    host.run()  # the first pass: no idle cache yet, both get a full side
    statuses = {u.name: u.home / "wirt/info/vm/web/status.xml" for u in (alice, bob)}
    forged = {name: tamper_keeping_signature(path) for name, path in statuses.items()}
    for _ in range(2):
        host.run()
    failed = [r for r in host.audit_records() if r["event"] == "prober-failed"]
    bob_full = statuses[bob.name].read_bytes() != forged[bob.name]
    alice_rewritten = statuses[alice.name].read_bytes() != forged[alice.name]
    print(f"[prober/{charset}] prober-failed records: {len(failed)} {failed[:1]}")
    print(f"[prober/{charset}] after the first pass, a full user side for bob (idle): "
          f"{bob_full}, for alice: {alice_rewritten}")
    assert not failed, failed
    # bob was idle and only looked at: his status.xml is still the forged one
    assert not bob_full, "bob got a full user side"
    # under MAX_LOOK a real look (she is idle: all her strays were told); over it, 'busy'
    assert alice_rewritten == (charset == "bytes")

    # alice was told about each stray entry once, in three passes
    log = (alice.home / "wirt/logs/wirt.log").read_bytes().splitlines()
    told = [line for line in log if b": ignored: " in line]
    assert len(told) == 995, len(told)
    assert len({line.split(b" ", 1)[1] for line in told}) == 995
    notices = [r for r in host.audit_records() if r["event"] == "notice"]
    print(f"[prober/{charset}] notice records in the audit log after 3 passes: "
          f"{len(notices)}")
    assert len(notices) <= NOTICE_RECORDS + 1

    # control: a status.xml bob changes (mtime) is seen by the look and rewritten
    os.utime(statuses[bob.name], ns=(1, 1))
    host.run()
    assert statuses[bob.name].read_bytes() != forged[bob.name]


# -- SECURITY row 10: idle.json and reported.json --------------------------------------
def test_idle_json_does_not_grow_when_vm_folders_are_replaced(host: Host) -> None:
    """1,000 valid VM folders, replaced by 1,000 others before each of 3 passes: alice's
    entry holds at most MAX_IDLE_VMS VMs, none of the removed ones; the file stays flat."""
    alice = host.add_user("alice")
    host.write_config({})
    sizes: list[int] = []
    held: list[list[str]] = []
    old = None
    print()
    for new in ("ra", "rb", "rc"):
        replace_vm_folders(alice, old, new, 1000)
        host.run()
        entry = state(host, "idle.json").get(str(alice.uid), {})
        held.append([vm for layout in entry.values() for vm in layout])
        sizes.append(state_size(host, "idle.json"))
        print(f"[idle.json] after the pass with 1000 folders {new}NNNN: {len(held[-1])} VMs "
              f"for alice, {sizes[-1]} bytes")
        old = new
    print(f"[idle.json] growth per pass: {[sizes[i + 1] - sizes[i] for i in range(2)]} bytes")
    for new, vms in zip(("ra", "rb", "rc"), held, strict=True):
        assert len(vms) <= MAX_IDLE_VMS, len(vms)
        assert all(vm.startswith(new) for vm in vms), "removed VM folders are still there"
    assert sizes[2] <= sizes[0] * 1.05, sizes


def test_records_of_a_member_who_left_are_pruned(host: Host) -> None:
    alice = host.add_user("alice")
    bob = host.add_user("bob")
    host.write_config({f"{alice.name}-web": None, f"{bob.name}-web": None})
    for user in (alice, bob):
        user.run(f"mkdir -p {SPOOL}/web && echo x > {SPOOL}/notes.txt")
    host.run()
    for name in ("idle.json", "reported.json"):
        assert {str(alice.uid), str(bob.uid)} <= set(state(host, name)), name
    sh("gpasswd", "-d", bob.name, host.group)
    host.run()
    kept = {name: sorted(state(host, name)) for name in ("idle.json", "reported.json")}
    print(f"\n[left] uids kept after bob ({bob.uid}) left the group: {kept}")
    for name, uids in kept.items():
        assert str(bob.uid) not in uids, f"{name} still holds bob's entry"
        assert str(alice.uid) in uids, f"{name} lost alice's entry"


# -- SECURITY row 10: the audit log --------------------------------------------------
def test_recreated_stray_entries_are_not_new(host: Host) -> None:
    """995 stray files removed and made again (same names, new inodes) before each pass,
    and a command so that alice gets a full side: no notice record is written again."""
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None})
    alice.run(f"mkdir -p {SPOOL}/web")
    make(alice, SPOOL, count=995, length=120)
    host.run()
    first = audit_size(host)
    print(f"\n[recreate] first pass (995 new stray entries): {first} audit bytes, "
          f"{len([r for r in host.audit_records() if r['event'] == 'notice'])} notice records")
    added: list[int] = []
    passes: list[list[dict[str, Any]]] = []
    for _ in range(2):
        make(alice, SPOOL, count=995, length=120, recreate=True)
        alice.write(f"{SPOOL}/web/autostart")
        before = audit_size(host)
        host.run()
        passes.append(records_since(host, before))
        added.append(audit_size(host) - before)
        notices = [r for r in passes[-1] if r["event"] == "notice"]
        print(f"[recreate] pass after recreating them: +{added[-1]} audit bytes, "
              f"{len(notices)} notice records")
    for new in passes:
        assert [r["outcome"] for r in new if r["event"] == "command"] == ["done"]
        assert [r for r in new if r["event"] == "notice"] == []
    assert max(added) < 4096, added
    told = (alice.home / "wirt/logs/wirt.log").read_text().count(": ignored: ")
    assert told == 995, told


def test_rejected_files_with_long_binary_names_are_bounded(host: Host) -> None:
    """100 rejected command files, each a 240-byte non-UTF-8 name (max_files_per_user):
    each command record cuts the file name to 80 printable characters and the reason to
    500, so a record is at most ~1 KB with the other fields (escapes of '\\' double in
    JSON): the pass adds at most 100 * 1.2 KB + 4 KB for the pass's other records."""
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None})
    make(alice, f"{SPOOL}/web", count=100, length=240, charset="bytes")
    host.run()
    added = audit_size(host)
    records = host.audit_records()
    commands = [r for r in records if r["event"] == "command"]
    lines = host.audit.read_bytes().splitlines()
    biggest = max(len(line) for line in lines if b'"event":"command"' in line)
    print(f"\n[rejected] one pass: +{added} audit bytes, {len(commands)} command records, "
          f"the largest {biggest} bytes; {len(records)} records in all")
    assert len(commands) == 100
    for record in commands:
        assert (record["user"], record["vm"], record["outcome"]) == (alice.name, "web",
                                                                       "rejected"), record
        assert record["file"].startswith("s0"), record["file"]
        assert record["reason"], record
    assert biggest <= 1200, biggest
    assert added <= 100 * 1200 + 4096, added


def test_many_new_notices_are_one_record_with_a_count(host: Host) -> None:
    """300 new stray entries in one turn: 20 notice records and one with the count of the
    rest; alice herself is told of every one."""
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None})
    alice.run(f"mkdir -p {SPOOL}/web")
    make(alice, SPOOL, count=300, length=100)
    host.run()
    added = audit_size(host)
    notices = [r for r in host.audit_records() if r["event"] == "notice"]
    counted = [r for r in notices if "count" in r]
    print(f"\n[notices] one turn with 300 new notices: {len(notices)} notice records, "
          f"+{added} audit bytes")
    assert len(notices) == NOTICE_RECORDS + 1, len(notices)
    assert [r["count"] for r in counted] == [300 - NOTICE_RECORDS]
    assert all(r["user"] == alice.name for r in notices)
    told = (alice.home / "wirt/logs/wirt.log").read_text().count(": ignored: ")
    assert told == 300, told


def test_reported_json_is_bounded_per_user(host: Host) -> None:
    """The most stray entries a member can show (1,000 in the spool, 1,000 in a VM folder),
    240-byte non-UTF-8 names, renamed before each of 3 passes: reported.json holds at most
    MAX_NOTICE_KEYS keys for her, in a bounded number of bytes."""
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None})
    alice.run(f"mkdir -p {SPOOL}/web")
    sizes: list[int] = []
    print()
    for prefix in ("a", "b", "c"):
        alice.run(f"find {SPOOL} -mindepth 1 -maxdepth 2 -name '[abc]0*' -exec rm -rf {{}} +")
        make(alice, SPOOL, prefix=prefix, count=999, length=240, charset="bytes")
        make(alice, f"{SPOOL}/web", kind="dir", prefix=prefix, count=1000, length=240,
             charset="bytes")
        host.run()
        sizes.append(state_size(host, "reported.json"))
        keys = len(state(host, "reported.json").get(str(alice.uid), []))
        print(f"[reported.json] after a pass with 1999 new 240-byte names: {keys} keys for "
              f"alice, {sizes[-1]} bytes")
    assert max(sizes) <= 256 * 1024, sizes


def test_a_long_stray_name_in_a_vm_folder_lets_the_member_be_idle(host: Host) -> None:
    """A stray folder whose key is longer than root keeps (a 63-character VM folder, a
    250-byte name inside): once told, the look must still find the member idle."""
    alice = host.add_user("alice")
    vm = "v" * 63
    host.write_config({f"{alice.name}-{vm}": None})
    alice.run(f"mkdir -p {SPOOL}/{vm}/{'x' * 250}")
    host.run()
    status = alice.home / "wirt/info/vm" / vm / "status.xml"
    forged = tamper_keeping_signature(status, b"<vm>v", b"<vm>V")
    host.run()
    full = status.read_bytes() != forged
    print(f"\n[long key] a full user side although nothing changed: {full}")
    assert not full


def test_a_subverted_user_side_cannot_write_more(host: Host) -> None:
    """SECURITY row 19 meets row 10: the user side is hostile.  It sends, within the
    protocol's shapes, the longest texts it may (4,096 characters) of characters that JSON
    escapes 6-fold.  The caps must hold on root's side: a command record stays at most
    ~1.2 KB and a turn's notices at most 21 records of that size.  This one runs root's
    monitor in this process, so it tests this checkout's code whichever venv runs it
    (imported here, so that the other tests still run against an old executable)."""
    import pwd

    from wirt_wrapper.root.scheduler import Options, Pass
    from wirt_wrapper.rules.config import load_config

    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None})
    run = Pass(load_config(str(host.config)), Options(layouts=("wirt",)),
               spawner=None)  # type: ignore[arg-type]  # no user side is forked
    run.hv.connect()
    ctx = run.monitor.turn(pwd.getpwnam(alice.name), child=None, recovering=False)
    hostile = "\u0085\udcff" * 2048
    answer = run.monitor.answer
    assert "status" in answer(ctx, {"op": "inventory", "layout": "wirt", "vms": ["web"]})
    for number in range(100):
        cid = answer(ctx, {"op": "intend", "layout": "wirt", "vm": "web", "file": f"f{number}",
                           "ino": number + 1, "rejected": hostile,
                           "hist": f"20200101-000000.{number:06d}-web-f"})["id"]
        assert answer(ctx, {"op": "run", "id": cid})["outcome"] == "rejected"
    answer(ctx, {"op": "notices", "items": [
        {"layout": "wirt", "key": f"k{n}" + hostile[:4000], "message": hostile}
        for n in range(100)]})
    run.audit.close()
    lines = host.audit.read_bytes().splitlines()
    sizes = {event: [len(line) for line in lines if f'"event":"{event}"'.encode() in line]
             for event in ("command", "notice")}
    print(f"\n[subverted] {len(lines)} records, {sum(map(len, lines))} bytes; the largest "
          f"command record {max(sizes['command'])} bytes, notice {max(sizes['notice'])}")
    assert len(sizes["command"]) == 100 and len(sizes["notice"]) == NOTICE_RECORDS + 1
    assert max(sizes["command"]) <= 1200, max(sizes["command"])
    assert max(sizes["notice"]) <= 1200, max(sizes["notice"])
