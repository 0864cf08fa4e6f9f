"""The legacy layout (~/virsh/dom-<vm>/), served by passes from the old cron line:
the real shim, run by a real wrapper user through real sudo (``deployed``).

Kept from virsh-wrapper (LEGACY.md "What we keep"): folder and file names, the
log and history name patterns, empty files and ``--disable``, oldest first.
Changed on purpose (legacy/README.md): each flaw of LEGACY.md's list has a
test here or in test_legacy_sudo.py.
"""

from __future__ import annotations

import os
import re
import stat
import time

import pytest
from conftest import Host
from legacy_support import (
    STAMP,
    Deployed,
    legacy_history,
    legacy_logs,
    log_for,
    not_owned_by,
    write_host,
)

from wirt_wrapper.rules.layouts import legacy_stamp


def test_legacy_tree_every_kind_of_entry(host: Host, deployed: Deployed) -> None:
    alice = host.add_user("alice")
    a = alice.name
    write_host(host, running={f"{a}-db": None, f"{a}-mail": None},
               off={f"{a}-web": None, f"{a}-old": None})
    # everything the old script accepted: empty start/destroy/shutdown/autostart files,
    # "--disable" in autostart, several files per VM (oldest first)
    alice.write("virsh/dom-web/start", mtime=1_000_000)
    alice.write("virsh/dom-web/autostart", mtime=1_000_100)
    alice.write("virsh/dom-db/shutdown", mtime=1_000_000)
    alice.write("virsh/dom-mail/destroy", mtime=1_000_000)
    alice.write("virsh/dom-mail/start", mtime=1_000_100)  # after destroy: works
    alice.write("virsh/dom-old/autostart", "--disable\n", mtime=1_000_000)
    # and what the old script left: log/ and history/ made by root, with root's files
    old_names = {"log": "25_Nov_13_15.15-" + a + "-dom-web-start.log",
                 "history": "25_Nov_13_15.15-dom-web-start"}
    for folder, name in old_names.items():
        (alice.home / "virsh" / folder).mkdir(mode=0o755)
        (alice.home / "virsh" / folder / name).write_text("from the old script\n")

    deployed.pass_ok()

    got = [(r["vm"], r["action"], r["outcome"], r["layout"]) for r in host.commands()]
    assert sorted(got) == sorted([
        ("web", "start", "done", "legacy"), ("web", "autostart", "done", "legacy"),
        ("db", "shutdown", "done", "legacy"), ("mail", "destroy", "done", "legacy"),
        ("mail", "start", "done", "legacy"), ("old", "autostart", "done", "legacy"),
    ]), got
    assert [vm_action[:2] for vm_action in got if vm_action[0] == "mail"] == [
        ("mail", "destroy"), ("mail", "start")]  # oldest first

    # one log file per command, the old name pattern, the outcome and the domain's state
    logs = {n: t for n, t in legacy_logs(alice).items() if n != "wirt.log"}
    assert len(logs) == 6, logs
    for name in logs:
        assert re.fullmatch(rf"{STAMP}-{a}-dom-[a-z]+-[a-z]+\.log", name), name
    assert "web start: done" in log_for(alice, "web", "start")[0]
    assert f"domain {a}-web: running (booted); autostart: no" in log_for(alice, "web",
                                                                         "start")[0]
    assert "autostart: yes" in log_for(alice, "web", "autostart")[0]
    assert "shut off" in log_for(alice, "db", "shutdown")[0]
    assert f"domain {a}-mail: running" in log_for(alice, "mail", "start")[0]
    assert "autostart --disable: done" in log_for(alice, "old", "autostart")[0]

    # the processed files, under the old history pattern, content kept
    history = legacy_history(alice)
    assert len(history) == 6
    for name in history:
        assert re.fullmatch(rf"{STAMP}-dom-[a-z]+-[a-z]+", name), name
    disable = [text for name, text in history.items() if name.endswith("-dom-old-autostart")]
    assert disable == ["--disable\n"]
    for vm in ("web", "db", "mail", "old"):
        assert os.listdir(alice.home / "virsh" / f"dom-{vm}") == []

    # root's old folders are set aside, as alice, whole and readable; the new ones are hers
    for folder, name in old_names.items():
        aside = alice.home / "virsh" / f"{folder}.virsh-wrapper"
        assert os.stat(aside).st_uid == 0
        assert (aside / name).read_text() == "from the old script\n"
    notes = (alice.home / "virsh/log/wirt.log").read_text()
    assert "~/virsh/history belonged to root" in notes and "~/virsh/log belonged" in notes
    assert "is now ~/virsh/history.virsh-wrapper" in notes
    assert "ignored" not in notes  # the set-aside folders are the tool's, not unknown
    # everything new is created by the user side, as alice, private; no wirt layout appears
    assert sorted(not_owned_by(alice, alice.home / "virsh")) == sorted(
        f"{alice.home}/virsh/{folder}.virsh-wrapper{tail}"
        for folder, name in old_names.items() for tail in ("", "/" + name))
    for folder in ("log", "history"):
        assert stat.S_IMODE(os.stat(alice.home / "virsh" / folder).st_mode) == 0o700
    assert not (alice.home / "wirt").exists()


