"""The account check (PAM) as a pass runs it: no child of root just to find libpam.

python-pam finds libpam with ``ctypes.util.find_library``, which runs
``ldconfig -p`` (and maybe ``gcc``/``ld``) in a child of the root process: a
child that may be killed, or be something else found on the way.  wirt loads
``libpam.so.0`` by its soname instead.  These tests watch the real executable
with ``strace -f`` and check that the account check still refuses what PAM
refuses (an expired account is skipped, its commands stay pending).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import VIRSH_WRAPPER, Host, sh


def traced_pass(host: Host, trace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One real pass under ``strace -f``: every execve of it and of its children in *trace*."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    proc = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=execve", "-o", str(trace),
         VIRSH_WRAPPER, "--config", str(host.config), *args],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def execs(trace: Path) -> list[str]:
    """The programs execve'd in *trace* (tried or run), in order."""
    return re.findall(r'execve\("([^"]*)"', trace.read_text())


def test_a_pass_runs_no_program_to_find_libpam(host: Host, tmp_path: Path) -> None:
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None})
    alice.write("wirt/service/vm/web/autostart")  # a busy pass: a user side runs too
    trace = tmp_path / "trace"

    traced_pass(host, trace, "--verbose")

    [record] = host.commands()
    done = (record["user"], record["action"], record["outcome"])
    assert done == (alice.name, "autostart", "done")
    ran = execs(trace)
    assert not [p for p in ran if "ldconfig" in p], ran
    # the pass itself is the only program: PAM, the prober and the user sides exec nothing
    # (mail, the one thing a pass may run, is off in the tests)
    assert ran == [VIRSH_WRAPPER], ran


def test_an_expired_account_is_skipped(host: Host, tmp_path: Path) -> None:
    """PAM still decides: pam_acct_mgmt refuses an expired account, the others are served."""
    alice, bob = host.add_user("alice"), host.add_user("bob")
    host.write_config({f"{alice.name}-web": None, f"{bob.name}-web": None})
    alice.write("wirt/service/vm/web/autostart")
    bob.write("wirt/service/vm/web/autostart")
    sh("usermod", "--expiredate", "1", alice.name)
    trace = tmp_path / "trace"

    proc = traced_pass(host, trace, "--verbose")

    assert f"{alice.name}: skipped: PAM (wirt): " in proc.stdout, proc.stdout
    [skipped] = [r for r in host.audit_records() if r["event"] == "user-skipped"]
    assert skipped["user"] == alice.name and "PAM (wirt)" in str(skipped["reason"])
    assert [(r["user"], r["outcome"]) for r in host.commands()] == [(bob.name, "done")]
    assert (alice.home / "wirt/service/vm/web/autostart").exists()  # pending until it may act
    assert execs(trace) == [VIRSH_WRAPPER]


def test_the_account_check_starts_no_process() -> None:
    """In a fresh interpreter that cannot start a process, PAM is loaded and answers."""
    code = """
import os, subprocess, sys
def refuse(*args, **kwargs):
    raise AssertionError(f"a process was started: {args[:1]}")
subprocess.Popen = refuse
for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "execv", "execve",
             "execvp", "execvpe"):
    if hasattr(os, name):
        setattr(os, name, refuse)
from wirt_wrapper.root.accounts import AccountChecker
with AccountChecker("wirt") as accounts:
    print(accounts.problem("root"))
    print(accounts.problem("no-such-user-wirt"))
"""
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ok, unknown = proc.stdout.splitlines()
    assert ok == "None"  # root's account may act (root is never served; PAM allows it)
    assert unknown.startswith("PAM (wirt): "), unknown
