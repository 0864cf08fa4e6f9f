"""The ``wirt`` CLI, run as real users (never root) against real passes of ``virsh_wrapper``.

libvirt's test driver provides the domains (each pass starts again from the
host file), except for the admin-assign scenario, which needs a libvirtd that
keeps what ``wirt admin assign`` wrote between processes (qemu:///system).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, REPO, Host, User, passes, readable_config, remove_user, sh

from wirt_wrapper.cli.main import build_parser
from wirt_wrapper.rules import settings as settings_rules
from wirt_wrapper.rules import status as status_xml
from wirt_wrapper.rules.actions import ACTIONS
from wirt_wrapper.rules.errors import CLI_EXITS

WIRT = str(BIN / "wirt")


# The members' readable copy of the test's site config (set by the `site` fixture), so
# that no /etc/wirt/wirt.toml of the machine leaks into a test.
SITE_CONFIG: list[str] = []


def wirt(user: User, *args: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    """Run the installed ``wirt`` as *user* (uid, gid and groups), in their home."""
    prefix = ["env", *(f"{k}={v}" for k, v in (env or {}).items())] if env else []
    config = ["--config", SITE_CONFIG[-1]] if SITE_CONFIG else []
    return user.run('exec "$@"', *prefix, WIRT, *config, *args, check=False)


@contextmanager
def published(host: Host) -> Iterator[str]:
    """The site config, readable by members, used by every ``wirt`` call meanwhile."""
    with readable_config(host) as path:
        SITE_CONFIG.append(path)
        try:
            yield path
        finally:
            SITE_CONFIG.remove(path)


@pytest.fixture
def site(host: Host) -> Iterator[Host]:
    """alice (VMs web, db) and bob (VM mail) in the group; alice-db is assigned to bob."""
    alice, bob = host.add_user("alice"), host.add_user("bob")
    host.write_config({f"{alice.name}-web": None, f"{alice.name}-db": bob.name,
                       f"{bob.name}-mail": None})
    with published(host):
        yield host


def spool(user: User, vm: str) -> Path:
    return user.home / "wirt/service/vm" / vm


# -- write, wait, read back ------------------------------------------------------------
def test_create_write_wait_and_read_back(site: Host) -> None:
    alice = site.users[0]
    proc = wirt(alice, "create", "web")
    assert proc.returncode == 0, proc.stderr
    folder = spool(alice, "web")
    st = folder.lstat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == alice.uid

    # written, not run: the file is the user's, 0600, complete; no temp file left
    proc = wirt(alice, "autostart", "web", "--disable")
    assert proc.returncode == 0, proc.stderr
    command = folder / "autostart"
    st = command.lstat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (alice.uid, 0o600)
    assert command.read_text() == "--disable\n"
    assert os.listdir(folder) == ["autostart"]
    site.run()

    with passes(site):
        proc = wirt(alice, "autostart", "web", "--wait", "--timeout", "60")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "web: autostart: done"
    assert proc.stderr == ""  # not a terminal: no progress indicator

    # (each test-driver pass starts from the host file: autostart is off again)
    status = json.loads(wirt(alice, "status", "web", "--json").stdout)
    assert status["status"]["domain"] == f"{alice.name}-web"
    assert status["status"]["graphics"] == {"type": "vnc", "listen": "127.0.0.1", "port": "5901",
                                           "protected": "yes"}  # the fixture's is locked
    assert status["last"]["action"] == "autostart" and status["last"]["outcome"] == "done"
    text = wirt(alice, "status", "web").stdout
    assert "console:" in text and \
        "vnc 127.0.0.1 port 5901 (display :1); password: wirt console" in text

    listed = json.loads(wirt(alice, "list", "--json").stdout)
    assert [(v["vm"], v["state"], v["last"]["outcome"]) for v in listed] == [
        ("web", "running", "done")]
    table = wirt(alice, "list").stdout.splitlines()
    assert table[0].split()[:3] == ["VM", "STATE", "AUTOSTART"]
    row = table[1].split()
    assert row[:2] == ["web", "running"] and row[2] in ("yes", "no") and row[3] == "autostart"

    history = json.loads(wirt(alice, "history", "web", "--json").stdout)
    assert [(h["action"], h["params"], h["outcome"]) for h in history] == [
        ("autostart", "--disable", "done"), ("autostart", "", "done")]
    for item in history:
        assert (alice.home / item["history"][2:]).is_file()
    log = wirt(alice, "log", "web").stdout
    assert log.count(": done") == 2 and log == alice.vm_log("web")
    # issue 15.10: scripts get fields, not raw strings; a table fits the terminal
    fields = json.loads(wirt(alice, "log", "web", "--json").stdout)
    assert [(f["action"], f["params"], f["outcome"]) for f in fields] == [
        ("autostart", ["--disable"], "done"), ("autostart", [], "done")]
    assert all(f["history"] == h["history"] and f["file"] == "autostart" and f["id"]
               for f, h in zip(fields, history, strict=True))
    narrow = wirt(alice, "history", "web", env={"COLUMNS": "60"}).stdout.splitlines()
    assert narrow[0].startswith("TIME") and all(len(line) <= 60 for line in narrow), narrow


def test_wait_json_and_the_refresh_action(site: Host) -> None:
    alice = site.users[0]
    wirt(alice, "create", "web")
    with passes(site):
        proc = wirt(alice, "refresh", "web", "--wait", "--json", "--timeout", "60")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["action"], data["outcome"], data["stage"]) == ("status", "done", "handled")
    assert data["history"].startswith("~/wirt/logs/history/") and data["history"].endswith(
        "-web-status")
    assert "(file status, kept as " + data["history"] + ")" in data["log"]
    assert (alice.home / "wirt/info/vm/web/status.xml").is_file()


# -- exit status per outcome -------------------------------------------------------------
def test_exit_status_per_outcome(site: Host) -> None:
    alice = site.users[0]
    for vm in ("web", "db", "gone"):
        assert wirt(alice, "create", vm).returncode == 0
    with passes(site):
        done = wirt(alice, "autostart", "web", "--wait", "--timeout", "60")
        failed = wirt(alice, "start", "gone", "--wait", "--timeout", "60")
        rejected = wirt(alice, "suspend", "db", "--wait", "--timeout", "60")
    assert done.returncode == 0, done.stderr
    assert failed.returncode == 1, failed.stderr
    assert failed.stdout.startswith("gone: start: failed: ") and "no domain named" in failed.stdout
    assert rejected.returncode == 2, rejected.stderr
    assert "rejected: " in rejected.stdout and "assigned to another user" in rejected.stdout

    # no pass: timed out (4), the file stays; a second one is refused (5)
    timed_out = wirt(alice, "reset", "web", "--wait", "--timeout", "0.5")
    assert timed_out.returncode == 4
    assert "no pass has picked it up" in timed_out.stderr
    assert (spool(alice, "web") / "reset").is_file()
    again = wirt(alice, "reset", "web")
    assert again.returncode == 5 and "already waiting" in again.stderr


def started(user: User, *args: str) -> subprocess.Popen[str]:
    """``wirt`` as *user*, in the background (to run passes while it waits)."""
    return subprocess.Popen(
        ["/usr/sbin/runuser", "-u", user.name, "--", WIRT, "--config", SITE_CONFIG[-1], *args],
        cwd=user.home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"HOME": str(user.home), "PATH": "/usr/bin:/bin"},
    )


def appears(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), path


# -- issue 15.4: shutdown and reboot --wait wait for the state, not only for done ----------
def test_shutdown_wait_ends_when_status_says_shut_off(site: Host) -> None:
    """The test driver powers off at once: done says so, and the wait ends with it (exit 0)."""
    alice = site.users[0]
    wirt(alice, "create", "web")
    waiting = started(alice, "shutdown", "web", "--wait", "--timeout", "60")
    appears(spool(alice, "web") / "shutdown")
    site.run()  # one pass: nothing else rewrites status.xml (the driver would boot it again)
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == "web: shutdown: done: asked the guest to power off; it is shut off"
    assert lines[1].startswith("web: the guest powered off: it is shut off (as of "), out


def test_reboot_wait_needs_a_later_pass(site: Host) -> None:
    """A reboot inside QEMU shows libvirt no other state: --wait ends only when a pass after
    the request read the guest running again; without one it says so and exits 4."""
    alice = site.users[0]
    wirt(alice, "create", "web")
    waiting = started(alice, "reboot", "web", "--wait", "--timeout", "4")
    appears(spool(alice, "web") / "reboot")
    site.run()
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 4, err
    assert out == "web: reboot: done: asked the guest to reboot; it is running\n"
    assert err.startswith("wirt: web: no pass saw the guest running again after the reboot "
                          "request within 4 s; it is running (booted), as of "), err
    assert err.rstrip().endswith("`wirt reset web` resets it hard"), err

    waiting = started(alice, "reboot", "web", "--wait", "--timeout", "60")
    appears(spool(alice, "web") / "reboot")
    site.run()
    time.sleep(1.2)  # the log line's time has whole seconds: the next pass reads later
    site.run()
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert out.splitlines()[1].startswith("web: the guest is running again (a pass read it "
                                          "after the reboot request"), out


def test_shutdown_wait_json_says_whether_it_settled(site: Host) -> None:
    alice = site.users[0]
    wirt(alice, "create", "web")
    waiting = started(alice, "stop", "web", "--wait", "--json", "--timeout", "60")
    appears(spool(alice, "web") / "shutdown")
    site.run()
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    data = json.loads(out)
    assert (data["outcome"], data["settled"], data["state"], data["stale"]) == (
        "done", True, "shut off", False)
    assert data["message"] == "asked the guest to power off; it is shut off"


# -- issue 15.5: the state with its age ------------------------------------------------------
def test_status_and_list_show_the_age_and_stale(site: Host) -> None:
    """status.xml's read time and the per-user status-checked time give "as of"; older than
    two pass intervals ([pass] interval_seconds) is stale."""
    alice = site.users[0]
    wirt(alice, "create", "web")
    site.run()
    text = wirt(alice, "status", "web").stdout
    state = next(line for line in text.splitlines() if line.startswith("state:"))
    assert " (as of " in state and " s ago)" in state and "stale" not in state, text
    listed = json.loads(wirt(alice, "list", "--json").stdout)[0]
    assert listed["stale"] is False and 0 <= listed["age_seconds"] < 60
    assert listed["status"]["read_at"] <= listed["as_of"]

    # a state nobody confirmed for 300 s (> 2 x 120 s): read time and marker set back
    status = alice.home / "wirt/info/vm/web/status.xml"
    checked = alice.home / "wirt/info/status-checked"
    old = time.time() - 300
    stamp = status_xml.stamp(old)
    data = status.read_text()
    start = data.index("<read-at>") + len("<read-at>")
    status.write_text(data[:start] + stamp + data[data.index("</read-at>"):])
    os.utime(checked, (old, old))
    text = wirt(alice, "status", "web").stdout
    assert "5 min ago, stale: no pass has confirmed it for more than two pass intervals " \
        "(240 s)" in text, text
    assert wirt(alice, "list").stdout.splitlines()[1].endswith("5 min ago, stale")
    assert json.loads(wirt(alice, "list", "--json").stdout)[0]["stale"] is True

    # a shorter interval in the site config makes a younger state stale
    site.extra_config = "[pass]\ninterval_seconds = 10\n"
    site.write_config({f"{alice.name}-web": None, f"{alice.name}-db": site.users[1].name,
                       f"{site.users[1].name}-mail": None})
    site.run()  # an idle pass: the marker says "confirmed now"
    with published(site):
        fresh = json.loads(wirt(alice, "status", "web", "--json").stdout)
        assert fresh["stale"] is False and fresh["age_seconds"] < 20
        os.utime(checked, (time.time() - 25, time.time() - 25))
        assert json.loads(wirt(alice, "status", "web", "--json").stdout)["stale"] is True


def test_exit_status_interrupted(site: Host) -> None:
    """A pass killed right after it claimed the command: the next pass records 'interrupted'."""
    alice = site.users[0]
    wirt(alice, "create", "web")
    waiting = subprocess.Popen(
        ["/usr/sbin/runuser", "-u", alice.name, "--", WIRT, "autostart", "web", "--wait",
         "--timeout", "60", "--config", SITE_CONFIG[-1]],
        cwd=alice.home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"HOME": str(alice.home), "PATH": "/usr/bin:/bin"},
    )
    command = spool(alice, "web") / "autostart"
    deadline = time.monotonic() + 20
    while not command.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    # The first rename of a pass is the claim (spool -> history); strace holds the pass
    # right after it, long enough to kill it there.
    killed = subprocess.Popen(
        ["strace", "-f", "-o", "/dev/null", "-e", "trace=rename,renameat,renameat2",
         "-e", "inject=rename,renameat,renameat2:delay_exit=5000000",
         str(BIN / "virsh_wrapper"), "--config", str(site.config)],
        start_new_session=True, env={"PATH": "/usr/bin:/bin"},
    )
    deadline = time.monotonic() + 20
    while command.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not command.exists()
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    site.run()
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 3, err
    assert out.startswith("web: autostart: interrupted: ")


def test_wait_finds_its_line_after_the_log_was_rotated(site: Host) -> None:
    """The pass rotates web.log between our line and the next one: the line is in web.log.1.gz.

    The waiting CLI is stopped (SIGSTOP) while the pass runs, so it can only find the
    line in the rotated generation.
    """
    alice = site.users[0]
    site.extra_config = "[limits]\nlog_max_bytes = 100\n"
    site.write_config({f"{alice.name}-web": None})
    with published(site):
        wirt(alice, "create", "web")
        # Not through runuser: runuser stops itself when its child stops, and may miss
        # the SIGCONT; here the CLI process is the child, as alice (uid, gid, groups).
        waiting = subprocess.Popen(
            [WIRT, "autostart", "web", "--wait", "--timeout", "60", "--config", SITE_CONFIG[-1]],
            cwd=alice.home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={"HOME": str(alice.home), "PATH": "/usr/bin:/bin"}, user=alice.uid,
            group=alice.gid, extra_groups=os.getgrouplist(alice.name, alice.gid))
        deadline = time.monotonic() + 20
        while not (spool(alice, "web") / "autostart").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        waiting.send_signal(signal.SIGSTOP)
        try:
            os.utime(spool(alice, "web") / "autostart", (1_000_000, 1_000_000))  # runs first
            assert wirt(alice, "suspend", "web").returncode == 0
            site.run()
        finally:
            waiting.send_signal(signal.SIGCONT)
        out, err = waiting.communicate(timeout=60)
    logs = alice.home / "wirt/logs/vm"
    assert (logs / "web.log.1.gz").exists() and "autostart" not in (logs / "web.log").read_text()
    assert waiting.returncode == 0, err
    assert out.strip() == "web: autostart: done"
    history = json.loads(wirt(alice, "history", "web", "--json").stdout)
    assert [h["action"] for h in history] == ["autostart", "suspend"]


# -- atomic writes against running passes ---------------------------------------------------
def test_never_seen_half_written(site: Host) -> None:
    """strace makes every write(2) of the CLI take 0.3 s while passes run back to back.

    A CLI that wrote the file in place would expose it empty, and a pass would run
    ``autostart`` without ``--disable`` (or ``shutdown`` without its mode).
    """
    alice = site.users[0]
    wirt(alice, "create", "web")
    sent = [("autostart", "--disable"), ("shutdown", "--mode", "acpi"),
            ("autostart", "--disable"), ("reboot", "--mode", "agent")]
    with passes(site, interval=0.0):
        for command in sent:
            proc = alice.run(
                'exec strace -f -o /dev/null -e trace=write '
                '-e inject=write:delay_enter=300000 "$@"',
                WIRT, *command, "web", check=False)
            assert proc.returncode == 0, proc.stderr
        deadline = time.monotonic() + 30
        while os.listdir(spool(alice, "web")) and time.monotonic() < deadline:
            time.sleep(0.1)
    got = [(r["action"], r["params"]) for r in site.commands()]
    assert got == [(c[0], list(c[1:])) for c in sent]
    assert all(r["outcome"] != "rejected" for r in site.commands())


# -- two users --------------------------------------------------------------------------------
def test_users_only_reach_their_own_spool(site: Host) -> None:
    alice, bob = site.users
    wirt(alice, "create", "web")
    wirt(bob, "create", "mail")
    listed = json.loads(wirt(bob, "list", "--json").stdout)
    assert [v["vm"] for v in listed] == ["mail"]

    # $HOME does not choose the spool: the password database does
    proc = wirt(bob, "start", "web", env={"HOME": str(alice.home)})
    assert proc.returncode == 66 and "unknown VM 'web'" in proc.stderr
    proc = wirt(bob, "list", "--json", env={"HOME": str(alice.home)})
    assert [v["vm"] for v in json.loads(proc.stdout)] == ["mail"]
    # no VM name can leave the spool
    for name in ("../../../" + alice.name + "/wirt/service/vm/web", "..", "a/b", ".hidden"):
        proc = wirt(bob, "start", name)
        assert proc.returncode == 64, (name, proc.stderr)
        assert wirt(bob, "create", name).returncode == 64
    assert os.listdir(spool(alice, "web")) == []
    assert os.listdir(bob.home / "wirt/service/vm") == ["mail"]


def test_planted_links_and_files_are_not_followed(site: Host) -> None:
    """alice made her spool group-writable; bob plants links and a file in it."""
    alice, bob = site.users
    wirt(alice, "create", "web")
    wirt(bob, "create", "mail")
    alice.run(f'chgrp {site.group} ~/wirt ~/wirt/service ~/wirt/service/vm ~/wirt/service/vm/web'
              ' && chmod 2775 ~/wirt ~/wirt/service ~/wirt/service/vm ~/wirt/service/vm/web')
    target = bob.home / "wirt/service/vm/mail"
    bob.run(f'ln -s {target} {spool(alice, "db")} && '
            f'ln -s {target}/start {spool(alice, "web")}/start && '
            f'touch {spool(alice, "web")}/reset')

    proc = wirt(alice, "start", "db")
    assert proc.returncode == 77 and "symbolic link" in proc.stderr, proc.stderr
    proc = wirt(alice, "start", "web")
    assert proc.returncode == 77 and "symbolic link" in proc.stderr, proc.stderr
    assert "writable by others" in proc.stderr
    proc = wirt(alice, "reset", "web")
    assert proc.returncode == 77 and f"owned by uid {bob.uid}" in proc.stderr, proc.stderr
    assert os.listdir(target) == []  # nothing reached bob's folder
    assert (spool(alice, "web") / "start").is_symlink()
    assert (spool(alice, "web") / "reset").stat().st_uid == bob.uid  # left alone
    assert "is a symbolic link" in wirt(alice, "list").stderr


def test_names_chosen_by_another_member_cannot_drive_the_terminal(site: Host) -> None:
    """bob drops a file whose name holds terminal escapes into alice's group-writable folder.

    The pass escapes the name in the log; a log line from an older wirt, which did not,
    is escaped by the CLI when it prints.
    """
    alice, bob = site.users
    wirt(alice, "create", "web")
    folders = "~/wirt ~/wirt/service ~/wirt/service/vm ~/wirt/service/vm/web"
    alice.run(f"chgrp {site.group} {folders} && chmod 2775 {folders}")
    bob.run(f"touch \"{spool(alice, 'web')}/$(printf 'x\\033]0;owned\\007\\033[2J')\"")
    site.run()
    alice.run("printf '2026-01-01T00:00:00+0000 web y\\033[2J: rejected: old "
              "(file y\\033[2J, kept as ~/wirt/logs/history/old) [1-1]\\n' "
              ">> ~/wirt/logs/vm/web.log")
    assert "\x1b" in alice.vm_log("web")
    for args in (("log", "web"), ("history", "web"), ("list",), ("status", "web")):
        proc = wirt(alice, *args)
        assert proc.returncode == 0, proc.stderr
        assert "\x1b" not in proc.stdout + proc.stderr, args
    log = wirt(alice, "log", "web").stdout
    assert "x\\x1b]0;owned" in log and "y\\x1b[2J" in log


# -- defaults, config, errors -------------------------------------------------------------------
def test_default_vm_from_the_user_config(site: Host) -> None:
    alice = site.users[0]
    for vm in ("web", "db", "mail"):
        wirt(alice, "create", vm)
    proc = wirt(alice, "suspend")
    assert proc.returncode == 64 and "which VM?" in proc.stderr
    alice.write(".wirt.json", '{"machine": "db"}')
    assert wirt(alice, "suspend").returncode == 0
    assert (spool(alice, "db") / "suspend").exists()
    alice.write(".config/wirt/config.toml", 'vm = "web"\n')
    assert wirt(alice, "suspend").returncode == 0
    assert (spool(alice, "web") / "suspend").exists()
    assert wirt(alice, "suspend", "--vm", "mail").returncode == 0
    assert (spool(alice, "mail") / "suspend").exists()
    proc = wirt(alice, "suspend", "web", "--vm", "mail")
    assert proc.returncode == 64 and "two VMs" in proc.stderr
    alice.write(".config/wirt/config.toml", 'vm = [1]\n')
    proc = wirt(alice, "status")
    assert proc.returncode == 64 and "config.toml: vm must be a string" in proc.stderr


def test_clear_errors(site: Host) -> None:
    alice = site.users[0]
    proc = wirt(alice, "start", "web")
    assert proc.returncode == 66
    assert "no wirt spool yet" in proc.stderr and "wirt create web" in proc.stderr
    wirt(alice, "create", "web")
    proc = wirt(alice, "start", "nope")
    assert proc.returncode == 66
    assert "unknown VM 'nope'" in proc.stderr and "Your VMs: web" in proc.stderr
    assert "wirt create nope" in proc.stderr
    proc = wirt(alice, "launch", "web")
    assert proc.returncode == 64
    assert "'launch' is not a wirt command" in proc.stderr
    assert "shutdown (stop)" in proc.stderr and "autostart" in proc.stderr
    proc = wirt(alice, "shutdown", "web", "--force")
    assert proc.returncode == 64 and "--force" in proc.stderr
    assert "wirt: wirt" not in proc.stderr and "(see wirt shutdown --help)" in proc.stderr, proc
    # issue 15.9: suggestions, --version, help, options that would do nothing
    proc = wirt(alice, "strat", "web")
    assert proc.returncode == 64 and "did you mean 'start'?" in proc.stderr
    proc = wirt(alice, "--version")
    assert proc.returncode == 0 and proc.stdout.startswith("wirt ")
    proc = wirt(alice, "help", "start")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: wirt start")
    assert "--paused" in proc.stdout
    assert "start with the vCPUs paused; wirt resume continues" in " ".join(proc.stdout.split())
    # a usage error found after parsing points at the subcommand's help too
    proc = wirt(alice, "refresh", "web", "--wait", "--timeout", "5", "--vm", "db")
    assert proc.returncode == 64 and "two VMs given" in proc.stderr
    assert proc.stderr.rstrip().endswith("(see wirt refresh --help)"), proc.stderr
    proc = wirt(alice, "refresh", "web", "--bogus")
    assert "(see wirt refresh --help)" in proc.stderr  # not status's, which is another command
    proc = wirt(alice, "start", "web", "--timeout", "5")
    assert proc.returncode == 64 and "--timeout only counts with --wait" in proc.stderr
    assert os.listdir(spool(alice, "web")) == []  # refused before anything was written
    proc = wirt(alice, "shutdown", "web", "--mode", "hard")
    assert proc.returncode == 64 and "'acpi', 'agent'" in proc.stderr
    assert os.listdir(spool(alice, "web")) == []

    # not in the group (the site config is readable: see SITE_CONFIG)
    name = f"{site.prefix}eve"
    sh("useradd", "-m", "-U", name)
    try:
        import pwd

        entry = pwd.getpwnam(name)
        eve = User(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))
        wirt(eve, "create", "web")
        proc = wirt(eve, "start", "web")
        assert proc.returncode == 77
        assert f"not in the group '{site.group}'" in proc.stderr
        assert f"adduser {name} {site.group}" in proc.stderr
        assert os.listdir(spool(eve, "web")) == []
        ok = wirt(alice, "start", "web")
        assert ok.returncode == 0, ok.stderr
    finally:
        remove_user(name)

    # root: no spool of its own; members: no admin verbs
    root = subprocess.run([WIRT, "list"], capture_output=True, text=True)
    assert root.returncode == 77 and "wirt admin" in root.stderr
    proc = wirt(alice, "admin", "audit", alice.name)
    assert proc.returncode == 77 and "run it as root" in proc.stderr


def test_joining_the_group_counts_without_a_new_login(site: Host) -> None:
    """README, after installing: `adduser alice vmguests` counts from the next pass; a
    session the member opened before (whose groups are fixed) need not log in again."""
    alice, bob = site.users
    name = f"{site.prefix}dan"
    sh("useradd", "-m", "-U", name)
    try:
        entry = pwd.getpwnam(name)
        dan = User(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))
        assert wirt(dan, "create", "web").returncode == 0
        session = subprocess.Popen(  # logged in before the admin added dan to the group
            ["/usr/sbin/runuser", "-u", name, "--", "sh", "-c",
             'read go; id -G; exec "$@"', "sh", WIRT, "--config", SITE_CONFIG[-1],
             "autostart", "web"],
            cwd=dan.home, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
            env={"HOME": str(dan.home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        sh("gpasswd", "-a", name, site.group)
        out, err = session.communicate("go\n", timeout=60)
        assert str(grp.getgrnam(site.group).gr_gid) not in out.split("\n")[0].split()
        assert session.returncode == 0, err
        site.write_config({f"{alice.name}-web": None, f"{alice.name}-db": bob.name,
                           f"{bob.name}-mail": None, f"{name}-web": None})
        site.run()
        assert "web autostart: done" in dan.vm_log("web")  # served: a member now
    finally:
        remove_user(name)


def test_log_follow(site: Host) -> None:
    alice = site.users[0]
    wirt(alice, "create", "web")
    follow = subprocess.Popen(
        ["/usr/sbin/runuser", "-u", alice.name, "--", WIRT, "log", "web", "-f",
         "--config", SITE_CONFIG[-1]],
        cwd=alice.home, stdout=subprocess.PIPE, text=True,
        env={"HOME": str(alice.home), "PATH": "/usr/bin:/bin"},
    )
    try:
        time.sleep(1.0)
        wirt(alice, "suspend", "web")
        site.run()
        assert follow.stdout is not None
        line = follow.stdout.readline()
        assert " web suspend: done (file suspend, kept as ~/wirt/logs/history/" in line
    finally:
        follow.terminate()
        follow.wait(10)


def test_progress_only_on_a_terminal(site: Host) -> None:
    alice = site.users[0]
    wirt(alice, "create", "web")
    proc = alice.run(f"script -qec '{WIRT} suspend web --wait --timeout 1.5' /dev/null",
                     check=False)
    # (text mode turns the spinner's carriage returns into newlines)
    assert proc.stdout.count("web: suspend: waiting for a pass to pick it up") > 2
    assert "\x1b[K" in proc.stdout  # the spinner line is cleared at the end
    plain = wirt(alice, "resume", "web", "--wait", "--timeout", "1")
    assert plain.returncode == 4 and "waiting for a pass to" not in plain.stderr
    assert "\x1b" not in plain.stderr


# -- the legacy layout ---------------------------------------------------------------------------
def test_legacy_layout(site: Host) -> None:
    alice = site.users[0]
    alice.run("mkdir -p ~/virsh/dom-old ~/virsh/log ~/virsh/history")
    proc = wirt(alice, "autostart", "old", "--disable")
    assert proc.returncode == 0, proc.stderr
    command = alice.home / "virsh/dom-old/autostart"
    assert command.read_text() == "--disable\n" and stat.S_IMODE(command.stat().st_mode) == 0o600
    assert wirt(alice, "create", "new", "--layout", "legacy").returncode == 0
    assert stat.S_IMODE((alice.home / "virsh/dom-new").stat().st_mode) == 0o700
    listed = json.loads(wirt(alice, "list", "--json").stdout)
    assert [(v["vm"], v["layout"], v["pending"]) for v in listed] == [
        ("new", "legacy", []), ("old", "legacy", ["autostart"])]
    # history: what a legacy pass leaves (written here by hand: see the docstring)
    alice.write("virsh/history/25_Nov_26_10.15.00-dom-old-start")
    alice.write("virsh/history/ERRORFILE-25_Nov_26_10.16.00")
    history = json.loads(wirt(alice, "history", "--json").stdout)
    assert [(h["vm"], h["action"], h["layout"]) for h in history] == [
        ("old", "start", "legacy"), ("", "", "legacy")]
    assert json.loads(wirt(alice, "history", "old", "--json").stdout)[0]["action"] == "start"


def test_legacy_wait_against_a_real_pass(site: Host) -> None:
    alice = site.users[0]
    alice.run("mkdir -p ~/virsh/dom-web")
    with passes(site):
        proc = wirt(alice, "autostart", "web", "--wait", "--timeout", "60")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "web: autostart: done"
    history = json.loads(wirt(alice, "history", "web", "--json").stdout)
    assert [(h["layout"], h["action"], h["outcome"]) for h in history] == [
        ("legacy", "autostart", "done")]
    assert history[0]["history"].startswith("~/virsh/history/")
    assert " web autostart: done (file autostart, kept as ~/virsh/history/" in wirt(
        alice, "log", "web").stdout


# -- the VM's settings file: wirt set, wirt settings, wirt isos (issue 10.6) -------------------
# (rules/config.py gains [settings] and [quota] in a parallel change: tests of the admin's
# limits run once it has them)


def settings_file(user: User, vm: str = "web") -> Path:
    return spool(user, vm) / settings_rules.FILE


def publish_isos(user: User, *names: str) -> None:
    """What a pass writes: a comment line, then one ISO name per line."""
    user.write("wirt/info/isos.txt", "# the admin's ISO catalogue (written by wirt)\n"
               + "".join(f"{n}\n" for n in names))


def test_set_merges_into_the_file_and_writes_it_atomically(site: Host) -> None:
    alice = site.users[0]
    wirt(alice, "create", "web")
    config = settings_file(alice)
    alice.write(str(config.relative_to(alice.home)), '{"vcpus": 1, "boot": ["hd"]}')
    before = config.lstat().st_ino

    trace = alice.home / "trace"
    proc = alice.run('exec strace -f -qq -o "$1" -e trace=openat,rename,renameat,renameat2 '
                     '"$2" --config "$3" set web memory_mib=1024',
                     str(trace), WIRT, SITE_CONFIG[-1], check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("web: wrote ~/wirt/service/vm/web/config: memory_mib=1024 "
                                  "vcpus=1 boot=hd; the next pass applies it")
    assert json.loads(config.read_text()) == {"memory_mib": 1024, "vcpus": 1, "boot": ["hd"]}
    assert config.read_bytes() == settings_rules.dumps(
        {"memory_mib": 1024, "vcpus": 1, "boot": ("hd",)})
    st = config.lstat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode), st.st_nlink) == (alice.uid, 0o600, 1)
    assert st.st_ino != before  # a new file renamed over the old one, not written in place
    assert os.listdir(spool(alice, "web")) == ["config"]  # no temp file left
    # the new content went into a fresh dot-file (O_EXCL), then renamed over 'config';
    # 'config' itself was only ever opened for reading
    calls = trace.read_text()
    assert '".config.new", O_WRONLY|O_CREAT|O_EXCL' in calls
    assert '".config.new", ' in calls and '"config"' in calls
    assert any("rename" in line and '".config.new"' in line and '"config"' in line
               for line in calls.splitlines())
    assert not any('"config", O_WRONLY' in line or '"config", O_RDWR' in line
                   for line in calls.splitlines())

    # --vm, a list value, and KEY= takes the key out again
    proc = wirt(alice, "set", "--vm", "web", "boot=cdrom,hd", "vcpus=")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(config.read_text()) == {"memory_mib": 1024, "boot": ["cdrom", "hd"]}
    # the same again: nothing written (a pass applies each version once)
    inode = config.lstat().st_ino
    proc = wirt(alice, "set", "web", "memory_mib=1024")
    assert proc.returncode == 0 and "nothing written" in proc.stdout, proc
    assert config.lstat().st_ino == inode
    data = json.loads(wirt(alice, "set", "web", "vcpus=2", "--json").stdout)
    assert data["wanted"] == {"memory_mib": 1024, "vcpus": 2, "boot": ["cdrom", "hd"]}
    assert data["written"] is True and data["file"] == "~/wirt/service/vm/web/config"

    # a first file, and the legacy layout (config in ~/virsh/dom-<vm>/)
    alice.run("mkdir -p ~/virsh/dom-old")
    assert wirt(alice, "set", "old", "vcpus=2").returncode == 0
    assert json.loads((alice.home / "virsh/dom-old/config").read_text()) == {"vcpus": 2}
    proc = wirt(alice, "set", "old", "vcpus=3", "--wait")
    assert proc.returncode == 64 and "legacy layout" in proc.stderr
    # a broken file is not merged into (and not replaced)
    alice.write("wirt/service/vm/web/config", '{"vcpus": 1, "vcpus": 2}')
    proc = wirt(alice, "set", "web", "memory_mib=512")
    assert proc.returncode == 64 and "given twice" in proc.stderr and "remove it" in proc.stderr
    # but an unknown key in it can be taken out
    alice.write("wirt/service/vm/web/config", '{"vcpus": 1, "colour": "red"}')
    assert wirt(alice, "set", "web", "vcpus=2").returncode == 64
    proc = wirt(alice, "set", "web", "colour=")
    assert proc.returncode == 64 and "'colour' is not a setting" in proc.stderr


@pytest.mark.parametrize(("word", "rule"), [
    ("memory_mib=32", "memory_mib: must be at least 64, not 32"),
    ("memory_mib=1.5", 'memory_mib: must be a whole number, not "1.5"'),
    ("vcpus=two", 'vcpus: must be a whole number, not "two"'),
    ("vcpus=0", "vcpus: must be at least 1, not 0"),
    ("boot=hd,hd", "boot: names a device twice"),
    ("boot=floppy", 'boot: "floppy" is not a boot device'),
    ("boot=hd,cdrom,network,hd", "boot: must be a list of 1 to 3"),
    ("cdrom=../../etc/shadow", "cdrom: must be the name of an ISO in the catalogue"),
    ("cdrom=debian.img", "cdrom: must be the name of an ISO"),
    ("colour=red", "'colour' is not a setting (known: memory_mib, vcpus, cdrom, boot)"),
    ("vcpus", "'vcpus' is not KEY=VALUE"),
])
def test_set_refuses_bad_values_and_writes_nothing(site: Host, word: str, rule: str) -> None:
    alice = site.users[0]
    wirt(alice, "create", "web")
    config = alice.write("wirt/service/vm/web/config", '{"vcpus": 1}')
    inode = config.lstat().st_ino
    proc = wirt(alice, "set", "web", "vcpus=2" if word.startswith("memory") else "memory_mib=128",
                word)
    assert proc.returncode == 64, proc
    assert rule in proc.stderr, proc.stderr
    assert config.read_text() == '{"vcpus": 1}' and config.lstat().st_ino == inode
    assert os.listdir(spool(alice, "web")) == ["config"]


def test_set_checks_the_catalogue_and_the_admins_limits(site: Host) -> None:
    alice = site.users[0]
    wirt(alice, "create", "web")
    names = [f"tool-{i}.iso" for i in range(8)] + ["debian-12.iso", "debian-11.iso"]
    publish_isos(alice, *names)
    proc = wirt(alice, "set", "web", "cdrom=debian-13.iso")
    assert proc.returncode == 64, proc
    assert "cdrom: 'debian-13.iso' is not in the catalogue (~/wirt/info/isos.txt)" in proc.stderr
    assert "it has: debian-12.iso, debian-11.iso" in proc.stderr  # the closest first
    assert "(10 in all: wirt isos)" in proc.stderr and "nothing was written" in proc.stderr
    assert not settings_file(alice).exists() or "debian-13" not in settings_file(
        alice).read_text()
    site.extra_config = "[settings]\nmax_memory_mib = 2048\nmax_vcpus = 2\n" \
        "iso_dir = \"/nonexistent\"\n"
    site.write_config({f"{alice.name}-web": None})
    with published(site):
        proc = wirt(alice, "set", "web", "vcpus=3")
        assert proc.returncode == 64 and "settings.max_vcpus" in proc.stderr, proc
        proc = wirt(alice, "set", "web", "memory_mib=4096")
        assert proc.returncode == 64 and "settings.max_memory_mib" in proc.stderr, proc
        proc = wirt(alice, "set", "web", "memory_mib=2048", "vcpus=2", "cdrom=debian-12.iso")
        assert proc.returncode == 0, proc.stderr


def test_set_refuses_a_linked_or_foreign_config(site: Host) -> None:
    alice, bob = site.users
    wirt(alice, "create", "web")
    wirt(bob, "create", "mail")
    target = alice.write("wirt/notes", '{"vcpus": 1}')
    config = settings_file(alice)
    alice.run(f'ln -s {target} {config}')
    proc = wirt(alice, "set", "web", "vcpus=2")
    assert proc.returncode == 77 and "symbolic link" in proc.stderr, proc.stderr
    assert config.is_symlink() and target.read_text() == '{"vcpus": 1}'
    proc = wirt(alice, "settings", "web")
    assert proc.returncode == 77 and "symbolic link" in proc.stderr
    config.unlink()
    alice.run(f'ln {target} {config}')
    proc = wirt(alice, "set", "web", "vcpus=2")
    assert proc.returncode == 77 and "2 hard links" in proc.stderr, proc.stderr
    assert target.read_text() == '{"vcpus": 1}'
    config.unlink()
    # a co-member's file in a folder alice made group-writable
    alice.run(f'chgrp {site.group} ~/wirt ~/wirt/service ~/wirt/service/vm ~/wirt/service/vm/web'
              ' && chmod 2775 ~/wirt ~/wirt/service ~/wirt/service/vm ~/wirt/service/vm/web')
    bob.run(f"printf '{{}}' > {config}")
    proc = wirt(alice, "set", "web", "vcpus=2")
    assert proc.returncode == 77 and f"owned by uid {bob.uid}" in proc.stderr, proc.stderr
    assert config.stat().st_uid == bob.uid and config.read_text() == "{}"


APPLIED = {"memory_mib": 512, "vcpus": 1, "cdrom": "", "boot": ["hd"], "has_cdrom": True,
           "restart_needed": True}
INFO: dict[str, Any] = {"domain": "", "state": "running", "reason": "booted",
                        "autostart": False, "persistent": True, "memory_kib": 524288,
                        "vcpus": 1, "graphics": {}}


def write_status(user: User, vm: str, settings: dict[str, Any] | None,
                 last_config: dict[str, str] | None) -> None:
    """A status.xml as a pass renders it (rules/status.py), written as the user."""
    info = dict(INFO, domain=f"{user.name}-{vm}")
    if settings is not None:
        info["settings"] = settings
    user.write(f"wirt/info/vm/{vm}/status.xml",
               status_xml.render(vm, info, None, last_config).decode())


def test_settings_shows_wanted_against_applied(site: Host) -> None:
    alice = site.users[0]
    wirt(alice, "create", "web")
    proc = wirt(alice, "settings", "web")
    assert proc.returncode == 0, proc.stderr
    assert "no settings file: every setting stays as it is" in proc.stdout
    assert "no pass has written the status yet" in proc.stdout

    assert wirt(alice, "set", "web", "memory_mib=1024", "boot=cdrom,hd").returncode == 0
    last = {"outcome": "done", "message": "memory_mib=1024 boot=cdrom,hd: at the next boot",
            "time": "2025-03-04T05:06:07+0000"}
    write_status(alice, "web", APPLIED, last)
    data = json.loads(wirt(alice, "settings", "web", "--json").stdout)
    assert data["wanted"] == {"memory_mib": 1024, "boot": ["cdrom", "hd"]}
    assert data["applied"] == APPLIED and data["restart_needed"] is True
    assert data["last_config"] == last and data["problem"] is None and data["exists"] is True
    text = wirt(alice, "settings", "web").stdout.splitlines()
    rows = {line.split()[0]: line for line in text if line[:1].islower() and "  " in line}
    assert rows["memory_mib"].split() == ["memory_mib", "1024", "MiB", "512", "MiB"]
    assert rows["vcpus"].split() == ["vcpus", "-", "1"]
    assert rows["cdrom"].split() == ["cdrom", "-", "none"]
    assert rows["boot"].split() == ["boot", "cdrom,hd", "hd"]
    assert any(line.startswith("restart needed: yes") for line in text)
    assert "last config: done: memory_mib=1024 boot=cdrom,hd: at the next boot " \
        "(2025-03-04 05:06:07)" in text

    # a VM without a CD-ROM drive, a file the rules refuse, no restart needed
    write_status(alice, "web", dict(APPLIED, has_cdrom=False, restart_needed=False), None)
    alice.write("wirt/service/vm/web/config", '{"vcpus": true}')
    proc = wirt(alice, "settings", "web")
    assert "the file is refused by the rules: config: vcpus: must be a whole number, not " \
        "true" in proc.stdout
    assert "no CD-ROM drive" in proc.stdout and "restart needed: no" in proc.stdout
    assert "last config: none yet" in proc.stdout
    # a pass that does not report settings yet
    write_status(alice, "web", None, None)
    assert "applied: not reported" in wirt(alice, "settings", "web").stdout


def test_set_wait_reads_the_outcome_from_status_xml(site: Host) -> None:
    """--wait returns when status.xml's <last-config> changes (a stand-in writes it here)."""
    alice = site.users[0]
    wirt(alice, "create", "web")
    old = {"outcome": "done", "message": "", "time": "2025-01-01T00:00:00+0000"}
    write_status(alice, "web", APPLIED, old)
    for outcome, code in (("rejected", 2), ("done", 0)):
        waiting = subprocess.Popen(
            ["/usr/sbin/runuser", "-u", alice.name, "--", WIRT, "set", "web",
             f"vcpus={code + 2}", "--wait", "--timeout", "30", "--config", SITE_CONFIG[-1]],
            cwd=alice.home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={"HOME": str(alice.home), "PATH": "/usr/bin:/bin"})
        deadline = time.monotonic() + 20
        while f'"vcpus": {code + 2}' not in (settings_file(alice).read_text()
                                             if settings_file(alice).exists() else ""):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        assert waiting.poll() is None  # still waiting: the old outcome is not its own
        new = {"outcome": outcome, "message": f"config: {outcome}", "time": f"t-{outcome}"}
        write_status(alice, "web", APPLIED, new)
        out, err = waiting.communicate(timeout=30)
        assert waiting.returncode == code, err
        assert out.strip() == f"web: config: {outcome}: config: {outcome}"
    proc = wirt(alice, "set", "web", "vcpus=3", "--wait", "--timeout", "0.5")
    assert proc.returncode == 4 and "no pass has applied" in proc.stderr


