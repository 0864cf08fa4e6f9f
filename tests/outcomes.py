"""Exactly one outcome per command file: the check shared by the overlap and crash tests.

Each command file the test wrote has an identity (user, VM, file name) and a
fingerprint (mtime and content).  After the passes, every identity must have
exactly one history entry (the same file: same mtime and content), exactly one
audit ``command`` record, and exactly one line in the VM's log, all with the
same command id; the spools are empty and root's journal holds nothing open.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import psutil
from conftest import Host, User

Identity = tuple[str, str, str]  # user, vm, file
HISTORY = re.compile(r"\d{8}-\d{6}\.\d{6}-(?P<vm>[A-Za-z0-9][A-Za-z0-9_.]*)-(?P<file>[a-z]+)"
                     r"(?:-\d+)?")
LOG_LINE = re.compile(r"\(file (?P<file>[^,]+), kept as ~/wirt/logs/history/(?P<hist>\S+)\) "
                      r"\[(?P<id>[0-9a-f]+-\d+)\]$")
OUTCOMES = {"done", "failed", "rejected", "interrupted"}


def descendants(pid: int) -> list[int]:
    """Every live descendant of *pid* (the pass forks a spawner, which forks user sides)."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def write_commands(user: User, vms: list[str], files: list[tuple[str, str]],
                   base_mtime: int) -> dict[Identity, tuple[int, bytes]]:
    """Write every (file, content) into every VM folder, as the user; distinct mtimes."""
    script = []
    for vm in vms:
        script.append(f"mkdir -p wirt/service/vm/{vm}")
        for name, content in files:
            script.append(f"printf %s '{content}' > wirt/service/vm/{vm}/{name}")
    user.run(" && ".join(script))
    made: dict[Identity, tuple[int, bytes]] = {}
    mtime = base_mtime
    for vm in vms:
        for name, content in files:
            path = user.home / "wirt/service/vm" / vm / name
            mtime += 1_000_000  # 1 ms apart: a stable order, a unique fingerprint
            os.utime(path, ns=(mtime, mtime))
            made[(user.name, vm, name)] = (mtime, content.encode())
    return made


def check_exactly_once(host: Host, users: list[User],
                       expected: dict[Identity, tuple[int, bytes]]) -> Counter[str]:
    """Assert the exactly-once invariants; returns the count of each outcome."""
    # the spools are empty
    for user in users:
        spool = user.home / "wirt/service/vm"
        left = [str(p) for p in spool.glob("*/*") if not p.name.startswith(".")]
        assert left == [], f"command files left in the spool: {left}"

    # one history entry per file, the same file (mtime and content), nothing else but the
    # empty placeholders a kill between placing one and claiming the file over it left
    # behind: kept (nothing in a home is deleted), and the user told so in wirt.log
    history: dict[Identity, list[Path]] = {}
    for user in users:
        notices = user.home / "wirt/logs/wirt.log"
        told = notices.read_text() if notices.exists() else ""
        for entry in sorted((user.home / "wirt/logs/history").iterdir()):
            if entry.lstat().st_size == 0 and (
                    f"~/wirt/logs/history/{entry.name} is an empty file left from an "
                    "interrupted pass") in told:
                continue
            match = HISTORY.fullmatch(entry.name)
            assert match, f"unexpected history entry {entry}"
            history.setdefault((user.name, match["vm"], match["file"]), []).append(entry)
    assert set(history) == set(expected), (
        f"missing: {sorted(set(expected) - set(history))[:5]}; "
        f"extra: {sorted(set(history) - set(expected))[:5]}")
    doubled = sorted((k, [(p.name, p.lstat().st_size, p.lstat().st_mtime_ns) for p in v])
                     for k, v in history.items() if len(v) != 1)
    assert not doubled, f"{len(doubled)} files in history more than once: {doubled[:3]}"
    for key, (mtime, content) in expected.items():
        (entry,) = history[key]
        st = entry.lstat()
        assert (st.st_mtime_ns, entry.read_bytes()) == (mtime, content), f"{entry} is not {key}"

    # one audit record per file, unique ids
    records = [json.loads(line) for line in host.audit.read_text().splitlines()]
    commands = [r for r in records if r["event"] == "command"]
    per_file = Counter((r["user"], r["vm"], r["file"]) for r in commands)
    assert set(per_file) == set(expected), f"audit: {set(expected) ^ set(per_file)}"
    twice = {k: n for k, n in per_file.items() if n != 1}
    assert not twice, f"audit records more than one outcome: {twice}"
    ids = Counter(r["id"] for r in commands)
    assert max(ids.values()) == 1, "a command id has two audit records"
    assert {r["outcome"] for r in commands} <= OUTCOMES
    by_id = {r["id"]: r for r in commands}

    # one log line per command id, naming the history entry of that very file
    logged: Counter[str] = Counter()
    for user in users:
        for log in (user.home / "wirt/logs/vm").glob("*.log"):
            for line in log.read_text().splitlines():
                match = LOG_LINE.search(line)
                assert match, f"{log}: unexpected line {line!r}"
                cid = match["id"]
                logged[cid] += 1
                record = by_id.get(cid)
                assert record is not None, f"{log}: line for an unknown id: {line}"
                key = (record["user"], record["vm"], record["file"])
                assert user.name == record["user"] and log.stem == record["vm"], line
                assert history[key][0].name == match["hist"], line
                assert f": {record['outcome']}" in line, line
    assert set(logged) == set(by_id), f"ids without a log line: {set(by_id) - set(logged)}"
    assert max(logged.values()) == 1, f"logged twice: {[k for k, n in logged.items() if n > 1]}"

    # root's journal has nothing open
    journal = host.root / "state" / "journal.jsonl"
    assert not journal.exists() or journal.read_bytes() == b"", journal.read_text()
    return Counter(r["outcome"] for r in commands)
