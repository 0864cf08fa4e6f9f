"""Fixtures shared by the suite: real Unix users and groups, a root-owned config,
libvirt's test driver with a host file, and the real ``virsh_wrapper`` executable.

The tests run as root (CI does), create users with a unique prefix and remove
them afterwards.  Nothing here mocks the tool: passes run the installed
executable in a subprocess, exactly as cron+sudo would.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
VIRSH_WRAPPER = str(BIN / "virsh_wrapper")

# Real-hypervisor fixtures (qemu:///system, the tiny guest) and their timing summary;
# the legacy tests' ``deployed`` (wrapper user, shim and sudoers drop-in).
pytest_plugins = ("guest.fixtures", "legacy_support")


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("wirt's tests run as root: they create real users and groups")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True)


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path

    def run(self, script: str, *args: str,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a shell snippet as this user (uid, gid and groups), in their home."""
        return subprocess.run(
            ["/usr/sbin/runuser", "-u", self.name, "--", "sh", "-c", script, "sh", *args],
            cwd=self.home, check=check, capture_output=True, text=True,
            env={"HOME": str(self.home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )

    def write(self, rel: str, content: str = "", mtime: float | None = None) -> Path:
        """Create ``~/rel`` (and its folders) as the user."""
        path = self.home / rel
        self.run('mkdir -p "$(dirname "$1")" && printf %s "$2" > "$1"', str(path), content)
        if mtime is not None:
            os.utime(path, (mtime, mtime), follow_symlinks=False)
        return path

    def vm_log(self, vm: str) -> str:
        path = self.home / "wirt/logs/vm" / f"{vm}.log"
        return path.read_text() if path.exists() else ""

    def status(self, vm: str) -> str:
        return (self.home / "wirt/info/vm" / vm / "status.xml").read_text()

    def history(self) -> list[str]:
        folder = self.home / "wirt/logs/history"
        return sorted(os.listdir(folder)) if folder.exists() else []


# The owner metadata's namespace (SPEC 4; root.hypervisor.OWNER_NS) and the element that
# names a domain's owner and, with *vm*, the owner's VM folder that drives it.
OWNER_NS = "http://wirt.weimarnetz.de/xmlns/owner/1"


def owner_meta(owner: str, vm: str | None = None) -> str:
    folder = f" vm='{vm}'" if vm else ""
    return (f"<metadata><wirt:owner xmlns:wirt='{OWNER_NS}'{folder}>{owner}</wirt:owner>"
            "</metadata>")


@dataclass
class Host:
    """A group with real members and a root-owned config for one test."""

    root: Path
    group: str
    prefix: str
    users: list[User] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    extra_config: str = ""
    uri: str | None = None
    hosts: dict[str, str] | None = None  # {name: uri}: [[hosts]] instead of uri (SPEC 13)

    @property
    def config(self) -> Path:
        return self.root / "etc" / "wirt.toml"

    @property
    def audit(self) -> Path:
        return self.root / "state" / "audit.log"

    def add_user(self, short: str, *, primary: bool = False) -> User:
        name = f"{self.prefix}{short}"
        if primary:
            sh("useradd", "-m", "-g", self.group, name)
        else:
            sh("useradd", "-m", "-U", "-G", self.group, name)
        entry = pwd.getpwnam(name)
        user = User(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))
        self.users.append(user)
        return user

    def domain_xml(self, name: str, owner: str | None = None, running: bool = False) -> str:
        """A test-driver domain with a console the lock has closed (SPEC 10: passwd=''), as
        on a host where wirt runs: an open one is in the admin's digest (test_reach_realvm)."""
        meta = owner_meta(owner) if owner else ""
        return (f"<domain type='test'><name>{name}</name><memory>65536</memory><vcpu>1</vcpu>"
                f"{meta}<os><type>hvm</type></os><devices><graphics type='vnc' port='5901' "
                f"listen='127.0.0.1' passwd=''/></devices></domain>")

    def write_config(self, domains: dict[str, str | None] | None = None,
                     running: tuple[str, ...] = ()) -> None:
        """Write the test-driver host file and a root-owned config pointing at it."""
        (self.root / "etc").mkdir(mode=0o755, exist_ok=True)
        uri = self.uri
        if uri is None:
            host = self.root / "etc" / "host.xml"
            body = "".join(self.domain_xml(n, o) for n, o in (domains or {}).items())
            host.write_text(f"<node>{body}</node>")
            uri = f"test://{host}"
        # No mail unless the test asks for it: the host's real MTA would deliver it.
        extra = self.extra_config if "[mail]" in self.extra_config else (
            f"{self.extra_config}\n[mail]\nenabled = false\n")
        where = f'uri = "{uri}"\n' if self.hosts is None else ""
        hosts = "".join(f'\n[[hosts]]\nname = "{name}"\nuri = "{at}"\n'
                        for name, at in (self.hosts or {}).items())
        self.config.write_text(
            f'group = "{self.group}"\n{where}pam_service = "wirt"\n'
            f'audit_log = "{self.audit}"\nlock_file = "{self.root}/state/lock"\n'
            f'state_dir = "{self.root}/state"\n{extra}{hosts}'
        )
        self.config.chmod(0o600)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the real executable as root, the way cron+sudo does (clean env)."""
        proc = subprocess.run(
            [VIRSH_WRAPPER, "--config", str(self.config), *args],
            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"virsh_wrapper exited {proc.returncode}: {proc.stderr}")
        return proc

    def audit_records(self) -> list[dict[str, object]]:
        import json

        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    def commands(self) -> list[dict[str, object]]:
        return [r for r in self.audit_records() if r["event"] == "command"]


def remove_user(name: str) -> None:
    sh("pkill", "-KILL", "-u", name, check=False)
    sh("userdel", "-r", "-f", name, check=False)


@pytest.fixture(scope="session", autouse=True)
def pam_service() -> None:
    """The PAM service file the tool ships (pam.d/wirt), installed if missing."""
    target = Path("/etc/pam.d/wirt")
    if not target.exists():
        shutil.copy(REPO / "pam.d" / "wirt", target)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    prefix = "wt" + secrets.token_hex(3)
    group = prefix + "g"
    sh("groupadd", group)
    root = tmp_path / "host"
    root.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    made = Host(root, group, prefix)
    try:
        yield made
    finally:
        for user in made.users:
            remove_user(user.name)
        sh("groupdel", group, check=False)


class SyslogSink:
    """A syslog daemon's datagram socket, bound by the test: where wirt's syslog lines
    go with ``syslog_socket`` = :attr:`path` (:attr:`config` is that line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config = f'syslog_socket = "{path}"\n'
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.received: list[str] = []

    def lines(self) -> list[str]:
        """Every line received so far (those waiting are read now)."""
        while True:
            try:
                self.received.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                return self.received


@pytest.fixture
def syslog_sink(tmp_path: Path) -> Iterator[SyslogSink]:
    sink = SyslogSink(tmp_path / "log.sock")
    try:
        yield sink
    finally:
        sink.sock.close()


@pytest.fixture
def alice_bob(host: Host) -> tuple[User, User]:
    return host.add_user("alice"), host.add_user("bob")


Factory = Callable[..., User]


@contextmanager
def passes(host: Host, interval: float = 0.05) -> Iterator[list[str]]:
    """Passes of the real executable, one after the other, until the block ends (as cron
    would run them, only sooner); none of them may exit non-zero."""
    stop = threading.Event()
    outputs: list[str] = []

    def loop() -> None:
        while not stop.is_set():
            proc = host.run("--verbose", check=False)
            outputs.append(proc.stdout + proc.stderr)
            if proc.returncode:
                outputs.append(f"EXIT {proc.returncode}")
            stop.wait(interval)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield outputs
    finally:
        stop.set()
        thread.join(120)
    assert not any(o.startswith("EXIT") for o in outputs), outputs


@contextmanager
def readable_config(host: Host) -> Iterator[str]:
    """A copy of the site config that members can read (root-owned, 0644, in a 0755 folder).

    The host's own config lives below pytest's 0700 temp folder, out of the users' reach.
    """
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=f"{host.prefix}-etc-", dir="/tmp"))
    folder.chmod(0o755)
    target = folder / "wirt.toml"
    shutil.copy(host.config, target)
    target.chmod(0o644)
    try:
        yield str(target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def tamper_keeping_signature(path: Path, old: bytes = b"<vm>", new: bytes = b"<VM>") -> bytes:
    """Change status.xml's content but not what the prober compares (inode, mtime, size,
    mode, links): only a full user side, which reads the file, can notice."""
    st = os.lstat(path)
    data = path.read_bytes()
    forged = data.replace(old, new, 1)
    assert forged != data and len(forged) == len(data)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, forged)
    finally:
        os.close(fd)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    after = os.lstat(path)
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (st.st_ino, st.st_mtime_ns,
                                                                 st.st_size)
    return forged
