"""``wirt-audit``: the admin's query over the audit log, rotated and compressed files too.

Runs the installed console script as root (and once as a user, who is
refused), on a generated log of 100,000 lines split the way logrotate
leaves it, and on a real audit log rotated by the real logrotate with the
snippet the repo ships.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import BIN, REPO, Host

from wirt_wrapper.rules.errors import CLI_EXITS, NotAllowed, UsageError

WIRT_AUDIT = str(BIN / "wirt-audit")
BASE = datetime(2026, 3, 1, tzinfo=UTC)


def audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WIRT_AUDIT, *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"}, check=False)


def line(record: dict[str, object]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"


def generate(count: int) -> list[dict[str, object]]:
    """Records shaped like the tool's, one every 10 s, a pass record every 50."""
    rng = random.Random(5)
    records: list[dict[str, object]] = []
    for n in range(count):
        when = (BASE + timedelta(seconds=10 * n)).strftime("%Y-%m-%dT%H:%M:%S%z")
        if n % 50 == 49:
            records.append({"time": when, "event": "pass", "summary": "3 users served",
                            "done": 3, "failed": 0, "rejected": 0, "interrupted": 0})
            continue
        user = f"user{rng.randrange(40)}"
        vm = rng.choice(["web", "db", "mail", "build", "x1"])
        outcome = rng.choice(["done"] * 6 + ["failed", "rejected", "interrupted"])
        action = rng.choice(["start", "shutdown", "destroy", "autostart", "status"])
        records.append({
            "time": when, "event": "command", "id": f"p-{n}", "user": user, "uid": 2000,
            "layout": "wirt", "vm": vm, "domain": f"{user}-{vm}", "file": action,
            "action": action, "params": [], "outcome": outcome,
            "reason": "" if outcome == "done" else f"reason {n} caf\u00e9", "duration": 0.01,
        })
    return records


def test_query_on_100000_lines(tmp_path: Path) -> None:
    records = generate(100_000)
    log = tmp_path / "audit.log"
    # as logrotate with delaycompress leaves it: .2.gz oldest, then .1, then the live log
    (tmp_path / "audit.log.2.gz").write_bytes(
        gzip.compress("".join(map(line, records[:30_000])).encode()))
    (tmp_path / "audit.log.1").write_text("".join(map(line, records[30_000:60_000])))
    log.write_text("".join(map(line, records[60_000:])) + '{"torn":')
    now = time.time()
    os.utime(tmp_path / "audit.log.2.gz", (now - 200, now - 200))
    os.utime(tmp_path / "audit.log.1", (now - 100, now - 100))

    since, until = BASE + timedelta(hours=24), BASE + timedelta(hours=200)
    expected = [line(r) for r in records
                if r["event"] == "command" and r["user"] == "user7"
                and r["outcome"] in ("failed", "rejected")
                and since <= datetime.strptime(str(r["time"]), "%Y-%m-%dT%H:%M:%S%z") < until]
    assert 50 < len(expected) < 1000

    started = time.monotonic()
    proc = audit("--log", str(log), "--user", "user7", "--outcome", "failed",
                 "--outcome", "rejected", "--since", since.isoformat(),
                 "--until", "2026-03-09T08:00:00+00:00", "--json")
    filtered = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines(keepends=True) == expected

    started = time.monotonic()
    proc = audit("--log", str(log), "--event", "all", "--json")
    everything = time.monotonic() - started
    assert proc.stdout.count("\n") == 100_000  # the torn last line is skipped

    started = time.monotonic()
    proc = audit("--log", str(log), "--since", "2026-03-10", "--json")  # local time
    by_time = time.monotonic() - started
    local = datetime(2026, 3, 10).astimezone()
    assert proc.stdout.count("\n") == sum(
        1 for r in records if r["event"] == "command"
        and datetime.strptime(str(r["time"]), "%Y-%m-%dT%H:%M:%S%z") >= local)

    started = time.monotonic()
    proc = audit("--log", str(log), "--vm", "db", "--action", "stop")  # alias of shutdown
    table = time.monotonic() - started
    rows = proc.stdout.splitlines()
    assert rows[0].split() == ["TIME", "USER", "VM", "ACTION", "OUTCOME", "REASON"]
    want = [r for r in records if r.get("vm") == "db" and r.get("action") == "shutdown"]
    assert len(rows) == 1 + len(want)
    assert rows[1].split()[:5] == [want[0][k] for k in ("time", "user", "vm", "action",
                                                        "outcome")]
    assert "caf\\xe9" in proc.stdout  # non-ASCII shown escaped, never raw
    print(f"\nwirt-audit over 100,000 lines in 3 files (one .gz): filtered --json "
          f"{filtered:.2f} s, --since only {by_time:.2f} s, everything --json {everything:.2f} s, "
          f"table {table:.2f} s")


def test_root_only(host: Host) -> None:
    alice = host.add_user("alice")
    proc = alice.run(f"{WIRT_AUDIT} --log /var/log/wirt/audit.log", check=False)
    assert proc.returncode == NotAllowed.exit_code == 77
    assert "run me as root" in proc.stderr