def test_rejected_files_go_to_errorfile_and_the_run_goes_on(host: Host, deployed: Deployed) -> None:
    alice, bob = host.add_user("alice"), host.add_user("bob")
    write_host(host, off={f"{alice.name}-web": None, f"{bob.name}-web": None,
                          f"{alice.name}-db": None})
    # option injection, an unknown action, two lines; then a good command, oldest last
    alice.write("virsh/dom-web/start", f"--domain {bob.name}-web", mtime=1_000_000)
    alice.write("virsh/dom-web/reboot-now", mtime=1_000_001)
    alice.write("virsh/dom-web/autostart", "--disable\n--domain x\n", mtime=1_000_002)
    alice.write("virsh/dom-web/destroy", "-c qemu+ssh://evil/system", mtime=1_000_003)
    alice.write("virsh/dom-db/start", mtime=1_000_004)
    bob.write("virsh/dom-web/start")

    deployed.pass_ok()

    by = {(r["user"], r["vm"], r["file"]): r for r in host.commands()}
    assert by[(bob.name, "web", "start")]["outcome"] == "done"  # the others' turn still comes
    assert by[(alice.name, "db", "start")]["outcome"] == "done"
    for name in ("start", "reboot-now", "autostart", "destroy"):
        assert by[(alice.name, "web", name)]["outcome"] == "rejected", name

    history = legacy_history(alice)
    errors = sorted(n for n in history if n.startswith("ERRORFILE-"))
    assert len(errors) == 4, history
    assert all(re.fullmatch(rf"ERRORFILE-{STAMP}(-[0-9]+)?", n) for n in errors)
    assert f"--domain {bob.name}-web" in history.values()  # kept, never run
    logs = "".join(legacy_logs(alice).values())
    assert "token '--domain' is not accepted by 'start'" in logs
    assert "'reboot-now' is not an action" in logs
    assert "more than one line" in logs
    assert "token '-c' is not accepted" in logs
    # unknown actions do not stay in the spool to be looked at on every run
    assert os.listdir(alice.home / "virsh" / "dom-web") == []


def test_same_minute_commands_are_all_kept(host: Host, deployed: Deployed) -> None:
    alice = host.add_user("alice")
    write_host(host, off={f"{alice.name}-web": None})
    for content in ("", "--disable", ""):
        alice.write("virsh/dom-web/autostart", content)
        deployed.pass_ok()
    history = legacy_history(alice)
    logs = log_for(alice, "web", "autostart")
    assert sorted(history.values()) == ["", "", "--disable"]
    assert len(logs) == 3 and len(set(logs)) == 3


