"""deploy/install.sh on this machine itself: install, run both cron lines as the
wrapper user through sudo against a real guest on qemu:///system, uninstall.

The installed paths are the real ones (/opt/wirt, /usr/local/sbin/virsh_wrapper,
/etc/sudoers.d/wirt, ...); so that a real installation is never touched, the
test skips when any of them exists.  The wrapper user and the group get unique
names (the installer's --wrapper-user and --group), and --uninstall --purge
must leave the host as it was: /etc/pam.d/wirt, which existed before, stays.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import secrets
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import libvirt
import pytest
from conftest import REPO, User, remove_user, sh
from guest import realvm

T = TypeVar("T")

INSTALL = ["bash", str(REPO / "deploy/install.sh")]
OLD_TOP = "/usr/local/bin/virsh_wrapper"  # where the old script lived, in backend/
PATHS = ["/opt/wirt", "/usr/local/sbin/virsh_wrapper", "/usr/local/sbin/wirt-audit",
         "/usr/local/bin/virsh_wrapper",
         "/usr/local/bin/wirt-migrate-legacy", "/usr/local/bin/wirt",
         "/usr/share/bash-completion/completions/wirt", "/etc/sudoers.d/wirt", "/etc/cron.d/wirt",
         "/etc/logrotate.d/wirt", "/etc/wirt/wirt.toml",
         "/usr/local/share/man/man1/wirt.1", "/usr/local/share/man/man5/wirt.toml.5",
         "/usr/local/share/man/man8/virsh_wrapper.8", "/usr/local/share/man/man8/wirt-audit.8"]


def cron_command(path: Path, user: str) -> str:
    """The command of the one job line in a cron.d file; it must run as *user*."""
    [line] = [x for x in path.read_text().splitlines()
              if x.strip() and not x.startswith("#") and "=" not in x.split()[0]]
    fields = line.split(None, 6)
    assert fields[5] == user, line
    return fields[6]


def as_cron(user: str, command: str) -> subprocess.CompletedProcess[str]:
    """What cron does: /bin/sh -c as the user, in their home, with cron's small env."""
    home = pwd.getpwnam(user).pw_dir
    return subprocess.run(
        ["/usr/sbin/runuser", "-u", user, "--", "/bin/sh", "-c", command],
        cwd=home, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
        env={"HOME": home, "LOGNAME": user, "SHELL": "/bin/sh", "PATH": "/usr/bin:/bin"},
    )


def until_taken(user: str, command: str, pending: list[Path]) -> None:
    """Run the cron command until the pending files are taken (libvirtd is shared and
    other tests restart it: an unreachable libvirt leaves commands pending, by design)."""
    for _ in range(10):
        proc = as_cron(user, command)
        assert proc.returncode == 0, proc.stderr
        if not any(p.exists() for p in pending):
            return
        time.sleep(3)
    raise AssertionError(f"still pending after 10 passes: {pending}")


class Guest:
    """A real domain on qemu:///system, reached through a fresh connection each time:
    other tests restart the shared libvirtd, which kills long-lived connections."""

    def __init__(self, name: str, xml: str) -> None:
        self.name = name
        self._call(lambda conn: conn.defineXML(xml))

    def _call(self, fn: Callable[[libvirt.virConnect], T]) -> T:
        for attempt in range(60):
            try:
                conn = libvirt.open("qemu:///system")
            except libvirt.libvirtError:
                time.sleep(1)
                continue
            try:
                return fn(conn)
            except libvirt.libvirtError:
                if attempt == 59:
                    raise
                time.sleep(1)
            finally:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.close()
        raise AssertionError("libvirtd did not come back within a minute")

    def active(self) -> bool:
        return self._call(lambda conn: bool(conn.lookupByName(self.name).isActive()))

    def autostart(self) -> bool:
        return self._call(lambda conn: bool(conn.lookupByName(self.name).autostart()))

    def remove(self) -> None:
        def gone(conn: libvirt.virConnect) -> None:
            dom = conn.lookupByName(self.name)
            if dom.isActive():
                dom.destroy()
            dom.undefine()

        self._call(gone)


def writable_by_others(root: str) -> list[str]:
    bad = []
    for folder, dirs, files in os.walk(root):
        for name in [folder, *(os.path.join(folder, n) for n in [*dirs, *files])]:
            st = os.lstat(name)
            if st.st_uid != 0 or (not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o022):
                bad.append(name)
    return bad


