"""wirt-migrate-legacy, run as the user (no privilege): ~/virsh -> ~/wirt, losing nothing."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Host, User
from legacy_support import write_host

MIGRATE = [sys.executable, "-I", "-m", "wirt_wrapper.legacy.migrate"]


def migrate(user: User, *args: str) -> subprocess.CompletedProcess[str]:
    return user.run('exec "$@"', *MIGRATE, *args, check=False)


def tree(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry below *root*: (mode, mtime, content or link target)."""
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            what = "-> " + os.readlink(path)
        elif path.is_file():
            what = path.read_text()
        else:
            what = ""
        found[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, what)
    return found


def test_migration_keeps_pending_commands_and_history(host: Host) -> None:
    alice = host.add_user("alice")
    write_host(host, off={f"{alice.name}-web": None})
    alice.write("virsh/dom-web/start", mtime=1_000_000)
    alice.write("virsh/dom-web/autostart", "--disable\n", mtime=1_000_100)
    alice.write("virsh/dom-db/.draft", "half", mtime=1_000_000)
    alice.write("virsh/history/25_Nov_13_15.15-dom-web-start", "", mtime=900_000)
    alice.write("virsh/history/ERRORFILE-25_Nov_13_15.16", "--domain x", mtime=900_000)
    alice.write("virsh/history/ERRORENTITY-25_Nov_13_15.17/notes", "old", mtime=900_000)
    alice.write("virsh/log/25_Nov_13_15.15-alice-dom-web-start.log", "Domain started\n")
    before = tree(alice.home / "virsh")

    proc = migrate(alice)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "moved 7 entries; 0 left where they are" in proc.stdout
    assert not (alice.home / "virsh").exists()
    after = tree(alice.home / "wirt")
    moves = {"dom-web/": "service/vm/web/", "dom-db/": "service/vm/db/",
             "history/": "logs/history/", "log/": "logs/legacy/"}
    for old, (mode, mtime, what) in before.items():
        if stat.S_ISDIR(mode) and "/" not in old:
            continue  # the legacy folders themselves are gone
        new = next(new + old[len(prefix):] for prefix, new in moves.items()
                   if old.startswith(prefix))
        assert after[new] == (mode, mtime, what), old  # same file, same time, same content
    for folder in ("service/vm/web", "logs/history", "logs/legacy"):
        st = os.stat(alice.home / "wirt" / folder)
        assert st.st_uid == alice.uid and stat.S_IMODE(st.st_mode) == 0o700

    # the pending commands run in the wirt layout now, still oldest first
    host.run()
    assert [(r["layout"], r["action"], r["outcome"]) for r in host.commands()] == [
        ("wirt", "start", "done"), ("wirt", "autostart", "done")]
    assert "autostart --disable: done" in alice.vm_log("web")


@pytest.mark.attack
def test_migration_never_overwrites_nor_follows_links(host: Host) -> None:
    alice, bob = host.add_user("alice"), host.add_user("bob")
    outside = host.root / "outside"
    outside.mkdir(mode=0o777)
    outside.chmod(0o777)
    alice.write("wirt/service/vm/web/start", "--paused")  # already pending in wirt
    alice.write("virsh/dom-web/start")
    alice.write("virsh/dom-web/destroy")
    alice.run(f"ln -s {outside} ~/virsh/dom-link && ln -s /etc/passwd ~/virsh/dom-web/reboot"
              f" && mkfifo ~/virsh/dom-web/reset && ln -s {outside} ~/virsh/history")
    alice.run(f"chgrp {host.group} ~ ~/virsh ~/virsh/dom-web && chmod g+x ~ ~/virsh"
              " && chmod g+rwx ~/virsh/dom-web")
    bob.run(f"echo x > {alice.home}/virsh/dom-web/suspend")

    proc = migrate(alice)
    assert proc.returncode == 1
    out = proc.stdout
    assert "kept ~/virsh/dom-web/start: ~/wirt/service/vm/web/start exists already" in out
    assert "kept ~/virsh/dom-link: is a symbolic link" in out
    assert "kept ~/virsh/history: is a symbolic link" in out
    assert "kept ~/virsh/dom-web/reboot: is a symbolic link" in out
    assert "kept ~/virsh/dom-web/reset: is a FIFO" in out
    assert f"kept ~/virsh/dom-web/suspend: is owned by uid {bob.uid}" in out
    assert "moved ~/virsh/dom-web/destroy -> ~/wirt/service/vm/web/destroy" in out
    assert (alice.home / "wirt/service/vm/web/start").read_text() == "--paused"
    assert sorted(os.listdir(alice.home / "virsh/dom-web")) == [
        "reboot", "reset", "start", "suspend"]
    assert os.listdir(outside) == []


@pytest.mark.attack
def test_migration_into_a_symlinked_wirt_moves_nothing(host: Host) -> None:
    alice = host.add_user("alice")
    outside = host.root / "outside"
    outside.mkdir()
    outside.chmod(0o777)
    alice.write("virsh/dom-web/start")
    alice.run(f"ln -s {outside} ~/wirt")
    proc = migrate(alice)
    assert proc.returncode == 1
    assert "~/wirt is a symbolic link" in proc.stdout
    assert os.listdir(outside) == []
    assert (alice.home / "virsh/dom-web/start").exists()


def test_dry_run_changes_nothing(host: Host) -> None:
    alice = host.add_user("alice")
    alice.write("virsh/dom-web/start")
    alice.write("virsh/history/x", "")
    alice.write("wirt/service/vm/web/start")
    before = tree(alice.home)
    proc = migrate(alice, "--dry-run")
    assert proc.returncode == 1
    assert "would move ~/virsh/history/x -> ~/wirt/logs/history/x" in proc.stdout
    assert "kept ~/virsh/dom-web/start: ~/wirt/service/vm/web/start exists already" in (
        proc.stdout)
    assert tree(alice.home) == before


def test_refuses_root_and_is_quiet_without_legacy_folders(host: Host) -> None:
    proc = subprocess.run(MIGRATE, capture_output=True, text=True)
    assert proc.returncode == 2 and "not as root" in proc.stderr
    alice = host.add_user("alice")
    proc = migrate(alice)
    assert proc.returncode == 0 and "nothing to migrate" in proc.stdout


def test_root_owned_folders_of_the_old_script_are_left_and_named(host: Host) -> None:
    """The old script made log/ and history/ as root (a pass renames them *.virsh-wrapper):
    the user cannot move them; they are named, and are not a failure."""
    alice = host.add_user("alice")
    alice.write("virsh/dom-web/start")
    for folder in ("history", "log.virsh-wrapper"):
        (alice.home / "virsh" / folder).mkdir(mode=0o755)
        (alice.home / "virsh" / folder / "old").write_text("root's\n")
    proc = migrate(alice)
    assert proc.returncode == 0, proc.stdout
    assert "left ~/virsh/history: the old virsh-wrapper made it as root" in proc.stdout
    assert "left ~/virsh/log.virsh-wrapper: the old virsh-wrapper made it" in proc.stdout
    assert "moved 1 entries; 0 left where they are; 2 folders of root's left" in proc.stdout
    assert (alice.home / "wirt/service/vm/web/start").exists()
    assert (alice.home / "virsh/history/old").read_text() == "root's\n"
