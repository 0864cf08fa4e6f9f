"""SECURITY row 14: any local user squats the lock or a state path so that every pass refuses.

Precedent: lock files in sticky folders, the CVE class of the "pre-created
lock" denial of service.  The old default ``lock_file`` was
``/run/lock/wirt.lock`` in mode-1777 ``/run/lock``: after a reboot anyone, a
member or not, could ``touch`` it first and every pass exited 4.  Now the lock
and root's state live only in folders that wirt creates itself (mode 0700,
root's) and checks up to ``/`` on every start; a config that puts
``lock_file``, ``state_dir`` or ``audit_log`` in a folder that someone else
can write, or below a folder someone else owns, is refused (exit 2, naming
the key) before anything is created there.

The squatter is a fresh user who is *not* in wirt's group.  The default
folder ``/run/wirt`` is shared with every other pass on this machine, so the
test that must see wirt create it runs the pass in a private mount namespace
with an empty ``/run`` (``unshare``), never touching the real one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
from conftest import VIRSH_WRAPPER, Host, User, sh

pytestmark = pytest.mark.attack

OLD_DEFAULT_LOCK = Path("/run/lock/wirt.lock")  # the default before SECURITY row 14
DEFAULT_FOLDER = Path("/run/wirt")
DEFAULT_LOCK = DEFAULT_FOLDER / "wirt.lock"
EXIT_CONFIG = 2  # the configuration is unsafe (literal on purpose: the old code has no errors.py)


def outsider(host: Host) -> User:
    """A fresh local user who is not a member (removed with the host's users)."""
    name = f"{host.prefix}mallory"
    sh("useradd", "-m", "-U", name)
    entry = pwd.getpwnam(name)
    user = User(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))
    host.users.append(user)
    return user


def set_keys(host: Host, **values: str | None) -> None:
    """Rewrite the host's config: each key set to its value, or left out when None
    (then the built-in default applies).  Top-level keys go before any table."""
    lines = [line for line in host.config.read_text().splitlines()
             if not any(line.startswith(f"{key} = ") for key in values)]
    head = [f'{key} = "{value}"' for key, value in values.items() if value is not None]
    host.config.write_text("\n".join([*head, *lines]) + "\n")
    host.config.chmod(0o600)


def served_scene(host: Host) -> User:
    """A member with one pending command that a working pass serves."""
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None})
    alice.write("wirt/service/vm/web/autostart")
    return alice


def run_served(host: Host) -> subprocess.CompletedProcess[str]:
    """A pass; again while another pass holds the shared default lock (other
    checkouts on this machine may run a pass with the defaults at the same time)."""
    for _ in range(30):
        proc = host.run("--verbose", check=False)
        if proc.returncode != 0 or "another pass is running" not in proc.stdout:
            return proc
        time.sleep(1)
    raise AssertionError(f"{DEFAULT_LOCK} stayed locked by another pass for 30 s")