def test_tool_names_are_never_overwritten(host: Host, deployed: Deployed) -> None:
    """The names the tool will choose are taken in advance, by symlinks and files."""
    alice = host.add_user("alice")
    a = alice.name
    write_host(host, off={f"{a}-web": None})
    target = host.root / "precious"
    target.write_text("root's\n")
    now = time.time()
    stamps = {legacy_stamp(int((now + s) * 1e9)) for s in range(-1, 30)}
    alice.run("mkdir -p ~/virsh/log ~/virsh/history ~/virsh/dom-web")
    for stamp in stamps:
        alice.run('ln -s "$1" "$2" && echo mine > "$3"', str(target),
                  f"virsh/log/{stamp}-{a}-dom-web-start.log",
                  f"virsh/history/{stamp}-dom-web-start")
    alice.write("virsh/dom-web/start")
    deployed.pass_ok()
    assert target.read_text() == "root's\n"
    assert [r["outcome"] for r in host.commands()] == ["done"]
    history = legacy_history(alice)
    assert sum(1 for text in history.values() if text == "mine\n") == len(stamps)
    [mine] = [name for name, text in history.items() if text == ""]
    assert re.fullmatch(rf"{STAMP}-dom-web-start-2", mine)  # next to the taken name
    folder = alice.home / "virsh/log"
    logs = [name for name in legacy_logs(alice) if not (folder / name).is_symlink()]
    assert len(logs) == 1 and logs[0].endswith("-start-2.log"), logs
    assert "start: done" in (alice.home / "virsh/log" / logs[0]).read_text()


@pytest.mark.attack
def test_symlinked_log_and_history_are_not_followed(host: Host, deployed: Deployed) -> None:
    alice, bob = host.add_user("alice"), host.add_user("bob")
    write_host(host, off={f"{alice.name}-web": None, f"{bob.name}-web": None})
    victim = host.root / "victim"
    victim.mkdir()  # even a folder they could write to is not written through the link
    # alice: log/ -> a folder of root's; bob: history/ -> the same
    victim.chmod(0o777)
    for user, name in ((alice, "log"), (bob, "history")):
        user.run(f"mkdir -p ~/virsh/dom-web && ln -s {victim} ~/virsh/{name} "
                 "&& touch ~/virsh/dom-web/start")

    deployed.pass_ok()
    assert os.listdir(victim) == []
    by_user = {r["user"]: r for r in host.commands()}
    # alice's command runs (its history is fine); its log cannot be written, root's audit has it
    assert by_user[alice.name]["outcome"] == "done"
    # bob's history is unusable: his command waits, nothing is lost
    assert bob.name not in by_user
    assert os.listdir(bob.home / "virsh/dom-web") == ["start"]
    notices = [r for r in host.audit_records() if r["event"] == "notice"]
    assert any("~/virsh/log is a symbolic link" in str(r["message"]) for r in notices), notices
    assert any("~/virsh/history is a symbolic link" in str(r["message"]) for r in notices)
    assert (bob.home / "virsh/log/wirt.log").read_text().count("symbolic link") == 1


@pytest.mark.attack
def test_another_members_file_in_a_group_writable_spool(host: Host, deployed: Deployed) -> None:
    alice, bob = host.add_user("alice"), host.add_user("bob")
    write_host(host, running={f"{alice.name}-web": None})
    # what the legacy README told users to do: ~/virsh group-writable for vmguests
    alice.run(f"mkdir -p ~/virsh/dom-web && chgrp -R {host.group} ~/virsh ~ "
              "&& chmod g+rwx ~/virsh ~/virsh/dom-web && chmod g+x ~")
    bob.run(f"echo > {alice.home}/virsh/dom-web/destroy")
    deployed.pass_ok()
    [record] = host.commands()
    assert record["outcome"] == "rejected"
    assert f"owned by uid {bob.uid}" in str(record["reason"])
    errors = [n for n in legacy_history(alice) if n.startswith("ERRORFILE-")]
    assert len(errors) == 1
    assert f"owned by uid {bob.uid}" in "".join(legacy_logs(alice).values())


@pytest.mark.attack
def test_name_collision_between_a_and_a_b(host: Host, deployed: Deployed) -> None:
    a, ab = host.add_user("a"), host.add_user("a-b")
    # a's VM "b-c" and a-b's VM "c" both mean the domain "<a>-b-c"
    write_host(host, running={f"{a.name}-b-c": None})
    a.write("virsh/dom-b-c/destroy")
    ab.write("virsh/dom-c/destroy")
    deployed.pass_ok()
    records = host.commands()
    assert [r["outcome"] for r in records] == ["rejected", "rejected"], records
    assert all("is ambiguous" in str(r["reason"]) for r in records), records
    assert all("is ambiguous" in "".join(legacy_logs(u).values()) for u in (a, ab))


