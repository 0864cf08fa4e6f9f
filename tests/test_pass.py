"""Integration: whole passes through the real executable, real users, libvirt's test driver.

The test driver keeps its state in the process, so each pass starts from the
host file: these tests check what one pass did (outcomes, files, audit).
"""

from __future__ import annotations

import os
import re
import stat
import time

from conftest import Host, User

READ_AT = re.compile(r"<read-at>[^<]*</read-at>")


def owned_by(user: User, root: os.PathLike[str] | str) -> list[str]:
    """Every path below *root* that is NOT owned by *user* (should be empty)."""
    bad = []
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            st = os.lstat(os.path.join(folder, name))
            if st.st_uid != user.uid or st.st_gid != user.gid:
                bad.append(os.path.join(folder, name))
    return bad


def test_pass_over_several_users(host: Host) -> None:
    alice = host.add_user("alice")
    bob = host.add_user("bob", primary=True)  # primary-group members are served too
    host.write_config({f"{alice.name}-web": None, f"{alice.name}-db": None,
                       f"{bob.name}-mail": None})
    alice.write("wirt/service/vm/web/autostart", mtime=1_000_000)
    alice.write("wirt/service/vm/web/destroy", "--graceful\n", mtime=1_000_100)
    alice.write("wirt/service/vm/db/suspend")
    bob.write("wirt/service/vm/mail/autostart", "--disable")

    proc = host.run("--verbose")
    assert "4 done, 0 failed, 0 rejected, 0 interrupted" in proc.stdout, proc.stdout

    records = host.commands()
    got = sorted((r["user"], r["vm"], r["action"], r["outcome"]) for r in records)
    assert got == sorted([
        (alice.name, "db", "suspend", "done"),
        (alice.name, "web", "autostart", "done"),
        (alice.name, "web", "destroy", "done"),
        (bob.name, "mail", "autostart", "done"),
    ])
    # oldest first within a VM
    web = [r["action"] for r in records if r["vm"] == "web"]
    assert web == ["autostart", "destroy"]

    # the spool is empty, the files are in history, one log line each
    assert os.listdir(alice.home / "wirt/service/vm/web") == []
    assert len(alice.history()) == 3
    log = alice.vm_log("web")
    assert log.count(": done") == 2 and "destroy --graceful: done" in log
    status = alice.status("web")
    assert "<state reason=" in status and 'action="destroy"' in status
    assert "<autostart>yes</autostart>" in status
    assert "shut off" in status

    # everything the tool created in a home belongs to that user
    assert owned_by(alice, alice.home / "wirt") == []
    assert owned_by(bob, bob.home / "wirt") == []
    # the audit log is root's alone
    st = os.stat(host.audit)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600


def test_an_idle_pass_still_notices_a_touched_status(host: Host) -> None:
    """The prober skips idle users; a status.xml someone changed is rewritten anyway."""
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None})
    alice.run("mkdir -p ~/wirt/service/vm/web")
    host.run()
    status = alice.home / "wirt/info/vm/web/status.xml"
    good = status.read_text()
    host.run()  # idle: nothing to do, nothing written
    first = os.stat(status)
    journal = host.root / "state" / "journal.jsonl"
    before = os.stat(journal).st_mtime_ns
    host.run()
    assert os.stat(journal).st_mtime_ns == before  # nothing recorded, nothing rewritten
    assert (os.stat(status).st_ino, os.stat(status).st_mtime_ns) == (first.st_ino,
                                                                      first.st_mtime_ns)
    alice.run("echo scribbled > ~/wirt/info/vm/web/status.xml")
    host.run()
    # the same document, read again by that pass: only the time it was read is newer
    assert READ_AT.sub("", status.read_text()) == READ_AT.sub("", good)
    assert stat.S_IMODE(os.stat(status).st_mode) == 0o600


def test_an_idle_pass_confirms_the_state_in_one_file_per_user(host: Host) -> None:
    """Issue 15.5: an idle pass rewrites no status.xml (inode, mtime and read time stay); it
    sets the time of the one per-user ~/wirt/info/status-checked to when it read libvirt."""
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None, f"{alice.name}-db": None})
    alice.run("mkdir -p ~/wirt/service/vm/web ~/wirt/service/vm/db")
    host.run()  # a full turn writes both status.xml and makes the marker
    info = alice.home / "wirt/info"
    statuses = [info / "vm" / vm / "status.xml" for vm in ("web", "db")]
    checked = info / "status-checked"
    st = os.lstat(checked)
    assert st.st_uid == alice.uid and stat.S_ISREG(st.st_mode) and st.st_nlink == 1
    assert stat.S_IMODE(st.st_mode) == 0o600 and "modification time" in checked.read_text()
    host.run()  # the first pass through the prober
    before = {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns, p.read_bytes()) for p in statuses}
    marked = os.stat(checked).st_mtime
    everything = sorted(str(p.relative_to(alice.home)) for p in alice.home.rglob("*"))
    time.sleep(1.1)
    started = time.time()
    host.run()
    after = {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns, p.read_bytes()) for p in statuses}
    assert after == before  # not one status.xml rewritten, not even its read time
    assert sorted(str(p.relative_to(alice.home)) for p in alice.home.rglob("*")) == everything
    # the marker: set to when this pass read libvirt (after it started, before it ended)
    now = os.stat(checked).st_mtime
    assert started - 0.5 <= now <= time.time() and now > marked
    assert os.stat(checked).st_ino == st.st_ino  # the same file, only its time


