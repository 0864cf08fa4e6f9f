"""A second, independent libvirt daemon on this machine, for the several-hosts tests (SPEC 13).

HOST-NOTES.md, "A second, independent libvirt daemon": a session-mode
``libvirtd`` run in the foreground by a dedicated system user, with its own
``XDG_RUNTIME_DIR``; root reaches it through its socket at
``qemu+unix:///session?socket=/run/user/UID/libvirt/libvirt-sock``.  QEMU runs
there unprivileged (TCG), and ``stdio_handler = "file"`` keeps a session
virtlogd away.  The daemon is started as that user directly (Popen's user=),
so the PID we hold is libvirtd's own: it is stopped, frozen and killed by that
PID, never by name (the system libvirtd is everyone's).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import libvirt

LIBVIRTD = "/usr/sbin/libvirtd"
START_TIMEOUT = 30.0


class SessionDaemon:
    """One session libvirtd of a throw-away system user; :meth:`remove` undoes everything."""

    def __init__(self) -> None:
        self.user = "wn" + secrets.token_hex(4)
        self.home = Path("/var/lib") / self.user
        subprocess.run(["useradd", "--system", "--create-home", "--home-dir", str(self.home),
                        "--shell", "/usr/sbin/nologin", "--user-group", self.user], check=True)
        entry = pwd.getpwnam(self.user)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        self.runtime = Path(f"/run/user/{self.uid}")
        self.runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chown(self.runtime, self.uid, self.gid)
        config = self.home / ".config" / "libvirt"
        config.mkdir(parents=True)
        (config / "qemu.conf").write_text('stdio_handler = "file"\n')
        for path in (self.home / ".config", config, config / "qemu.conf"):
            os.chown(path, self.uid, self.gid)
        self.socket = self.runtime / "libvirt" / "libvirt-sock"
        self.uri = f"qemu+unix:///session?socket={self.socket}"
        self.log = self.home / "libvirtd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._conn: Any = None

    def folder(self, name: str) -> Path:
        """A folder of the daemon's user (its QEMU writes the guests' consoles there)."""
        path = self.home / name
        path.mkdir(exist_ok=True)
        os.chown(path, self.uid, self.gid)
        return path

    def start(self) -> None:
        """Start libvirtd as the user and wait until it answers on its socket."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._conn = None
        env = {"HOME": str(self.home), "USER": self.user, "LOGNAME": self.user,
               "XDG_RUNTIME_DIR": str(self.runtime), "PATH": "/usr/sbin:/usr/bin:/bin"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([LIBVIRTD], user=self.uid, group=self.gid,
                                         extra_groups=[], env=env, cwd=str(self.home),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"session libvirtd exited {self.proc.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            if self.socket.exists():
                try:
                    libvirt.open(self.uri).close()
                    return
                except libvirt.libvirtError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"session libvirtd did not answer within {START_TIMEOUT:g} s")

    @property
    def conn(self) -> Any:
        if self._conn is None:
            self._conn = libvirt.open(self.uri)
        return self._conn

    def freeze(self) -> None:
        """SIGSTOP: the daemon hangs (a host that stops answering)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL (after SIGCONT, so that it does not linger stopped): the host is gone."""
        assert self.proc is not None
        self._conn = None
        os.kill(self.proc.pid, signal.SIGKILL)
        os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM by its PID, and wait (SIGKILL if it does not end)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self._conn = None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def remove_domains(self) -> None:
        """Destroy and undefine every domain of this daemon (the tests' own only)."""
        for dom in self.conn.listAllDomains(0):
            try:
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefine()
            except libvirt.libvirtError:
                pass

    def remove(self) -> None:
        """Stop the daemon and remove its user, home and runtime folder."""
        try:
            if self.proc is None or self.proc.poll() is not None:
                self.start()  # its QEMU processes outlive a killed daemon: it ends them
            self.remove_domains()
        finally:
            self.stop()
        subprocess.run(["userdel", "-r", "-f", self.user], check=False,
                       capture_output=True)
        shutil.rmtree(self.runtime, ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)