def test_bad_time_names_the_format(tmp_path: Path) -> None:
    proc = audit("--log", str(tmp_path / "audit.log"), "--since", "yesterday")
    assert proc.returncode == UsageError.exit_code == 64
    assert "'yesterday' is not a time: use 2026-11-25" in proc.stderr
    assert "(see wirt-audit --help)" in proc.stderr


# -- issue 15.10: wirt's exit table, through the real executable --------------------------
def test_exit_codes_follow_wirts_table(host: Host, tmp_path: Path) -> None:
    codes = dict(CLI_EXITS)
    log = tmp_path / "audit.log"
    log.write_text(line({"time": "2026-03-01T00:00:00+0000", "event": "command", "user": "u",
                         "vm": "web", "action": "start", "outcome": "done"}))
    log.chmod(0o600)
    assert audit("--log", str(log)).returncode == 0
    # a bad option: usage
    proc = audit("--log", str(log), "--frobnicate")
    assert (proc.returncode, codes[proc.returncode]) == (64, "usage"), proc.stderr
    assert "unrecognized arguments: --frobnicate" in proc.stderr
    proc = audit("--log", str(log), "--outcome", "fine")
    assert proc.returncode == 64 and "invalid choice: 'fine'" in proc.stderr
    # no audit log at all (no pass has run), in a folder that exists or not: not found
    for missing in (tmp_path / "none.log", tmp_path / "nofolder" / "audit.log"):
        proc = audit("--log", str(missing))
        assert (proc.returncode, codes[proc.returncode]) == (66, "not found"), proc.stderr
        assert f"audit log {missing}" in proc.stderr and "no such file" in proc.stderr
    # a config that points at a missing log says the same
    host.write_config()
    proc = audit("--config", str(host.config))
    assert proc.returncode == 66 and str(host.audit) in proc.stderr
    # a malformed config: its own code, naming the key
    bad = host.root / "etc" / "bad.toml"
    bad.write_text('audit_log = 5\n')
    proc = audit("--config", str(bad))
    assert (proc.returncode, codes[proc.returncode]) == (78, "config unsafe or malformed")
    assert "audit_log" in proc.stderr
    # the log unreadable by the caller (root's, 0600), read as a member: not allowed
    alice = host.add_user("alice")
    shown = Path(tempfile.mkdtemp(prefix="wirt-audit-", dir="/var/tmp"))  # others may look in
    try:
        shown.chmod(0o755)
        theirs = shown / "audit.log"
        shutil.copy(log, theirs)  # root's, 0600
        proc = alice.run(f"test -e {theirs} && ! test -r {theirs} && "
                         f"{WIRT_AUDIT} --log {theirs}", check=False)
        assert (proc.returncode, codes[proc.returncode]) == (77, "not allowed"), proc.stderr
        assert "run me as root" in proc.stderr
    finally:
        shutil.rmtree(shown)
    # the codes are the ones --help lists
    help_text = " ".join(audit("--help").stdout.split())
    assert "Exit status (wirt's table): 0 success, 64 usage, 66 not found, 70 internal " \
        "error, 77 not allowed, 78 config unsafe or malformed." in help_text


def test_reads_what_logrotate_rotated(host: Host, tmp_path: Path) -> None:
    """The shipped logrotate.d/wirt snippet, run by the real logrotate, between passes."""
    logrotate = shutil.which("logrotate", path="/usr/sbin:/usr/bin")
    if logrotate is None:
        pytest.skip("logrotate is not installed: run tests/setup-host.sh")
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None})
    snippet = (REPO / "logrotate.d" / "wirt").read_text()
    assert "/var/log/wirt/audit.log {" in snippet
    rules = tmp_path / "logrotate.conf"
    rules.write_text(snippet.replace("/var/log/wirt/audit.log", str(host.audit)))
    state = tmp_path / "logrotate.state"
    for n in range(3):
        alice.write("wirt/service/vm/web/start", f"--bad{n}")
        host.run()
        subprocess.run([logrotate, "--force", "--state", str(state), str(rules)], check=True,
                       capture_output=True, text=True)
        time.sleep(0.01)  # distinct modification times
    alice.write("wirt/service/vm/web/autostart")
    host.run()
    names = sorted(os.listdir(host.audit.parent))
    assert {"audit.log", "audit.log.1", "audit.log.2.gz", "audit.log.3.gz"} <= set(names)
    st = os.stat(host.audit)
    assert st.st_uid == 0 and st.st_mode & 0o077 == 0
    proc = audit("--config", str(host.config), "--user", alice.name)
    assert proc.returncode == 0, proc.stderr
    rows = [r.split() for r in proc.stdout.splitlines()[1:]]
    assert [r[3:5] for r in rows] == [["start", "rejected"]] * 3 + [["autostart", "done"]]
    assert [f"'--bad{n}'" in r for n, r in enumerate(proc.stdout.splitlines()[1:4])] == [True] * 3
