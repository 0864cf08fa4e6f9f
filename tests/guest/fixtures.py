"""Fixtures for the real-hypervisor tests (marker ``realvm``), loaded by tests/conftest.py.

- ``realhost``: conftest's Host, configured for ``qemu:///system``.
- ``guests``: defines ``<user>-<vm>`` domains from the tiny real guest
  (realvm.domain_xml) and always destroys and undefines them afterwards.
- ``wirt_pass``: THE way these tests run a pass.  Today root runs the venv's
  executable with a clean environment (Host.run); switch this one fixture to
  the installed cron+sudo path and every real-hypervisor test follows.

At the end of the session the terminal summary prints how long the
``realvm`` tests took and the durations the audit log recorded per action.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
import pytest
from conftest import VIRSH_WRAPPER, Host, User

from . import realvm

URI = "qemu:///system"
BOOT_TIMEOUT = 90.0  # TCG boots in ~3 s alone; several guests on 2 cores take longer
OFF_TIMEOUT = 30.0
FALLBACK_CACHE = Path("/var/cache/wirt-tests/guest")
DISK_DIR = Path("/var/lib/libvirt/images")  # QEMU (libvirt-qemu) reaches it on Debian

# Session totals for the terminal summary.
_REALVM_IDS: set[str] = set()
_REALVM_SECONDS: list[float] = []
_AUDIT_DURATIONS: dict[str, list[float]] = {}


class Libvirt:
    """The test's own view of libvirt, reconnecting after libvirtd was restarted."""

    def __init__(self) -> None:
        self._conn: Any = None

    @property
    def conn(self) -> Any:
        if self._conn is None:
            self._conn = libvirt.open(URI)
        return self._conn

    def lookup(self, name: str) -> Any:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise
        # isAlive() keeps saying yes on a connection whose libvirtd was killed,
        # until a call fails: then open a new one.
        self._conn = None
        return self.conn.lookupByName(name)


@dataclass
class Guest:
    """One real domain ``<user>-<vm>`` and the file its serial console writes to."""

    lv: Libvirt
    user: User
    vm: str
    console: Path

    @property
    def name(self) -> str:
        return f"{self.user.name}-{self.vm}"

    @property
    def dom(self) -> Any:
        return self.lv.lookup(self.name)

    def state(self) -> int:
        return int(self.dom.state()[0])

    def reason(self) -> int:
        return int(self.dom.state()[1])

    def console_text(self) -> str:
        return realvm.console_text(self.console)

    def boots(self) -> int:
        return self.console_text().count(realvm.BOOTED)

    def presses(self) -> int:
        return self.console_text().count(realvm.POWER_BUTTON)

    def wait_boots(self, count: int, timeout: float = BOOT_TIMEOUT) -> None:
        ok = realvm.wait_for(lambda: self.boots() >= count, timeout)
        assert ok, f"{self.name} did not boot {count}x: {self.console_text()!r}"

    def wait_state(self, state: int, timeout: float = OFF_TIMEOUT) -> None:
        ok = realvm.wait_for(lambda: self.state() == state, timeout)
        assert ok, f"{self.name} is in state {self.state()}, not {state}: {self.console_text()!r}"

    def command(self, action: str, content: str = "", mtime: float | None = None) -> Path:
        """Drop a command file into the user's spool, as the user."""
        return self.user.write(f"wirt/service/vm/{self.vm}/{action}", content, mtime)

    def spool(self) -> list[str]:
        folder = self.user.home / "wirt/service/vm" / self.vm
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []

    def log_lines(self) -> list[str]:
        return self.user.vm_log(self.vm).splitlines()

    def status(self) -> str:
        return self.user.status(self.vm)