def test_the_marker_is_never_followed(host: Host) -> None:
    """A link planted as status-checked is not followed by the prober or the user side."""
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None})
    alice.run("mkdir -p ~/wirt/service/vm/web")
    host.run()
    target = alice.home / "elsewhere"
    alice.run("touch -d 2001-01-01 elsewhere && rm ~/wirt/info/status-checked && "
              "ln -s ~/elsewhere ~/wirt/info/status-checked")
    for _ in range(2):  # a full turn (its status.xml is current: only the marker is odd)
        host.run()
    assert os.lstat(target).st_mtime < 1e9
    assert "status-checked: cannot be updated" in (alice.home / "wirt/logs/wirt.log").read_text()


def test_an_idle_pass_sees_a_changed_domain(host: Host) -> None:
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None})
    alice.run("mkdir -p ~/wirt/service/vm/web")
    host.run()
    host.run()
    assert "65536" in alice.status("web")
    host_xml = host.root / "etc" / "host.xml"
    host_xml.write_text(host_xml.read_text().replace("<memory>65536", "<memory>131072"))
    host.run()
    assert "131072" in alice.status("web")


def test_a_new_command_after_idle_passes_is_run(host: Host) -> None:
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None})
    alice.run("mkdir -p ~/wirt/service/vm/web")
    host.run()
    host.run()
    alice.write("wirt/service/vm/web/autostart")
    host.run()
    assert [r["outcome"] for r in host.commands()] == ["done"]


def test_missing_and_foreign_domains(host: Host) -> None:
    alice = host.add_user("alice")
    bob = host.add_user("bob")
    # alice-web is assigned to bob by metadata; alice-gone does not exist
    host.write_config({f"{alice.name}-web": bob.name})
    alice.write("wirt/service/vm/web/autostart")
    alice.write("wirt/service/vm/gone/start")
    host.run()
    by_vm = {r["vm"]: r for r in host.commands()}
    assert by_vm["web"]["outcome"] == "rejected"
    assert "assigned to another user" in str(by_vm["web"]["reason"])
    assert by_vm["gone"]["outcome"] == "failed"
    assert "no domain named" in alice.vm_log("gone")
    assert "assigned to another user" in alice.status("web")


def test_dry_run_changes_nothing(host: Host) -> None:
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None})
    alice.write("wirt/service/vm/web/start", "--domain x")
    alice.write("wirt/service/vm/web/autostart")
    before = sorted(str(p) for p in alice.home.rglob("*"))
    proc = host.run("--dry-run")
    assert "would reject" in proc.stdout and "would run autostart" in proc.stdout
    assert sorted(str(p) for p in alice.home.rglob("*")) == before
    assert not host.audit.exists() or host.commands() == []


def test_a_spool_that_cannot_be_searched_stops_no_one(host: Host) -> None:
    """chmod 0444 on a folder: readable, not searchable; the pass still serves everyone."""
    alice = host.add_user("alice")
    bob = host.add_user("bob")
    host.write_config({f"{alice.name}-web": None, f"{bob.name}-web": None})
    alice.run("mkdir -p ~/wirt/service/vm/web ~/wirt/logs && chmod 0444 ~/wirt/service/vm")
    for _ in range(2):  # the first pass has no idle cache; the second goes through the prober
        bob.write("wirt/service/vm/web/autostart")
        host.run()
    assert [(r["user"], r["outcome"]) for r in host.commands()] == [(bob.name, "done")] * 2
    assert not [r for r in host.audit_records() if r["event"] == "user-incomplete"]
    assert "cannot be searched" in (alice.home / "wirt/logs/wirt.log").read_text()


def test_stray_entries_are_reported_once_and_new_ones_too(host: Host) -> None:
    """Idle passes skip a user whose only oddities were reported; a new one is reported."""
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None})
    alice.run("mkdir -p ~/wirt/service/vm/web/sub && echo x > ~/wirt/service/vm/notes.txt")
    notices = alice.home / "wirt/logs/wirt.log"
    for _ in range(3):
        host.run()
    text = notices.read_text()
    assert text.count("notes.txt: ignored") == 1 and text.count("web/sub: ignored") == 1
    alice.run("echo y > ~/wirt/service/vm/todo.txt && mkdir ~/wirt/service/vm/web/more")
    host.run()
    host.run()
    text = notices.read_text()
    assert text.count("todo.txt: ignored") == 1 and text.count("web/more: ignored") == 1
    assert text.count("notes.txt: ignored") == 1


def test_strays_above_the_spool_are_told_once(host: Host) -> None:
    """issue 15.6: a VM folder one level too high (~/wirt/service/web/start, vm/ left out)
    was told nowhere; now once, in wirt.log, and the pass after that stays idle."""
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None})
    alice.write("wirt/service/web/start")
    alice.write("wirt/notes.txt", "mine")
    host.run()
    notices = alice.home / "wirt/logs/wirt.log"
    text = notices.read_text()
    assert ("~/wirt/service/web: ignored: is not one of wirt's folders here (vm); VM folders "
            "go in ~/wirt/service/vm/") in text
    assert text.count("~/wirt/notes.txt: ignored") == 1
    before = notices.read_bytes()
    host.run()
    host.run()
    assert notices.read_bytes() == before  # told once
    assert (alice.home / "wirt/service/web/start").exists()  # and nothing moved
    assert host.commands() == []