def test_layout_selection_and_both_layouts(host: Host) -> None:
    alice = host.add_user("alice")
    write_host(host, off={f"{alice.name}-web": None, f"{alice.name}-db": None})
    alice.write("virsh/dom-web/autostart")
    alice.write("wirt/service/vm/db/autostart")
    host.run("--layout", "wirt")
    assert [(r["layout"], r["vm"]) for r in host.commands()] == [("wirt", "db")]
    assert (alice.home / "virsh/dom-web/autostart").exists()
    host.run("--layout", "legacy")
    assert [(r["layout"], r["vm"]) for r in host.commands()][1:] == [("legacy", "web")]

    alice.write("virsh/dom-web/start")
    alice.write("wirt/service/vm/db/start")
    write_host(host, off={f"{alice.name}-web": None, f"{alice.name}-db": None},
               extra='layouts = ["wirt"]\n')
    host.run()  # the config's layouts: wirt only
    assert (alice.home / "virsh/dom-web/start").exists()
    assert not (alice.home / "wirt/service/vm/db/start").exists()


def test_unknown_entries_are_left_alone_and_reported_once(host: Host, deployed: Deployed) -> None:
    alice = host.add_user("alice")
    write_host(host, off={f"{alice.name}-web": None})
    alice.write("virsh/notes.txt", "mine")
    alice.run("mkdir -p ~/virsh/backup ~/virsh/dom-web ~/virsh/dom-")
    deployed.pass_ok()
    deployed.pass_ok()
    assert (alice.home / "virsh/notes.txt").read_text() == "mine"
    assert (alice.home / "virsh/backup").is_dir()
    notes = (alice.home / "virsh/log/wirt.log").read_text()
    assert notes.count("~/virsh/notes.txt: ignored") == 1
    assert notes.count("~/virsh/backup: ignored") == 1
    assert "expected dom-<vm>" in notes
    assert not any(n.startswith("ERRORENTITY") for n in os.listdir(alice.home / "virsh"))


def test_recovery_after_a_killed_pass_uses_the_legacy_names(host: Host, deployed: Deployed) -> None:
    """A pass died after claiming two commands: one mid-run, one after its log was written.
    The journal it left is written here the way root.monitor writes it."""
    import json

    alice = host.add_user("alice")
    a = alice.name
    write_host(host, off={f"{a}-web": None})
    stamp = "25_Nov_26_15.15.07"
    started = alice.write(f"virsh/history/{stamp}-dom-web-start")
    logged = alice.write(f"virsh/history/{stamp}-dom-web-autostart")
    alice.write(f"virsh/log/{stamp}-{a}-dom-web-autostart.log", "... done [old-2]\n")
    common = {"uid": alice.uid, "user": a, "layout": "legacy", "vm": "web", "tokens": [],
              "domain": f"{a}-web"}
    records = [
        {"id": "old-1", "stage": "begin", **common, "file": "start", "action": "start",
         "ino": started.stat().st_ino, "hist": started.name},
        {"id": "old-2", "stage": "outcome", **common, "file": "autostart",
         "action": "autostart", "ino": logged.stat().st_ino, "hist": logged.name,
         "outcome": "done", "message": "", "audit_offset": 0},
    ]
    state = host.root / "state"
    state.mkdir(mode=0o700)
    journal = state / "journal.jsonl"
    journal.write_text("".join(json.dumps(r) + "\n" for r in records))
    journal.chmod(0o600)

    deployed.pass_ok()
    deployed.pass_ok()
    assert sorted((r["id"], r["outcome"]) for r in host.commands()) == [
        ("old-1", "interrupted"), ("old-2", "done")]
    [start_log] = log_for(alice, "web", "start")
    assert "start: interrupted" in start_log
    assert f"{stamp}-{a}-dom-web-start.log" in legacy_logs(alice)
    assert log_for(alice, "web", "autostart") == ["... done [old-2]\n"]  # not written twice
