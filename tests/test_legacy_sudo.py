"""The legacy cron line, through the real shim, real sudo and a real wrapper user
(the ``deployed`` fixture, legacy_support.py): what sudo allows and refuses,
the environment, the lock."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, Host, sh
from legacy_support import (
    STAMP,
    Deployed,
    legacy_history,
    legacy_logs,
    log_for,
    write_host,
)


def test_sudoers_drop_in_passes_visudo() -> None:
    proc = sh("visudo", "-cf", str(REPO / "sudoers.d/wirt"))
    assert "parsed OK" in proc.stdout
    text = (REPO / "sudoers.d/wirt").read_text()
    assert "env_reset" in text and "secure_path=" in text
    assert "*" not in text.split("NOPASSWD:")[1]  # no wildcard in the command list


def test_the_old_cron_line_serves_the_legacy_tree(host: Host, deployed: Deployed) -> None:
    alice, bob = host.add_user("alice"), host.add_user("bob")
    a, b = alice.name, bob.name
    write_host(host, running={f"{a}-db": None, f"{b}-mail": None},
               off={f"{a}-web": None, f"{a}-wirt": None})
    alice.write("virsh/dom-web/start", mtime=1_000_000)
    alice.write("virsh/dom-web/destroy", mtime=1_000_100)  # only works after the start
    alice.write("virsh/dom-web/autostart", mtime=1_000_200)
    alice.write("virsh/dom-db/shutdown")
    alice.write("wirt/service/vm/wirt/start")  # the shim serves the legacy layout only
    bob.write("virsh/dom-mail/autostart", "--disable\n")

    proc = deployed.cron()
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # cron would mail anything printed

    # users are served side by side: the order that counts is each user's own (stable sort)
    got = sorted(((r["user"], r["vm"], r["action"], r["outcome"]) for r in host.commands()),
                 key=lambda row: row[0])
    assert got == [(a, "db", "shutdown", "done"), (a, "web", "start", "done"),
                   (a, "web", "destroy", "done"), (a, "web", "autostart", "done"),
                   (b, "mail", "autostart", "done")], got
    assert {r["layout"] for r in host.commands()} == {"legacy"}
    assert (alice.home / "wirt/service/vm/wirt/start").exists()

    assert "running (booted)" in log_for(alice, "web", "start")[0]
    assert "shut off (destroyed)" in log_for(alice, "web", "destroy")[0]
    assert "autostart: yes" in log_for(alice, "web", "autostart")[0]
    assert "shut off (shutdown)" in log_for(alice, "db", "shutdown")[0]
    assert "autostart --disable: done" in log_for(bob, "mail", "autostart")[0]
    assert len(legacy_logs(alice)) == 4 and len(legacy_history(alice)) == 4
    assert all(re.fullmatch(rf"{STAMP}-dom-(web|db)-[a-z]+", n) for n in legacy_history(alice))


def test_sudo_allows_exactly_the_two_commands(host: Host, deployed: Deployed) -> None:
    alice = host.add_user("alice")
    write_host(host, off={f"{alice.name}-web": None})
    marker = host.root / "evil-was-read"
    evil = host.root / "evil.toml"
    evil.write_text(f'audit_log = "{marker}"\ngroup = "{host.group}"\n')
    evil.chmod(0o644)
    w = deployed.wrapper

    for allowed in (deployed.exe, deployed.shim):
        assert deployed.as_user(w, f"sudo -n -l {allowed}").returncode == 0
    refused = [
        f"sudo -n {deployed.exe} --config {evil}",
        f"sudo -n {deployed.shim} --config {evil}",
        f"sudo -n {deployed.exe} --user {alice.name}",
        f"sudo -n {deployed.exe} ''",
        "sudo -n /usr/bin/id",
        f"sudo -n {sys.executable} -I -m wirt_wrapper --config {evil}",
        "sudo -n -s true",
    ]
    for command in refused:
        proc = deployed.as_user(w, command)
        assert proc.returncode == 1 and "sudo:" in proc.stderr, (command, proc)
    # a member of the group gets nothing from sudo, with or without arguments
    for command in (f"sudo -n {deployed.shim}", f"sudo -n {deployed.exe}"):
        proc = deployed.as_user(alice, command)
        assert proc.returncode == 1 and "sudo:" in proc.stderr, (command, proc)
    assert not marker.exists()
    assert host.commands() == []


def test_non_root_is_refused_clearly(host: Host, deployed: Deployed) -> None:
    alice = host.add_user("alice")
    write_host(host, off={f"{alice.name}-web": None})
    alice.write("virsh/dom-web/start")
    proc = deployed.as_user(alice, deployed.cron_command)
    assert proc.returncode == 3
    assert "must run as root" in proc.stderr and alice.name in proc.stderr
    proc = deployed.as_user(deployed.wrapper, f"{deployed.shim} --verbose")
    assert proc.returncode == 3 and "takes no arguments" in proc.stderr
    proc = deployed.as_user(alice, f"{sys.executable} -I -m wirt_wrapper --config {host.config}")
    assert proc.returncode == 3 and "must run as root" in proc.stderr
    assert (alice.home / "virsh/dom-web/start").exists()
    assert host.commands() == []


@pytest.mark.attack
def test_environment_cannot_hijack_the_pass(host: Host, deployed: Deployed) -> None:
    """SECURITY 11: PYTHONPATH & co. from the caller never reach the interpreter."""
    alice = host.add_user("alice")
    write_host(host, off={f"{alice.name}-web": None})
    evil = host.root / "evil"
    (evil / "wirt_wrapper").mkdir(parents=True)
    marker = host.root / "hijacked"
    payload = f"open({str(marker)!r}, 'w').write('x')\n"
    (evil / "wirt_wrapper" / "__init__.py").write_text(payload)
    (evil / "startup.py").write_text(payload)
    (evil / "sitecustomize.py").write_text(payload)
    os.chmod(evil, 0o755)
    env = {"PYTHONPATH": str(evil), "PYTHONSTARTUP": str(evil / "startup.py"),
           "PYTHONINSPECT": "1", "LIBVIRT_DEFAULT_URI": "test:///default",
           "PYTHONHOME": str(evil)}
    alice.write("virsh/dom-web/start")
    proc = deployed.cron(env)
    assert proc.returncode == 0, proc.stderr
    # and root's own environment (an admin running the shim by hand) does not count either
    alice.write("virsh/dom-web/autostart")
    proc = subprocess.run([deployed.shim], env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=evil)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    assert [r["outcome"] for r in host.commands()] == ["done", "done"]


def test_overlapping_runs_never_double_process(host: Host, deployed: Deployed) -> None:
    alice, bob = host.add_user("alice"), host.add_user("bob")
    write_host(host, off={f"{alice.name}-web": None, f"{bob.name}-web": None})
    alice.write("virsh/dom-web/start")
    (host.root / "state").mkdir(mode=0o700, exist_ok=True)
    lock = os.open(host.root / "state" / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a pass that is still running
        proc = deployed.cron()
        assert proc.returncode == 0 and proc.stderr == ""  # quietly: the next one will do
        assert (alice.home / "virsh/dom-web/start").exists()
    finally:
        os.close(lock)
    alice.write("virsh/dom-web/autostart")
    bob.write("virsh/dom-web/autostart")
    runs = [subprocess.Popen(
        ["/usr/sbin/runuser", "-u", deployed.wrapper.name, "--", "/bin/sh", "-c",
         deployed.cron_command],
        cwd=deployed.wrapper.home, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"}) for _ in range(4)]
    assert [run.wait(120) for run in runs] == [0, 0, 0, 0]
    files = sorted((r["user"], r["file"]) for r in host.commands())
    assert files == sorted([(alice.name, "start"), (alice.name, "autostart"),
                            (bob.name, "autostart")]), files