def test_isos_lists_the_published_catalogue(site: Host) -> None:
    alice = site.users[0]
    proc = wirt(alice, "isos")
    assert proc.returncode == 0 and "No ISO catalogue is published yet" in proc.stdout
    assert json.loads(wirt(alice, "isos", "--json").stdout) == {"published": False, "isos": []}
    publish_isos(alice)
    assert "The catalogue is empty" in wirt(alice, "isos").stdout
    publish_isos(alice, "debian-12.iso", "tools+drivers_1.0.iso")
    proc = wirt(alice, "isos")
    assert proc.returncode == 0 and proc.stdout.splitlines() == [
        "debian-12.iso", "tools+drivers_1.0.iso"]
    assert json.loads(wirt(alice, "isos", "--json").stdout) == {
        "published": True, "isos": ["debian-12.iso", "tools+drivers_1.0.iso"]}
    # a link planted instead of the listing is not followed
    (alice.home / "wirt/info/isos.txt").unlink()
    alice.run("ln -s /etc/passwd ~/wirt/info/isos.txt")
    proc = wirt(alice, "isos")
    assert proc.returncode == 77 and "symbolic link" in proc.stderr


# -- bash completion ------------------------------------------------------------------------------
def test_bash_completion(site: Host) -> None:
    alice = site.users[0]
    wirt(alice, "create", "web")
    wirt(alice, "create", "db")
    script = REPO / "completions" / "wirt.bash"

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        proc = alice.run(
            'exec bash -c "$1"',
            f'. {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _wirt; '
            'printf "%s\\n" "${COMPREPLY[@]}"', check=False)
        assert proc.returncode == 0, proc.stderr
        return sorted(proc.stdout.split())

    assert complete("wirt", "start", "") == ["db", "web"]
    assert complete("wirt", "--vm", "w") == ["web"]
    assert "autostart" in complete("wirt", "") and "refresh" in complete("wirt", "")
    assert {"set", "settings", "isos"} <= set(complete("wirt", ""))
    assert complete("wirt", "settings", "") == ["db", "web"]
    assert complete("wirt", "set", "") == ["boot=", "cdrom=", "db", "memory_mib=", "vcpus=",
                                           "web"]
    assert complete("wirt", "set", "web", "") == ["boot=", "cdrom=", "memory_mib=", "vcpus="]
    assert "--wait" in complete("wirt", "set", "--")
    publish_isos(alice, "debian-12.iso", "tools.iso")
    assert complete("wirt", "set", "web", "cdrom=d") == ["cdrom=debian-12.iso"]
    assert complete("wirt", "set", "web", "cdrom=") == ["cdrom=debian-12.iso", "cdrom=none",
                                                        "cdrom=tools.iso"]
    assert complete("wirt", "admin", "q") == ["quota"]
    # the completion offers exactly the CLI's commands (and their aliases)
    import argparse

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(complete("wirt", "")) - {o for o in complete("wirt", "") if o.startswith("-")} \
        == set(sub.choices)
    assert "--version" in complete("wirt", "--")
    assert complete("wirt", "help", "canc") == ["cancel"]
    assert complete("wirt", "cancel", "") == ["db", "web"]
    assert complete("wirt", "cancel", "web", "sta") == ["start", "status"]
    # every flag of the action table is offered for its action and aliases
    for action in ACTIONS:
        names = [n for n in (action.name, *action.aliases) if n != "status"]
        for name in names:
            offered = complete("wirt", name, "--")
            for option in action.options:
                assert option.name in offered, (name, option.name)
    # and each command's long options are exactly the parser's (issue 15 item 9)
    for name, parser in sub.choices.items():
        if name in ("help", "admin"):
            continue
        longs = {o for a in parser._actions for o in a.option_strings if o.startswith("--")}
        assert set(complete("wirt", name, "--")) == longs, name
    # wirt admin: the verbs, then each verb's long options as root's parser has them
    from wirt_wrapper.root.admin import build_parser as admin_parser

    (verbs,) = [a for a in admin_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert complete("wirt", "admin", "") == sorted(verbs.choices)
    for name, parser in verbs.choices.items():
        longs = {o for a in parser._actions for o in a.option_strings if o.startswith("--")}
        assert set(complete("wirt", "admin", name, "--")) == longs, name
        assert set(complete("wirt", "admin", "--json", name, "x", "--")) == longs, name
    assert complete("wirt", "admin", "assign", "dom", "alice", "--as", "") == []
    assert complete("wirt", "admin", "--layout", "") == ["legacy", "wirt"]
    assert complete("wirt", "admin", "run", "--layout", "l") == ["legacy"]


# -- admin verbs ---------------------------------------------------------------------------
def test_admin_assign_reads_back_on_the_test_driver(site: Host) -> None:
    alice = site.users[0]
    domain = f"{alice.name}-web"
    proc = subprocess.run([WIRT, "admin", "assign", domain, alice.name, "--config",
                           str(site.config)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"{domain}: assigned to {alice.name} (persistent and live definition" in proc.stdout
    proc = subprocess.run([WIRT, "admin", "assign", domain, "nosuchuser-x", "--config",
                           str(site.config)], capture_output=True, text=True)
    assert proc.returncode == 66 and "no user" in proc.stderr
    proc = subprocess.run([WIRT, "admin", "assign", "nosuchdomain", alice.name, "--config",
                           str(site.config)], capture_output=True, text=True)
    assert proc.returncode == 66 and "no domain 'nosuchdomain'" in proc.stderr
    # issue 15.10: a malformed site config has its own code in the one table (was 70)
    bad = site.root / "etc" / "bad.toml"
    bad.write_text("group = 5\n")
    proc = subprocess.run([WIRT, "admin", "quota", "--config", str(bad)],
                          capture_output=True, text=True)
    assert (proc.returncode, dict(CLI_EXITS)[proc.returncode]) == \
        (78, "config unsafe or malformed"), proc.stderr
    assert "group" in proc.stderr


def test_each_flags_help_is_the_action_tables() -> None:
    """`wirt ACTION --help` says what each flag does, in the action table's words."""
    import argparse

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for action in ACTIONS:
        for name in (action.name, *action.aliases) if action.name != "status" else ("refresh",):
            helps = {o: a.help for a in sub.choices[name]._actions for o in a.option_strings}
            for option in action.options:
                assert helps[option.name] == option.help, (name, option.name)
    for name, parser in sub.choices.items():  # and every other flag says something too
        for act in parser._actions:
            assert act.help and len(act.help) > 10, (name, act.option_strings)


def test_readme_exit_table_is_the_one_table() -> None:
    """README's exit table has exactly the codes of rules/errors.py, each with its word."""
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| exit | meaning |"):].split("\n\n")[0].splitlines()[2:]
    rows = [row.strip("|").split("|", 1) for row in table]
    assert [int(code) for code, _ in rows] == [code for code, _ in CLI_EXITS]
    for (_, meaning), (code, kind) in zip(rows, CLI_EXITS, strict=True):
        assert kind.split()[0] in meaning.replace("`", ""), (code, kind, meaning)
    epilog = " ".join(build_parser().format_help().split())
    assert "Exit status: " + ", ".join(f"{c} {k}" for c, k in CLI_EXITS) in epilog


def test_admin_quota_on_the_test_driver(site: Host) -> None:
    """Use is summed over every domain a member owns, by the pass's ownership rule."""
    alice, bob = site.users

    def domain(name: str, mib: int, vcpus: int, owner: str | None = None) -> str:
        meta = "" if owner is None else (
            "<metadata><wirt:owner xmlns:wirt='http://wirt.weimarnetz.de/xmlns/owner/1'>"
            f"{owner}</wirt:owner></metadata>")
        return (f"<domain type='test'><name>{name}</name><memory unit='MiB'>{mib}</memory>"
                f"<vcpu>{vcpus}</vcpu>{meta}<os><type>hvm</type></os></domain>")

    site.extra_config = "[quota]\nmemory_mib = 3000\nvcpus = 4\n"
    site.write_config()
    (site.root / "etc" / "host.xml").write_text("<node>" + "".join([
        domain(f"{alice.name}-web", 1024, 2),
        domain(f"{alice.name}-db", 2048, 2, bob.name),  # alice's name, bob's by metadata
        domain(f"{bob.name}-mail", 512, 1),
        domain("build-farm", 4096, 4, alice.name),     # no folder names it: the metadata does
        domain("postgres", 8192, 8),                   # nobody's: no metadata, no folder name
    ]) + "</node>")

    def quota(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([WIRT, "admin", "quota", *args, "--config", str(site.config)],
                              capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})

    proc = quota("--json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["user"]: row for row in json.loads(proc.stdout)}
    assert set(rows) == {alice.name, bob.name}
    assert [d["domain"] for d in rows[alice.name]["domains"]] == [
        "build-farm", f"{alice.name}-web"]
    assert (rows[alice.name]["memory_mib"], rows[alice.name]["vcpus"]) == (5120, 6)
    assert [d["domain"] for d in rows[bob.name]["domains"]] == [
        f"{alice.name}-db", f"{bob.name}-mail"]
    assert (rows[bob.name]["memory_mib"], rows[bob.name]["vcpus"]) == (2560, 3)
    assert rows[alice.name]["quota"] == {"memory_mib": 3000, "vcpus": 4}
    assert rows[alice.name]["over"] == ["memory_mib", "vcpus"] and rows[bob.name]["over"] == []
    proc = quota(bob.name)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["USER", "DOMAINS", "MEMORY", "MIB", "QUOTA", "MIB", "VCPUS",
                                "QUOTA", "VCPUS"]
    assert lines[1].split() == [bob.name, "2", "2560", "3000", "3", "4"]
    assert len(lines) == 2
    assert quota(alice.name).stdout.splitlines()[1].endswith("OVER: memory_mib, vcpus")
    proc = quota("nosuchuser-x")
    assert proc.returncode == 66 and "no user" in proc.stderr
    proc = wirt(alice, "admin", "quota")
    assert proc.returncode == 77 and "run it as root" in proc.stderr


def test_admin_runs_isolated_with_a_clean_environment(site: Host) -> None:
    """Issue 9.4: the admin verbs get virsh_wrapper's start-up guarantees: root's shell
    environment is left behind, the interpreter runs isolated (-I), and `admin run` runs
    the checked pass itself, never a virsh_wrapper found beside argv[0]."""
    alice = site.users[0]
    alice.write("wirt/service/vm/web/autostart")
    beside = Path(tempfile.mkdtemp(prefix="wirt-admin-", dir="/var/tmp"))
    try:
        beside.chmod(0o777)  # anyone could put a virsh_wrapper here
        marker = beside / "ran"
        (beside / "virsh_wrapper").write_text(f"#!/bin/sh\ntouch {marker}\n")
        (beside / "virsh_wrapper").chmod(0o755)
        (beside / "wirt").symlink_to(WIRT)
        trace = beside / "trace"
        env = {"PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "error", "LIBVIRT_DEFAULT_URI":
               "test:///default", "WIRT_TEST_SECRET": "s3cret"}
        proc = subprocess.run(["strace", "-f", "-qq", "-e", "trace=execve", "-v", "-s", "300",
                               "-o", str(trace), str(beside / "wirt"), "admin", "run",
                               "--config", str(site.config)],
                              capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        assert not marker.exists(), "a virsh_wrapper beside argv[0] ran"
        assert "commands: 1 done" in proc.stdout
        execs = [line for line in trace.read_text().splitlines() if "execve(" in line]
        admin = [line for line in execs if '"wirt_wrapper.root.admin"' in line]
        assert len(admin) == 1, execs
        assert '"-I", "-m", "wirt_wrapper.root.admin", "run"' in admin[0]
        assert "s3cret" not in admin[0] and "LIBVIRT_DEFAULT_URI" not in admin[0]
        assert '["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]' in admin[0]
        assert not any("virsh_wrapper" in line for line in execs)
    finally:
        shutil.rmtree(beside)


@pytest.fixture
def system_domain(host: Host) -> Iterator[tuple[Host, User, User, Any]]:
    """alice-web on qemu:///system (defined, never booted), assigned to bob by metadata."""
    import libvirt

    alice, bob = host.add_user("alice"), host.add_user("bob")
    host.uri = "qemu:///system"
    host.write_config()
    conn = libvirt.open("qemu:///system")
    dom = conn.defineXML(
        f"<domain type='qemu'><name>{alice.name}-web</name><uuid>{uuid.uuid4()}</uuid>"
        "<memory unit='MiB'>32</memory><os><type arch='x86_64' machine='pc'>hvm</type></os>"
        "<metadata><wirt:owner xmlns:wirt='http://wirt.weimarnetz.de/xmlns/owner/1'>"
        f"{bob.name}</wirt:owner></metadata></domain>")
    try:
        with published(host):
            yield host, alice, bob, dom
    finally:
        dom.setAutostart(0)
        dom.undefine()
        conn.close()


@pytest.mark.realvm
def test_admin_assign_then_the_users_command(system_domain: tuple[Host, User, User, Any]
                                             ) -> None:
    """qemu:///system keeps the metadata between processes (the test driver cannot)."""
    import libvirt

    host, alice, bob, dom = system_domain
    domain = dom.name()

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([WIRT, "admin", *args, "--config", str(host.config)],
                              capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})

    def autostart_now() -> subprocess.CompletedProcess[str]:
        """alice waits on her command while root runs a pass with `wirt admin run`."""
        waiting = subprocess.Popen(
            ["/usr/sbin/runuser", "-u", alice.name, "--", WIRT, "autostart", "web", "--wait",
             "--timeout", "60", "--config", SITE_CONFIG[-1]], cwd=alice.home,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={"HOME": str(alice.home), "PATH": "/usr/bin:/bin"})
        deadline = time.monotonic() + 20
        while not (spool(alice, "web") / "autostart").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        ran = admin("run")
        assert ran.returncode == 0, ran.stderr
        assert f"{alice.name} web autostart:" in ran.stdout  # --verbose
        out, err = waiting.communicate(timeout=60)
        return subprocess.CompletedProcess(waiting.args, waiting.returncode, out, err)

    wirt(alice, "create", "web")
    proc = autostart_now()
    assert proc.returncode == 2 and "assigned to another user" in proc.stdout, proc
    assert not dom.autostart()

    proc = admin("assign", domain, alice.name)
    assert proc.returncode == 0, proc.stderr
    assert f"was: {bob.name}" in proc.stdout
    assert f">{alice.name}</wirt:owner>" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    proc = autostart_now()
    assert proc.returncode == 0 and proc.stdout.strip() == "web: autostart: done", proc
    assert dom.autostart()

    audit = admin("audit", alice.name)
    assert audit.returncode == 0, audit.stderr
    rows = [line.split() for line in audit.stdout.splitlines()[1:]]
    assert [(r[4], r[5]) for r in rows if r[1] == "command"] == [
        ("autostart", "rejected"), ("autostart", "done")]
    as_json = json.loads(admin("audit", alice.name, "--json").stdout)
    assert {r["user"] for r in as_json} == {alice.name}

    proc = admin("unassign", domain)
    assert proc.returncode == 0 and f"was: {alice.name}" in proc.stdout, proc.stderr
    assert "wirt:owner" not in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    # members cannot use the admin verbs
    proc = wirt(alice, "admin", "assign", domain, alice.name)
    assert proc.returncode == 77 and "run it as root" in proc.stderr


def test_cancel_takes_a_waiting_command_back(site: Host) -> None:
    """issue 15.7: the user's own pending file goes to history, as the user, never run."""
    alice = site.users[0]
    wirt(alice, "create", "web")
    assert wirt(alice, "start", "web").returncode == 0
    proc = wirt(alice, "start", "web")
    assert proc.returncode == 5 and "wirt cancel web start" in proc.stderr
    proc = wirt(alice, "cancel", "web", "start")
    assert proc.returncode == 0, proc.stderr
    assert "web: start: cancelled, not run; kept as ~/wirt/logs/history/" in proc.stdout
    assert os.listdir(spool(alice, "web")) == []
    (kept,) = os.listdir(alice.home / "wirt/logs/history")
    st = (alice.home / "wirt/logs/history" / kept).stat()
    assert kept.endswith("-web-start") and st.st_uid == alice.uid
    assert "start: cancelled: taken back with wirt cancel (file start, kept as" in \
        alice.vm_log("web")
    site.run()
    assert site.commands() == []  # the pass found nothing to run
    history = wirt(alice, "history", "web")
    assert "cancelled" in history.stdout, history.stdout
    # an alias's file, taken back by the action's name; nothing waiting: 66
    alice.write("wirt/service/vm/web/stop", "--mode acpi")
    assert wirt(alice, "cancel", "web", "shutdown").returncode == 0
    proc = wirt(alice, "cancel", "web", "shutdown")
    assert proc.returncode == 66 and "nothing to take back" in proc.stderr
    # another member's file planted in a group-writable folder is not alice's to move
    bob = site.users[1]
    for folder in (alice.home, alice.home / "wirt", alice.home / "wirt/service",
                   alice.home / "wirt/service/vm"):
        folder.chmod(0o711)
    spool(alice, "web").chmod(0o777)
    bob.run(f'printf "" > "{spool(alice, "web") / "reset"}"')
    proc = wirt(alice, "cancel", "web", "reset")
    assert proc.returncode == 77, proc.stderr
    assert (spool(alice, "web") / "reset").exists()


def test_a_folder_named_like_an_action_is_not_pending(site: Host) -> None:
    """issue 15.6: ~/wirt/service/vm/web/reset as a folder: the pass says 'ignored', and the
    CLI agrees (one definition, rules.spool): not pending in wirt status, list or --json."""
    alice = site.users[0]
    wirt(alice, "create", "web")
    (spool(alice, "web") / "reset").mkdir()
    alice.write("wirt/service/vm/web/autostart")
    listed = json.loads(wirt(alice, "--json", "list").stdout)
    assert [item["pending"] for item in listed if item["vm"] == "web"] == [["autostart"]]
    status = wirt(alice, "status", "web").stdout
    assert "autostart" in status and "reset" not in status, status
    site.run()
    text = (alice.home / "wirt/logs/wirt.log").read_text()
    assert "~/wirt/service/vm/web/reset: ignored" in text and "folder" in text, text
    listed = json.loads(wirt(alice, "--json", "list").stdout)
    assert [item["pending"] for item in listed if item["vm"] == "web"] == [[]]
    assert (spool(alice, "web") / "reset").is_dir()  # nothing of hers moved