def test_a_squatted_old_default_lock_stops_no_pass(host: Host) -> None:
    """A non-member creates the old default lock first; a pass with the default
    lock_file still runs and serves the member's command."""
    if os.path.lexists(OLD_DEFAULT_LOCK):
        pytest.skip(f"{OLD_DEFAULT_LOCK} exists already: not this test's to plant or remove")
    alice = served_scene(host)
    set_keys(host, lock_file=None)  # state and audit stay in the test's folder
    mallory = outsider(host)
    made_default = not os.path.lexists(DEFAULT_FOLDER)
    squat: os.stat_result | None = None
    try:
        mallory.run(f"touch {OLD_DEFAULT_LOCK}")
        squat = os.lstat(OLD_DEFAULT_LOCK)
        assert squat.st_uid == mallory.uid

        proc = run_served(host)
        assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
        assert [(r["user"], r["outcome"]) for r in host.commands()] == [(alice.name, "done")]
        assert not (alice.home / "wirt/service/vm/web/autostart").exists()
        after = os.lstat(OLD_DEFAULT_LOCK)  # the squatter's file is not wirt's business
        assert (after.st_ino, after.st_uid, after.st_size) == (squat.st_ino, mallory.uid, 0)
        st = os.lstat(DEFAULT_LOCK)
        assert stat.S_ISREG(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600
        st = os.lstat(DEFAULT_FOLDER)
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700
    finally:
        with contextlib.suppress(FileNotFoundError):
            if squat is not None and os.lstat(OLD_DEFAULT_LOCK).st_ino == squat.st_ino:
                os.unlink(OLD_DEFAULT_LOCK)
        if made_default:
            remove_default_folder()


def remove_default_folder() -> None:
    """Remove /run/wirt made by this test's pass, unless a pass holds its lock now."""
    try:
        fd = os.open(DEFAULT_LOCK, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        fd = -1
    try:
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # someone else's pass runs: leave the folder to it
            os.unlink(DEFAULT_LOCK)
        with contextlib.suppress(OSError):
            os.rmdir(DEFAULT_FOLDER)
    finally:
        if fd >= 0:
            os.close(fd)


@pytest.mark.parametrize("key", ["lock_file", "state_dir", "audit_log"])
def test_b_a_state_path_in_a_world_writable_folder_is_refused(host: Host, key: str) -> None:
    """lock_file in /run/lock, state_dir or audit_log's folder in /tmp: exit 2, the key
    named, nothing made there (anyone could have made it first), nothing served."""
    alice = served_scene(host)
    unique = f"wirt-{host.prefix}"
    path, made = {
        "lock_file": (f"/run/lock/{unique}.lock", f"/run/lock/{unique}.lock"),
        "state_dir": (f"/tmp/{unique}", f"/tmp/{unique}"),
        "audit_log": (f"/tmp/{unique}/audit.log", f"/tmp/{unique}"),
    }[key]
    assert not os.path.lexists(made)
    set_keys(host, **{key: path})
    try:
        proc = host.run(check=False)
        assert proc.returncode == EXIT_CONFIG, (proc.returncode, proc.stderr)
        assert proc.stderr.startswith(f"virsh_wrapper: {key}: "), proc.stderr
        assert "writable by group or others" in proc.stderr, proc.stderr
        assert not os.path.lexists(made)
        assert (alice.home / "wirt/service/vm/web/autostart").exists()
        assert host.commands() == []
    finally:
        remove_made(made)


def remove_made(path: str) -> None:
    """What the old code made where it must not have (this test's unique name)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


@pytest.mark.parametrize("key", ["lock_file", "state_dir", "audit_log"])
def test_c_a_folder_above_owned_by_a_user_is_refused(host: Host, key: str) -> None:
    """A user's own folder under /var/tmp (mode 0755: only its owner writes it, but the
    owner can rename and replace what root makes in it): exit 2, the key named, and
    root made nothing inside it."""
    alice = served_scene(host)
    mallory = outsider(host)
    folder = Path(f"/var/tmp/wirt-{host.prefix}")
    path = {"lock_file": folder / "run/wirt.lock", "state_dir": folder / "state",
            "audit_log": folder / "log/audit.log"}[key]
    try:
        mallory.run(f"mkdir -m 0755 {folder}")
        assert os.lstat(folder).st_uid == mallory.uid
        set_keys(host, **{key: str(path)})
        proc = host.run(check=False)
        assert proc.returncode == EXIT_CONFIG, (proc.returncode, proc.stderr)
        assert proc.stderr.startswith(f"virsh_wrapper: {key}: "), proc.stderr
        assert f"{folder} is owned by uid {mallory.uid}" in proc.stderr, proc.stderr
        assert os.listdir(folder) == []
        assert (alice.home / "wirt/service/vm/web/autostart").exists()
        assert host.commands() == []
    finally:
        remove_made(str(folder))


# In a private mount namespace: an empty /run (as after a reboot) with a
# mode-1777 /run/lock; the pass, then what it left in /run.
IN_EMPTY_RUN = """
mount -t tmpfs -o mode=0755 tmpfs /run || exit 99
mkdir -m 1777 /run/lock
"$@" >/dev/null 2>/run/stderr
echo "rc=$?"
cat /run/stderr
for path in /run/wirt /run/wirt/wirt.lock /run/wirt-t /run/wirt-t/a /run/wirt-t/a/b \
            /run/wirt-t/a/b/wirt.lock /run/wirt-t/state /run/wirt-t/log /run/lock/wirt.lock; do
  [ -e "$path" ] && stat -c "%n %a %u %F" "$path"
done
exit 0
"""


def in_empty_run(host: Host) -> list[str]:
    if not shutil.which("unshare"):
        raise AssertionError("unshare (util-linux) is needed: the real /run/wirt is shared")
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", IN_EMPTY_RUN, "sh",
         VIRSH_WRAPPER, "--config", str(host.config)],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("rc="), proc.stdout + proc.stderr
    return proc.stdout.splitlines()


def test_d_the_default_folder_is_made_by_wirt_root_only(host: Host) -> None:
    """After a reboot /run/wirt does not exist: the pass makes it (0700, root) and its
    lock in it (0600, root), and nothing in world-writable /run/lock."""
    alice = served_scene(host)
    set_keys(host, lock_file=None)
    lines = in_empty_run(host)
    assert lines == ["rc=0", "/run/wirt 700 0 directory",
                     "/run/wirt/wirt.lock 600 0 regular empty file"], lines
    assert [(r["user"], r["outcome"]) for r in host.commands()] == [(alice.name, "done")]


def test_d_every_missing_folder_is_made_root_only(host: Host) -> None:
    """Every folder wirt makes for its lock and state is 0700, not only the last one
    (the old code's makedirs left the ones above at 0755)."""
    alice = served_scene(host)
    set_keys(host, lock_file="/run/wirt-t/a/b/wirt.lock", state_dir="/run/wirt-t/state",
             audit_log="/run/wirt-t/log/audit.log")
    lines = in_empty_run(host)
    assert lines == ["rc=0", "/run/wirt-t 700 0 directory", "/run/wirt-t/a 700 0 directory",
                     "/run/wirt-t/a/b 700 0 directory",
                     "/run/wirt-t/a/b/wirt.lock 600 0 regular empty file",
                     "/run/wirt-t/state 700 0 directory", "/run/wirt-t/log 700 0 directory"
                     ], lines
    assert (not (alice.home / "wirt/service/vm/web/autostart").exists()), lines
