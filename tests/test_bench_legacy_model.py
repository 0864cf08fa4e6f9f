"""bench/legacy_model.sh, the benchmark's model of the legacy script, does what LEGACY.md's
"What one run did" says: a guard that the legacy figures bench_pass --legacy measures come
from a script doing the legacy work, not from one that skips it.

Real users of a group of their own and the real virsh; the domains are libvirt's test driver
(a host file naming ``<user>-vm0``), as each virsh call of the model opens it afresh.  This
host runs no syslog daemon, so logger is pointed at a Unix datagram socket of the test's
(SYSLOG_SOCKET), which receives the bytes a daemon would.
"""

from __future__ import annotations

import os
import re
import subprocess

from conftest import REPO, Host, SyslogSink, User

MODEL = REPO / "bench" / "legacy_model.sh"
STAMP = r"\d\d_[A-Z][a-z]{2}_\d\d_\d\d\.\d\d"  # date +%d_%h_%y_%H.%M in the C locale




def run_model(host: Host, syslog: SyslogSink) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", str(MODEL), host.group, f"test://{host.root}/etc/host.xml"],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "SYSLOG_SOCKET": str(syslog.path)},
    )


def names(user: User, folder: str) -> list[str]:
    return sorted(os.listdir(user.home / "virsh" / folder))


def test_one_run_runs_moves_logs_and_leaves_unknown_actions(
        host: Host, syslog_sink: SyslogSink) -> None:
    user = host.add_user("a")
    host.write_config({f"{user.name}-vm0": None, f"{user.name}-vm1": None})
    user.write("virsh/dom-vm0/autostart")
    user.write("virsh/dom-vm1/autostart", "--disable")  # content appended to virsh's line
    user.write("virsh/dom-vm0/frobnicate")
    user.write("virsh/stray", "x")

    proc = run_model(host, syslog_sink)

    assert proc.returncode == 0, proc.stderr
    assert names(user, "dom-vm0") == ["frobnicate"]  # unsupported: left in place
    assert names(user, "dom-vm1") == []
    assert "stray" not in names(user, ".")
    history = names(user, "history")
    assert len(history) == 3, history
    assert any(re.fullmatch(f"ERRORENTITY-{STAMP}", name) for name in history), history
    for vm in ("vm0", "vm1"):
        assert any(re.fullmatch(f"{STAMP}-dom-{vm}-autostart", name) for name in history)
    logs = {name: (user.home / "virsh/log" / name).read_text() for name in names(user, "log")}
    outputs = {}
    for name, text in logs.items():
        found = re.fullmatch(f"{STAMP}-{user.name}-dom-(vm[01])-autostart\\.log", name)
        assert found, name
        outputs[found.group(1)] = text
    assert f"Domain '{user.name}-vm0' marked as autostarted" in outputs["vm0"]
    assert f"Domain '{user.name}-vm1' unmarked as autostarted" in outputs["vm1"]
    # made as root in the user's home: the flaw wirt renames away (legacy/README.md)
    for folder in ("log", "history"):
        assert (user.home / "virsh" / folder).stat().st_uid == 0
    assert any(f"unsupported action frobnicate for {user.name}-vm0" in line
               for line in syslog_sink.lines())


def test_a_bad_file_ends_the_whole_run(host: Host, syslog_sink: SyslogSink) -> None:
    first, second = host.add_user("a"), host.add_user("b")  # in this order in /etc/group
    host.write_config({f"{first.name}-vm0": None, f"{second.name}-vm0": None})
    first.write("virsh/dom-vm0/start;reboot")
    second.write("virsh/dom-vm0/autostart")

    proc = run_model(host, syslog_sink)

    assert proc.returncode == 1
    assert names(first, "dom-vm0") == []
    assert [re.fullmatch(f"ERRORFILE-{STAMP}", n) is not None
            for n in names(first, "history")] == [True]
    assert names(second, "dom-vm0") == ["autostart"]  # waits for the next run
    assert not (second.home / "virsh" / "log").exists()
    assert any("bad file name" in line for line in syslog_sink.lines())

    second.write("virsh/dom-vm0/autostart", "--disable\n--domain other")  # two lines
    proc = run_model(host, syslog_sink)
    assert proc.returncode == 1
    assert names(second, "dom-vm0") == []
    assert any(re.fullmatch(f"ERRORFILE-{STAMP}", n) for n in names(second, "history"))
    assert names(second, "log") == []  # nothing ran