@dataclass
class Guests:
    """Factory for real domains; everything defined here is removed at teardown."""

    lv: Libvirt
    kernel: Path
    initrd: Path
    folder: Path
    made: list[Guest] = field(default_factory=list)
    disks: Path | None = None  # a folder for qcow2 images (define_with_disk), removed after

    def define(self, user: User, vm: str, owner: str | None = None,
               edit: Callable[[str], str] | None = None) -> Guest:
        """The guest ``<user>-<vm>``; *edit* changes its XML before it is defined."""
        guest = Guest(self.lv, user, vm, self.folder / f"{user.name}-{vm}.console")
        xml = realvm.domain_xml(guest.name, self.kernel, self.initrd, guest.console, owner=owner)
        if edit is not None:
            xml = edit(xml)
        self.made.append(guest)
        self.lv.conn.defineXML(xml)
        return guest

    def define_with_disk(self, user: User, vm: str, owner: str | None = None) -> Guest:
        """Like define, with one small empty qcow2 disk (internal snapshots, SPEC 11)."""
        guest = Guest(self.lv, user, vm, self.folder / f"{user.name}-{vm}.console")
        if self.disks is None:
            self.disks = Path(tempfile.mkdtemp(prefix="wirt-test-", dir=DISK_DIR))
            self.disks.chmod(0o755)
        image = realvm.make_qcow2(self.disks / f"{guest.name}.qcow2")
        xml = realvm.domain_xml(guest.name, self.kernel, self.initrd, guest.console, owner=owner)
        self.made.append(guest)
        self.lv.conn.defineXML(realvm.with_qcow2_disk(xml, image))
        return guest

    def remove_all(self) -> None:
        """Destroy (in parallel: ~1.5 s each) and undefine every domain defined here."""

        def remove(guest: Guest) -> None:
            try:
                dom = guest.dom
            except libvirt.libvirtError:
                return  # never defined, or already gone
            try:
                if dom.isActive():
                    dom.destroy()
            finally:  # snapshots (SPEC 11 tests) would refuse a plain undefine
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)

        with concurrent.futures.ThreadPoolExecutor(max(1, len(self.made))) as pool:
            for future in [pool.submit(remove, g) for g in self.made]:
                future.result()
        if self.disks is not None:
            shutil.rmtree(self.disks, ignore_errors=True)


@pytest.fixture(scope="session")
def guest_image() -> tuple[Path, Path]:
    """(kernel, initrd) of the tiny guest, built once into the git-ignored cache.

    QEMU runs as libvirt-qemu and must reach the files: a checkout it cannot
    traverse (say, under /root) gets the cache in FALLBACK_CACHE instead.
    """
    try:
        return realvm.build_guest()
    except PermissionError as exc:
        print(f"realvm: {exc}; caching the guest in {FALLBACK_CACHE} instead")
        return realvm.build_guest(FALLBACK_CACHE)


@pytest.fixture
def realhost(host: Host) -> Iterator[Host]:
    """conftest's Host (real users, root-owned config) driving qemu:///system."""
    host.uri = URI
    host.write_config()
    try:
        yield host
    finally:
        for record in host.commands():
            if record["outcome"] == "done" and isinstance(record["action"], str):
                seconds = record["duration"]
                if isinstance(seconds, int | float):
                    _AUDIT_DURATIONS.setdefault(record["action"], []).append(float(seconds))


@pytest.fixture
def guests(realhost: Host, guest_image: tuple[Path, Path], tmp_path: Path) -> Iterator[Guests]:
    lv = Libvirt()
    folder = tmp_path / "consoles"
    folder.mkdir()
    made = Guests(lv, *guest_image, folder)
    try:
        yield made
    finally:
        made.remove_all()


class WirtPass:
    """How the real-hypervisor tests run a pass: the ONE place that knows.

    Today: root runs the venv's executable with a clean environment, as
    conftest's Host.run does.  To test the installed cron+sudo path instead,
    change ``command`` and ``env`` here.
    """

    env = {"PATH": "/usr/bin:/bin"}

    def __init__(self, host: Host) -> None:
        self.host = host

    def command(self, *args: str) -> list[str]:
        return [VIRSH_WRAPPER, "--config", str(self.host.config), *args]

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """One pass, to its end; with check, a non-zero exit fails the test."""
        proc = subprocess.run(self.command("--verbose", *args), capture_output=True,
                              text=True, env=self.env, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"virsh_wrapper exited {proc.returncode}: {proc.stderr}")
        return proc

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        """One pass in the background (to disturb libvirtd while it runs)."""
        return subprocess.Popen(self.command(*args), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env)


@pytest.fixture
def wirt_pass(realhost: Host) -> WirtPass:
    """Swap the runner here (e.g. the installed cron+sudo path) for every realvm test."""
    return WirtPass(realhost)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # By marker, not keyword: a checkout folder named "realvm" would match every test.
    _REALVM_IDS.update(i.nodeid for i in items if i.get_closest_marker("realvm"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid in _REALVM_IDS:
        _REALVM_SECONDS.append(report.duration)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _REALVM_SECONDS:
        return
    write = terminalreporter.write_line
    write(f"real-hypervisor tests (marker realvm): {sum(_REALVM_SECONDS):.1f} s in total "
          "(setup, call and teardown, guest build included)")
    for action, seconds in sorted(_AUDIT_DURATIONS.items()):
        write(f"  audit duration of '{action}' done on qemu:///system: n={len(seconds)} "
              f"median {statistics.median(seconds):.3f} s, max {max(seconds):.3f} s")
