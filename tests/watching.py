"""The watch service as the tests run it: the real ``virsh_wrapper --watch`` in a subprocess.

Started as root with a clean environment (as systemd would), stopped with
SIGTERM in teardown (it finishes its pass, releases the lock and exits 0).
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import VIRSH_WRAPPER, Host

from wirt_wrapper.rules.inotify import IN_CLOEXEC, IN_ISDIR, IN_ONLYDIR

IN_CLOSE_NOWRITE = 0x10  # not in rules.inotify: wirt never asks for it
_EVENT = struct.Struct("iIII")  # struct inotify_event, before its name


@contextmanager
def watching(host: Host, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``virsh_wrapper --watch`` until the block ends; waits until it says it is watching.

    Its stdout (with --verbose: every pass's summary) and stderr go to one file: stderr_of."""
    err = tempfile.TemporaryFile("w+")  # noqa: SIM115 - kept past the block, for stderr_of
    proc = subprocess.Popen([VIRSH_WRAPPER, "--config", str(host.config), "--watch", *args],
                            stdout=err, stderr=err, text=True,
                            env={"PATH": "/usr/bin:/bin"}, start_new_session=True)
    proc.stderr_file = err  # type: ignore[attr-defined]
    try:
        wait_for(lambda: "watching the spools" in stderr_of(proc) or proc.poll() is not None,
                 60, "the service to say it is watching")
        assert proc.poll() is None, f"the service exited {proc.returncode}: {stderr_of(proc)}"
        yield proc
    finally:
        try:
            stop(proc)
        finally:
            proc.final_stderr = stderr_of(proc)  # type: ignore[attr-defined]
            err.close()


def stderr_of(proc: subprocess.Popen[str]) -> str:
    if hasattr(proc, "final_stderr"):
        return str(proc.final_stderr)
    err = proc.stderr_file
    err.seek(0)
    return str(err.read())


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, and it must exit 0 within a while (its children with it)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError("the watch service did not stop on SIGTERM") from None
        assert proc.returncode == 0, f"exited {proc.returncode}: {stderr_of(proc)}"
    with_group_gone(proc.pid)


def with_group_gone(pgid: int) -> None:
    """No process of the service's session is left (spawner, prober, placers, user sides)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(pgid, signal.SIGKILL)
    raise AssertionError("processes of the watch service were left behind")


def wait_for(check: Callable[[], object], seconds: float, what: str) -> float:
    """Poll *check* until true; the seconds it took (AssertionError after *seconds*)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"waited {seconds:g} s for {what}")
        time.sleep(0.01)
    return time.monotonic() - started


@contextmanager
def listings_of(folder: Path) -> Iterator[Callable[[float, str], None]]:
    """A wait for the next time a process that opened *folder* itself (to list it, as the
    prober's look and a user side do) closes it again: the listing is done by then."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(IN_CLOEXEC)
    assert fd >= 0
    try:
        assert libc.inotify_add_watch(fd, str(folder).encode(),
                                      IN_CLOSE_NOWRITE | IN_ONLYDIR) >= 0

        def wait(seconds: float, what: str) -> None:
            deadline = time.monotonic() + seconds
            while True:
                left = deadline - time.monotonic()
                ready, _, _ = select.select([fd], [], [], max(0.0, left))
                if not ready:
                    raise AssertionError(f"waited {seconds:g} s for {what}")
                data, offset = os.read(fd, 4096), 0
                while offset < len(data):
                    _, mask, _, size = _EVENT.unpack_from(data, offset)
                    offset += _EVENT.size + size
                    if size == 0 and mask & IN_ISDIR:  # the folder itself, not a file in it
                        return

        yield wait
    finally:
        os.close(fd)