@pytest.fixture
def names() -> Iterator[tuple[str, str]]:
    # one install test at a time on this machine, whichever checkout it runs from
    lock = os.open("/run/lock/wirt-deploy-test.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        yield from _names()
    finally:
        os.close(lock)


def _names() -> Iterator[tuple[str, str]]:
    present = [p for p in PATHS if os.path.lexists(p)]
    if present:
        pytest.skip(f"wirt is installed on this host ({', '.join(present)}); not touching it")
    prefix = "wd" + secrets.token_hex(3)
    wrapper, group = prefix + "w", prefix + "g"
    try:
        yield wrapper, group
    finally:
        subprocess.run([*INSTALL, "--uninstall", "--purge"], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", OLD_TOP], check=False)  # absent before (checked above)
        remove_user(wrapper)
        sh("groupdel", group, check=False)


@pytest.mark.realvm
@pytest.mark.slow
def test_install_cron_as_wrapper_then_uninstall(names: tuple[str, str], tmp_path: Path) -> None:
    wrapper, group = names
    pam_before = Path("/etc/pam.d/wirt").read_bytes()

    # a legacy host: the old script at its path, in a folder anyone may write to
    backend = Path(OLD_TOP) / "backend"
    backend.mkdir(parents=True)
    for folder in (backend, backend.parent):
        folder.chmod(0o777)
    (backend / "virsh_wrapper.sh").write_text("#!/bin/bash\n# the old script\nexit 1\n")
    (backend / "virsh_wrapper.sh").chmod(0o755)

    # --- install, twice ---------------------------------------------------
    proc = subprocess.run([*INSTALL, "--wrapper-user", wrapper, "--group", group],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"created user {wrapper}" in proc.stdout and f"created group {group}" in proc.stdout
    config = Path("/etc/wirt/wirt.toml")
    first = os.stat(config)
    assert f'group = "{group}"' in config.read_text()
    assert writable_by_others("/opt/wirt") == []
    exe = Path("/usr/local/sbin/virsh_wrapper").read_text()
    assert exe.startswith("#!/opt/wirt/venv/bin/python -I\n")
    sudoers = os.stat("/etc/sudoers.d/wirt")
    assert stat.S_IMODE(sudoers.st_mode) == 0o440 and sudoers.st_uid == 0
    assert sh("visudo", "-c").returncode == 0
    assert f"{wrapper} ALL = (root) NOPASSWD:" in Path("/etc/sudoers.d/wirt").read_text()
    assert stat.S_IMODE(os.stat("/var/log/wirt").st_mode) == 0o700
    kept = backend / "virsh_wrapper.sh.legacy"
    assert "the old script" in kept.read_text() and not os.access(kept, os.X_OK)
    assert "drop-in for the legacy" in (backend / "virsh_wrapper.sh").read_text()
    for folder in (backend, backend.parent):  # root runs what is in them
        st = os.stat(folder)
        assert st.st_uid == 0 and not st.st_mode & 0o022, folder

    # a config an older install wrote: the lock in world-writable /run/lock, which
    # the pass now refuses (SECURITY.md row 14); the installer moves that one line
    # and keeps the rest, the admin's own edits too
    written = config.read_text()
    new_line = 'lock_file = "/run/wirt/wirt.lock"   # wirt makes /run/wirt, root-only'
    assert written.count(new_line) == 1, written
    mine = written + "# the admin's own note\n"
    config.write_text(mine.replace(new_line, 'lock_file = "/run/lock/wirt.lock"'))
    proc = subprocess.run([*INSTALL, "--wrapper-user", wrapper, "--group", group],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "created" not in proc.stdout and "kept your /etc/wirt/wirt.toml" in proc.stdout
    assert "moved lock_file in /etc/wirt/wirt.toml from /run/lock" in proc.stdout, proc.stdout
    assert config.read_text() == mine.replace(new_line, 'lock_file = "/run/wirt/wirt.lock"')
    again = os.stat(config)
    assert (again.st_uid, stat.S_IMODE(again.st_mode)) == (0, stat.S_IMODE(first.st_mode))
    assert sh("getent", "passwd", wrapper).stdout.count("\n") == 1
    assert os.access("/usr/local/sbin/wirt-audit", os.X_OK)
    # no mail from this test: the host's real MTA would deliver it
    config.write_text(config.read_text().replace("enabled = true", "enabled = false"))

    # --- a member with a real guest, both layouts --------------------------
    sh("useradd", "-m", "-U", "-G", group, f"{wrapper[:-1]}alice")
    entry = pwd.getpwnam(f"{wrapper[:-1]}alice")
    alice = User(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))
    # issue 15.1: the members find wirt on the PATH a login shell gives them
    found = sh("runuser", "-l", alice.name, "-c", "command -v wirt && wirt --help")
    assert found.stdout.startswith("/usr/local/bin/wirt\n"), found.stdout + found.stderr
    assert "complete" in Path("/usr/share/bash-completion/completions/wirt").read_text()
    page = sh("runuser", "-l", alice.name, "-c", "man -w wirt.toml virsh_wrapper", check=False)
    assert page.stdout.split() == ["/usr/local/share/man/man5/wirt.toml.5",
                                   "/usr/local/share/man/man8/virsh_wrapper.8"], page
    kernel, initrd = realvm.build_guest()
    dom = Guest(f"{alice.name}-web", realvm.domain_xml(f"{alice.name}-web", kernel, initrd,
                                                       tmp_path / "console.log"))
    try:
        alice.write("wirt/service/vm/web/start")
        alice.write("virsh/dom-web/autostart")
        command = cron_command(Path("/etc/cron.d/wirt"), wrapper)
        assert command == ("test -x /usr/local/sbin/virsh_wrapper && "
                           "sudo -n /usr/local/sbin/virsh_wrapper")
        until_taken(wrapper, command, [alice.home / "wirt/service/vm/web/start",
                                       alice.home / "virsh/dom-web/autostart"])
        assert dom.active() and dom.autostart()
        console = tmp_path / "console.log"  # an ACPI shutdown needs a booted guest
        assert realvm.wait_for(lambda: realvm.BOOTED in realvm.console_text(console), 60)

        # the old cron line, unchanged, through the installed drop-in: legacy only
        alice.write("virsh/dom-web/shutdown")  # empty, as legacy users write it
        alice.write("wirt/service/vm/web/autostart", "--disable")
        legacy = cron_command(REPO / "legacy/cron.d/virsh-wrapper", "wrapper")
        until_taken(wrapper, legacy, [alice.home / "virsh/dom-web/shutdown"])
        assert realvm.wait_for(lambda: not dom.active(), 60)
        assert dom.autostart() and (alice.home / "wirt/service/vm/web/autostart").exists()
        logs = sorted(os.listdir(alice.home / "virsh/log"))
        assert [re.sub(r"^[0-9]{2}_[A-Z][a-z]{2}_[0-9]{2}_[0-9.]{8}-", "", n)
                for n in logs] == [f"{alice.name}-dom-web-autostart.log",
                                   f"{alice.name}-dom-web-shutdown.log"], logs
        audit = Path("/var/log/wirt/audit.log").read_text()
        assert audit.count('"outcome":"done"') >= 3

        # the user's migration command, installed, run as alice
        proc = subprocess.run(["/usr/sbin/runuser", "-u", alice.name, "--",
                               "/usr/local/bin/wirt-migrate-legacy"],
                              capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not (alice.home / "virsh").exists()
        assert len(os.listdir(alice.home / "wirt/logs/history")) == 3
    finally:
        dom.remove()
        remove_user(alice.name)

    # --- uninstall: first the code, then everything install created --------
    proc = subprocess.run([*INSTALL, "--uninstall"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for path in ("/opt/wirt", "/usr/local/sbin/virsh_wrapper", str(backend / "virsh_wrapper.sh"),
                 "/etc/sudoers.d/wirt", "/etc/cron.d/wirt"):
        assert not os.path.lexists(path), path
    assert config.exists() and sh("getent", "passwd", wrapper).returncode == 0
    proc = subprocess.run([*INSTALL, "--uninstall", "--purge"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(backend) == ["virsh_wrapper.sh.legacy"]  # not install's: kept
    assert [p for p in PATHS if os.path.lexists(p)] == [OLD_TOP]
    assert not os.path.lexists("/var/log/wirt")
    assert sh("getent", "passwd", wrapper, check=False).returncode == 2
    assert sh("getent", "group", group, check=False).returncode == 2
    assert Path("/etc/pam.d/wirt").read_bytes() == pam_before  # it was there before: kept


def test_install_refuses_non_root_and_bad_names() -> None:
    proc = subprocess.run(["/usr/sbin/runuser", "-u", "nobody", "--", *INSTALL],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "run me as root" in proc.stderr
    proc = subprocess.run([*INSTALL, "--wrapper-user", "x;rm -rf /"], capture_output=True,
                          text=True)
    assert proc.returncode == 1 and "not a plain user name" in proc.stderr


def test_default_config_is_the_built_in_defaults() -> None:
    """deploy/wirt.toml documents the defaults; it must parse to exactly them."""
    import tomllib
    from dataclasses import fields

    from wirt_wrapper.rules.config import Config, Limits, MailConfig, parse_config

    data = tomllib.loads((REPO / "deploy/wirt.toml").read_text())
    assert parse_config(data, "x") == Config(path="x")
    # and it lists every key, so that a new one is not missing from the admin's file
    assert set(data) == {f.name for f in fields(Config)} - {"path"}
    assert set(data["limits"]) == {f.name for f in fields(Limits)}
    assert set(data["mail"]) == {f.name for f in fields(MailConfig)}
