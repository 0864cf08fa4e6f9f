"""Everything that talks to libvirt (runs as root, in the privileged process).

It is handed only validated requests (see :mod:`wirt_wrapper.root.monitor`).  It never
creates or undefines a domain (it redefines an existing persistent one only to
apply a VM's settings file, :meth:`Hypervisor.configure`, and the console lock,
:meth:`Hypervisor.lock`), never runs ``virsh``
or a shell, and never reads the URI from the environment.  Every libvirt call runs on one
worker thread with a timeout, so a hung libvirtd cannot hang the pass.  Domain XML is read
with ``VIR_DOMAIN_XML_SECURE`` (console passwords included) only to tell whether a console
has one and to write a definition back whole; a password never leaves this module except
the one :meth:`Hypervisor.reach` makes for console.json.
"""

from __future__ import annotations

import base64
import bisect
import concurrent.futures
import contextlib
import copy
import hashlib
import json
import os
import queue
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import libvirt
from lxml import etree

from wirt_wrapper.root import reach
from wirt_wrapper.root.definition import (
    apply_settings,
    cdrom_device_xml,
    read_settings,
    settings_from_tree,
)
from wirt_wrapper.rules.actions import (
    CONSOLE_FILE,
    DEFAULT_MINUTES,
    SCREEN_FILE,
    SERIAL_FILE,
    Action,
    Call,
    Rejection,
    no_domain,
)
from wirt_wrapper.rules.protocol import MAX_SCREEN
from wirt_wrapper.rules.settings import restart_needed

__all__ = ["OWNER_NS", "SNAPSHOT_MARK", "Decide", "DomainInfo", "Hypervisor", "Interrupted",
           "Trip", "Unreachable", "owner_claim", "owner_vm_of", "snapshot_by"]

# The owner of a domain: <metadata><wirt:owner xmlns:wirt=OWNER_NS>alice</wirt:owner>,
# and optionally the owner's VM folder that drives it: <wirt:owner vm="box">alice</wirt:owner>
OWNER_NS = "http://wirt.weimarnetz.de/xmlns/owner/1"

STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "no state",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "in shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}
# The live XML with passwords: whether a console has one is status.xml's protected="yes|no",
# and a definition written back must keep them.  No password leaves this module.
LIVE = libvirt.VIR_DOMAIN_XML_SECURE
HELD = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
# States with no QEMU process: the live XML is the definition itself.
OFF_STATES = (libvirt.VIR_DOMAIN_NOSTATE, libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED)
OFF_NAMES = frozenset({"no state", "shut off", "crashed"})  # their names (STATES)
# The reason names virsh prints (virsh domstate --reason), per state.
REASONS = {
    "running": ["unknown", "booted", "migrated", "restored", "from snapshot", "unpaused",
                "migration canceled", "save canceled", "event wakeup", "crashed",
                "post-copy", "post-copy failed"],
    "paused": ["unknown", "user", "migrating", "saving", "dumping", "I/O error", "watchdog",
               "from snapshot", "shutting down", "creating snapshot", "api error",
               "starting up", "post-copy", "post-copy failed"],
    "shut off": ["unknown", "shutdown", "destroyed", "crashed", "migrated", "saved",
                 "failed", "from snapshot", "daemon"],
    "in shutdown": ["unknown", "user"],
    "crashed": ["unknown", "panicked"],
}

T = TypeVar("T")
# Why a user may not drive a domain, given its owner metadata (owner, VM folder) read
# fresh at the trip (None: they may): see Monitor._decider.
Decide = Callable[[str | None, str | None], str | None]

# Who made a snapshot (SPEC 11).  libvirt 9.0's snapshot XML has no <metadata>, so a
# snapshot made through wirt carries "wirt-owner:<user>" as its <description>; any
# other description (or none) is the admin's.
SNAPSHOT_MARK = "wirt-owner:"
ADMIN = "admin"
MAX_SNAPSHOTS_LISTED = 100  # per domain, in status.xml and in root's cache
# A domain's cached snapshot list is read again after this long even when nothing
# else about the domain changed (the admin's virsh snapshot-create changes nothing
# else), each domain at its own point in the second half, so the re-reads spread
# over passes instead of all coming due in one.
SNAPSHOT_RECHECK_S = 3600.0


class Unreachable(Exception):
    """libvirt cannot be reached (now); commands stay pending."""


class Interrupted(Unreachable):
    """libvirt went away while an action's call was in flight: its effect is unknown."""


@dataclass
class Trip:
    """A trip to a libvirt thread under way (:meth:`Hypervisor.act_start`): the pass
    answers other users' requests meanwhile and finishes this one when :meth:`done`.

    *complete*(timeout) gives its (outcome, message, info after), on the pass's own
    thread, and raises as the call it stands for would (Unreachable, Interrupted,
    libvirtError); past *deadline* unfinished, libvirt counts as not answering.
    """

    future: concurrent.futures.Future[Any] | None  # None: decided without libvirt
    deadline: float  # time.monotonic()
    complete: Callable[[float], tuple[str, str, DomainInfo | None]]

    def done(self) -> bool:
        return self.future is None or self.future.done()

    def wait(self) -> tuple[str, str, DomainInfo | None]:
        """The outcome, waiting for it if need be (at most until the deadline)."""
        return self.complete(max(0.0, self.deadline - time.monotonic()))

    @classmethod
    def now(cls, outcome: tuple[str, str, DomainInfo | None]) -> Trip:
        """A trip that needs no libvirt call (refused before one)."""
        return cls(None, 0.0, lambda _timeout: outcome)

    @classmethod
    def failing(cls, exc: Exception) -> Trip:
        """A trip that could not start (libvirt down): completing it raises *exc*."""
        def complete(_timeout: float) -> tuple[str, str, DomainInfo | None]:
            raise exc
        return cls(None, 0.0, complete)


class _Worker:
    """One *daemon* thread that runs the libvirt calls, one at a time.

    Not a ThreadPoolExecutor: Python joins those threads at exit, so a call
    stuck in a frozen libvirtd would keep the finished pass alive, holding
    the pass lock, until libvirtd answered.  A daemon thread is abandoned.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]
                                      | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="libvirt", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, future = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return future

    def stop(self) -> None:
        self._jobs.put(None)


@dataclass
class DomainInfo:
    name: str
    state: str
    reason: str
    autostart: bool
    persistent: bool
    memory_kib: int
    vcpus: int
    owner: str | None
    graphics: dict[str, str] = field(default_factory=dict)
    # The settings (SPEC 9) as libvirt holds them, when read (see settings_of); else None.
    settings: dict[str, Any] | None = None
    # The VM folder the owner metadata names (<wirt:owner vm="box">), if any.
    owner_vm: str | None = None
    # Every snapshot (SPEC 11), when read (read_snapshots); else None.
    snapshots: list[dict[str, Any]] | None = None
    host: str | None = None  # the [[hosts]] name, with several hosts (SPEC 13); else None

    def as_status(self) -> dict[str, Any]:
        status = {
            "domain": self.name, "state": self.state, "reason": self.reason,
            "autostart": self.autostart, "persistent": self.persistent,
            "memory_kib": self.memory_kib, "vcpus": self.vcpus, "graphics": self.graphics,
        }
        if self.settings is not None:
            status["settings"] = self.settings
        if self.snapshots is not None:
            status["snapshots"] = self.snapshots
        if self.host is not None:
            status["host"] = self.host
        return status


class DefinitionStamps:
    """When a domain's XML may have changed, without asking libvirt: the local QEMU
    driver of ``qemu:///system`` saves every change of a domain's live XML to its status
    file (``/run/libvirt/qemu/NAME.xml``) and every change of its definition to
    ``/etc/libvirt/qemu/NAME.xml``, each time a new file put in place.  Their inode,
    mtime and size, with the domain's id, state and reason, make its stamp: while it
    is the same, what the XML said (memory, vCPUs, console, settings, owner metadata)
    is the same, and the idle pass reads no XML (issue 13: the details only when
    something could have changed them).  Other hosts and drivers have no stamps:
    their domains' XML is read on every pass.  Root's own files, never a user's."""

    LIVE_DIR = "/run/libvirt/qemu"
    CONFIG_DIR = "/etc/libvirt/qemu"

    def __init__(self, live_dir: str, config_dir: str) -> None:
        self.live_dir, self.config_dir = live_dir, config_dir

    @classmethod
    def local(cls, uri: str) -> DefinitionStamps | None:
        """The stamps of *uri*'s domains, if it is the local system QEMU driver."""
        if uri != "qemu:///system" or not os.path.isdir(cls.LIVE_DIR) \
                or not os.path.isdir(cls.CONFIG_DIR):
            return None
        return cls(cls.LIVE_DIR, cls.CONFIG_DIR)

    def of(self, name: str, dom: Any, state: int, reason: int, iso_dir: str) -> str | None:
        """*name*'s stamp; None when its files are not as the driver keeps them (then
        its XML is read)."""
        parts = [str(dom.ID()), str(state), str(reason), iso_dir]
        for folder, needed in ((self.live_dir, state not in OFF_STATES),
                               (self.config_dir, False)):
            try:
                st = os.stat(os.path.join(folder, name + ".xml"))
            except FileNotFoundError:
                if needed:
                    return None  # a running domain has a status file: not this driver's
                parts.append("-")
                continue
            except OSError:
                return None
            parts.append(f"{st.st_ino}.{st.st_mtime_ns}.{st.st_size}")
        return "|".join(parts)


# What details.json keeps of a domain's DomainInfo (what its XML said), and their types.
_CACHED: dict[str, type | tuple[type, ...]] = {
    "memory_kib": int, "vcpus": int, "owner": (str, type(None)), "graphics": dict,
    "settings": (dict, type(None)), "owner_vm": (str, type(None))}


def _cached_facts(info: DomainInfo) -> dict[str, Any]:
    return {key: getattr(info, key) for key in _CACHED}


def _cached_info(entry: Any, stamp: str, name: str, state: int, reason: int,
                 autostart: bool, persistent: bool) -> DomainInfo | None:
    """The DomainInfo of *name* from its details.json *entry*, if that was kept for
    *stamp* and is well formed; else None (then the XML is read)."""
    if not isinstance(entry, list) or len(entry) != 2 or entry[0] != stamp \
            or not isinstance(entry[1], dict) or set(entry[1]) != set(_CACHED):
        return None
    facts = entry[1]
    if any(not isinstance(facts[key], kind) or isinstance(facts[key], bool)
           for key, kind in _CACHED.items()):
        return None
    state_name, reason_name = state_names(state, reason)
    return DomainInfo(name, state_name, reason_name, autostart, persistent,
                      facts["memory_kib"], facts["vcpus"], facts["owner"],
                      dict(facts["graphics"]), copy.deepcopy(facts["settings"]),
                      facts["owner_vm"])


def _signature(info: DomainInfo) -> str:
    """What the rest of a domain's status says, in short: its snapshot list, kept in root's
    records, is read again when this changes.  On the idle path for every member's
    domain, so repr and blake2b (4 ms for 1,000 domains), not info_digest's JSON and
    sha256 (19 ms): a repr that differs after an upgrade costs one more read, no more."""
    facts = (info.state, info.reason, info.autostart, info.persistent, info.memory_kib,
             info.vcpus, info.owner, info.graphics, info.settings)
    return hashlib.blake2b(repr(facts).encode(), digest_size=12).hexdigest()


def snapshot_by(description: str | None) -> str:
    """Who made a snapshot, from its description: a user's name, or ``admin``."""
    text = (description or "").strip()
    if text.startswith(SNAPSHOT_MARK):
        user = text[len(SNAPSHOT_MARK):].strip()
        if user and user != ADMIN:
            return user
    return ADMIN


def _snapshot_facts(xml: str) -> dict[str, Any]:
    root = etree.fromstring(xml.encode())
    when = root.findtext("creationTime") or "0"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(when) if when.isdigit() else 0))
    return {"name": root.findtext("name") or "", "time": stamp,
            "state": root.findtext("state") or "", "current": False,
            "by": snapshot_by(root.findtext("description"))}


def read_snapshots(dom: Any, limit: int | None = MAX_SNAPSHOTS_LISTED) -> list[dict[str, Any]]:
    """Every snapshot of *dom*, oldest first (the newest *limit*; None: all, for the
    quotas), as {name, time (UTC), state, current, by}.  Costs 2 calls plus one per
    snapshot."""
    found = []
    for snap in dom.listAllSnapshots(0):
        try:
            found.append(_snapshot_facts(snap.getXMLDesc(0)))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                raise  # else deleted meanwhile
    try:
        current = dom.snapshotCurrent(0).getName() if found else None
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            raise
        current = None
    for item in found:
        item["current"] = item["name"] == current
    found.sort(key=lambda item: (item["time"], item["name"]))
    return found if limit is None else found[-limit:]


# The keys of DomainInfo.settings (and of status["settings"]).
SETTINGS_KEYS = ("memory_mib", "vcpus", "boot", "cdrom", "has_cdrom", "restart_needed")


def settings_of(xml: str | Any, iso_dir: str, live: str | None = None) -> dict[str, Any]:
    """DomainInfo.settings: what *xml* (text, or its parsed root) holds, plus
    ``restart_needed``.

    With *live* (the running domain's XMLDesc(0)), *xml* is the persistent
    definition and ``restart_needed`` says whether memory, vCPUs or boot order
    differ between the two.  Without it, *xml* is what XMLDesc(0) gave: for a
    domain that is not running (no ``id``) that is the definition itself
    (restart_needed False); for a running one it is what runs, and
    restart_needed is None (unknown: the persistent definition was not read).
    """
    root = etree.fromstring(xml.encode()) if isinstance(xml, str) else xml
    held = settings_from_tree(root, iso_dir)
    settings = {key: held[key] for key in SETTINGS_KEYS if key in held}
    if live is not None:
        settings["restart_needed"] = restart_needed(held, read_settings(live, iso_dir))
    else:
        settings["restart_needed"] = None if _is_live(root) else False
    return settings


def _is_live(root: Any) -> bool:
    """Whether a domain XML describes a running domain (it then has an id)."""
    return root.get("id") not in (None, "-1")


def parse_domain_xml(xml: str) -> tuple[str | None, dict[str, str], int, int]:
    return _domain_facts(etree.fromstring(xml.encode()))


def _domain_facts(root: Any) -> tuple[str | None, dict[str, str], int, int]:
    owner = root.findtext(f"metadata/{{{OWNER_NS}}}owner")
    graphics: dict[str, str] = {}
    node = root.find("devices/graphics")
    if node is not None:
        graphics["type"] = node.get("type", "")
        listen = node.get("listen") or node.findtext("listen[@address]") or ""
        listen_node = node.find("listen")
        if not listen and listen_node is not None:
            listen = listen_node.get("address", "")
        graphics["listen"] = listen
        port = node.get("port", "")
        graphics["port"] = port if port and port != "-1" else ""
        if node.get("tlsPort") and node.get("tlsPort") != "-1":
            graphics["tls-port"] = str(node.get("tlsPort"))
        # with a password (even ''), nobody gets in without the one `console` sets
        graphics["protected"] = "yes" if node.get("passwd") is not None else "no"
    memory = int(root.findtext("currentMemory") or root.findtext("memory") or 0)
    vcpu = root.find("vcpu")
    vcpus = int(vcpu.get("current") or vcpu.text or 0) if vcpu is not None else 0
    return (owner.strip() if owner else None), graphics, memory, vcpus


def owner_vm_of(root: Any) -> str | None:
    """The VM folder a domain XML's owner metadata names, or None."""
    node = root.find(f"metadata/{{{OWNER_NS}}}owner")
    vm = node.get("vm") if node is not None else None
    return vm if vm else None


def state_names(state: int, reason: int) -> tuple[str, str]:
    name = STATES.get(state, f"state {state}")
    reasons = REASONS.get(name, [])
    return name, reasons[reason] if 0 <= reason < len(reasons) else f"reason {reason}"


class Hypervisor:
    """One libvirt connection for one pass, with a snapshot of the cheap listings for the
    idle path and the details of the domains asked about."""

    def __init__(self, uri: str, timeout: float, iso_dir: str = "", host: str = "local",
                 console_lock: bool = False) -> None:
        self.uri = uri
        self.host = host  # its [[hosts]] name (SPEC 13); root.hosts routes domains to it
        self.console_lock = console_lock  # [console] lock: see lock()
        self.locked: list[str] = []  # domains the lock closed this pass (for the audit log)
        self.locked_guard = threading.Lock()  # appended on the libvirt thread, taken on ours
        self.timeout = timeout
        self.iso_dir = iso_dir  # settings.iso_dir: a CD from elsewhere shows as not catalogued
        self.conn: Any = None
        self.down: str | None = None  # why libvirt is unusable for the rest of the pass
        self._pool = _Worker()
        self._doms: dict[str, Any] = {}
        self._states: dict[str, tuple[int, int]] = {}
        self._autostart: set[str] = set()
        self._persistent: set[str] = set()
        self._info: dict[str, DomainInfo] = {}
        # Root's records (snapshots.json): domain -> [signature of the rest of its status,
        # its snapshots, when to read them again anyway].  Read only for a domain whose
        # signature changed or whose time came: never every domain's on the idle path.
        self.snapshot_cache: dict[str, list[Any]] = {}
        # when the listing was taken (epoch seconds; 0: not yet); the states of the domains
        # asked about are read right after it
        self.read_at = 0.0
        self._sorted: list[str] | None = None
        self._uuids: dict[str, str] | None = None  # uuids(), of this listing
        # per domain asked about: the read of its details, on the libvirt thread
        self._jobs: dict[str, concurrent.futures.Future[
            dict[str, tuple[DomainInfo, int, int, str | None]]]] = {}
        # Root's records (details.json): domain -> [stamp, what its XML said]; used instead
        # of reading the XML again while the stamp (DefinitionStamps) is the same.
        self.details_cache: dict[str, list[Any]] = {}
        self._stamps: DefinitionStamps | None = None  # set by connect where they work
        # written to when such a read is done, so the pass can wait in select (None: not)
        self.wake_fd: int | None = None

    def _call(self, fn: Callable[[], T]) -> T:
        return self._result(self._submit(fn), self.timeout)

    def _submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """*fn* queued for the libvirt thread (Unreachable when libvirt is known down)."""
        if self.down:
            raise Unreachable(self.down)
        if threading.current_thread() is self._pool.thread:  # would wait for itself
            raise RuntimeError("a libvirt call from a callback on the libvirt thread")
        return self._pool.submit(fn)

    def _result(self, future: concurrent.futures.Future[T], timeout: float) -> T:
        """What *future* gave, waiting at most *timeout* s: libvirt not answering by then
        is libvirt down (Unreachable), as is a lost connection."""
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            self.down = f"a libvirt call did not answer within {self.timeout:g} s"
            raise Unreachable(self.down) from None
        except libvirt.libvirtError as exc:
            if self.conn is not None and not self._alive():
                self.down = f"lost the connection to libvirt ({exc.get_error_message()})"
                raise Unreachable(self.down) from None
            raise

    def _alive(self) -> bool:
        try:
            return bool(self.conn.isAlive())
        except libvirt.libvirtError:
            return False

    def connect(self) -> None:
        """Open the connection and take the bulk snapshot; raises Unreachable."""
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        try:
            self.conn = self._call(lambda: libvirt.open(self.uri))
        except libvirt.libvirtError as exc:
            self.down = f"cannot connect to {self.uri}: {exc.get_error_message()}"
            raise Unreachable(self.down) from None
        try:
            self._snapshot()
        except libvirt.libvirtError as exc:
            self.down = f"cannot list domains on {self.uri}: {exc.get_error_message()}"
            raise Unreachable(self.down) from None
        self._stamps = DefinitionStamps.local(self.uri)

    def _snapshot(self) -> None:
        """The cheap listings of the whole host: every domain's name and UUID, and which
        are autostart or transient (few, usually).  No domain's state or XML: those are
        read only for the domains members' VM folders name (:meth:`request`), so the
        pass's cost follows the members' VMs, not the host's domain count (with 12,400
        domains on a loaded libvirtd, getAllDomainStats took 0.51 s, this listing 0.26 s)."""
        conn = self.conn
        self.read_at = time.time()
        listed = self._call(lambda: conn.listAllDomains(0))
        self._doms = {dom.name(): dom for dom in listed}
        self._sorted = self._uuids = None
        auto = self._call(lambda: conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART))
        self._autostart = {d.name() for d in auto}
        # persistent: all but the transient ones, listed instead (a short list, not the host)
        trans = self._call(lambda: conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT))
        transient = {d.name() for d in trans}
        self._persistent = {name for name in self._doms if name not in transient}

    def names(self) -> frozenset[str]:
        """The names of the domains the bulk listing found (connect), without a libvirt call."""
        return frozenset(self._doms)

    def close(self) -> None:
        if self.conn is not None and not self.down:
            try:
                self._call(self.conn.close)
            except (libvirt.libvirtError, Unreachable):
                pass
        self._pool.stop()

    def uuids(self) -> dict[str, str]:
        """{UUID: name} of every domain in the snapshot (no libvirt call: the UUID is
        held by each domain object); made once per listing."""
        if self._uuids is None:
            self._uuids = {dom.UUIDString(): name for name, dom in self._doms.items()}
        return self._uuids

    def exists(self, name: str) -> bool:
        """Whether the snapshot holds a domain named *name*."""
        return name in self._doms

    def names_from(self, prefix: str) -> list[str]:
        """The names in the snapshot that start with *prefix* (a bisection of the sorted
        listing, sorted once a pass: the cost of the matches, not of the host)."""
        if self._sorted is None:
            self._sorted = sorted(self._doms)
        found = []
        listed = self._sorted
        for index in range(bisect.bisect_left(listed, prefix), len(listed)):  # no copy
            if not listed[index].startswith(prefix):
                break
            found.append(listed[index])
        return found

    def state_of(self, name: str) -> str:
        """The state of *name*, read with its details ("" if no such domain)."""
        self.prefetch([name])
        if name not in self._states:
            return ""
        return state_names(*self._states[name])[0]

    def request(self, names: Iterable[str]) -> None:
        """Start reading the details of *names* (those that exist) on the libvirt
        thread, without waiting: the live XML, and for a running persistent domain
        its definition too (what its settings become at the next start:
        status.xml's restart-needed).  The pass forks user sides and reads other
        users' looks meanwhile; :meth:`prefetch` waits for what it needs."""
        if self.down:
            return
        wanted = [n for n in dict.fromkeys(names)
                  if n in self._doms and n not in self._info and n not in self._jobs]
        if not wanted:
            return
        doms = {n: self._doms[n] for n in wanted}
        persistent = {n for n in wanted if n in self._persistent}
        conn = self.conn

        def states() -> dict[str, tuple[int, int]]:
            """The state of *doms*: one call for all of them, or one each if that fails
            (one vanished meanwhile, say)."""
            found: dict[str, tuple[int, int]] = {}
            try:
                for dom, stats in conn.domainListGetStats(list(doms.values()),
                                                          libvirt.VIR_DOMAIN_STATS_STATE):
                    found[dom.name()] = (stats.get("state.state", 0),
                                         stats.get("state.reason", 0))
                return found
            except libvirt.libvirtError:
                if not self._alive():
                    raise
            for name, dom in doms.items():
                try:
                    state, reason = dom.state()
                except libvirt.libvirtError:
                    if not self._alive():
                        raise
                    continue
                found[name] = (state, reason)
            return found

        stamps, cache, iso_dir = self._stamps, self.details_cache, self.iso_dir

        def read() -> dict[str, tuple[DomainInfo, int, int, str | None]]:
            found: dict[str, tuple[DomainInfo, int, int, str | None]] = {}
            for name, (state, reason) in states().items():
                dom = doms[name]
                stamp = stamps.of(name, dom, state, reason, iso_dir) if stamps else None
                info = None if stamp is None else _cached_info(
                    cache.get(name), stamp, name, state, reason, name in self._autostart,
                    name in persistent)
                if info is None:
                    try:
                        live = dom.XMLDesc(LIVE)
                        held = (dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
                                if name in persistent and state not in OFF_STATES else None)
                    except libvirt.libvirtError:
                        if not self._alive():
                            raise
                        continue  # vanished meanwhile: no info, as for one that is not there
                    info = self._make_info(name, state, reason, name in self._autostart,
                                           name in persistent, live, iso_dir, held)
                found[name] = (info, state, reason, stamp)
            return found

        job = self._pool.submit(read)
        for name in wanted:
            self._jobs[name] = job
        if self.wake_fd is not None:
            job.add_done_callback(self._wake)

    def _wake(self, _job: object) -> None:
        """A read :meth:`request` started, or a :class:`Trip`, is done: one byte on
        :attr:`wake_fd` (a non-blocking pipe; full means the reader is woken already)."""
        try:
            os.write(self.wake_fd or -1, b".")
        except OSError:
            pass

    def owner_claims(self, uuids: list[str], chunk: int = 500
                     ) -> dict[str, tuple[str, str | None] | None]:
        """{UUID: (owner, VM folder) or None} of the domains *uuids*, read fresh (the
        owner index's new domains: ``virDomainGetMetadata``, one call each, in trips of
        *chunk* so each stays within the timeout).  A domain gone meanwhile is left out."""
        found: dict[str, tuple[str, str | None] | None] = {}
        if not uuids:
            return found  # the idle pass: nothing new
        listed = self.uuids()  # made once per listing
        todo = [self._doms[listed[u]] for u in uuids if u in listed]

        def read(part: list[Any]) -> dict[str, tuple[str, str | None] | None]:
            got: dict[str, tuple[str, str | None] | None] = {}
            for dom in part:
                try:
                    owner, vm = owner_claim(dom)
                except libvirt.libvirtError:
                    if not self._alive():
                        raise
                    continue  # gone meanwhile, or unreadable: not seen, asked again next pass
                got[dom.UUIDString()] = (owner, vm) if owner is not None else None
            return got

        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            found.update(self._call(lambda part=part: read(part)))  # type: ignore[misc]
        return found

    def details_ready(self, names: Iterable[str]) -> bool:
        """Whether the details of *names* asked by :meth:`request` are read (prefetch
        will not wait for them)."""
        return all(self._jobs[n].done() for n in names if n in self._jobs)

    def prefetch(self, names: Iterable[str]) -> None:
        """Fill the snapshot for *names*: read their details (or wait for the read
        :meth:`request` started) -- only for the domains asked about, never the host's."""
        names = list(dict.fromkeys(names))
        self.request(names)
        filled: list[str] = []  # read now: their snapshots come from the cache, or are read
        for name in names:
            job = self._jobs.pop(name, None)
            if job is None:
                continue
            try:
                found = job.result(timeout=self.timeout)
            except concurrent.futures.TimeoutError:
                self.down = f"libvirt did not give domain details within {self.timeout:g} s"
                raise Unreachable(self.down) from None
            except libvirt.libvirtError as exc:
                self.down = f"lost the connection to libvirt ({exc.get_error_message()})"
                raise Unreachable(self.down) from None
            if name not in found or name in self._info:
                continue  # vanished meanwhile; or known already (an action read it back)
            info, state, reason, stamp = found[name]
            self._states[name] = (state, reason)
            self._info[name] = info
            if stamp is not None:
                entry = [stamp, _cached_facts(info)]
                if self.details_cache.get(name) != entry:
                    # as details.json gives them back (keys sorted), so that the signature
                    # of its snapshot list is the same in the next pass
                    entry = json.loads(json.dumps(entry, sort_keys=True))
                    info.graphics, info.settings = entry[1]["graphics"], entry[1]["settings"]
                    self.details_cache[name] = entry
            filled.append(name)
        self._attach_snapshots(filled)

    def _attach_snapshots(self, names: list[str]) -> None:
        """Each domain's snapshots, from the cache when its signature (the rest of its
        status) is the one they were read with and their time has not come; the others
        read in one trip."""
        now = time.time()
        stale: dict[str, str] = {}
        for name in names:
            info = self._info[name]
            signature = _signature(info)
            cached = self.snapshot_cache.get(name)
            if isinstance(cached, list) and len(cached) == 3 and cached[0] == signature \
                    and isinstance(cached[2], int | float) and now < cached[2] \
                    and isinstance(cached[1], list):
                info.snapshots = cached[1]
            else:
                stale[name] = signature
        if not stale:
            return
        doms = self._doms

        def read() -> dict[str, list[dict[str, Any]]]:
            found = {}
            for name in stale:
                try:
                    found[name] = read_snapshots(doms[name])
                except libvirt.libvirtError:
                    if not self._alive():
                        raise  # else vanished meanwhile: no list, nothing cached
            return found

        for name, snapshots in self._call(read).items():
            self._info[name].snapshots = snapshots
            self._remember(name, self._info[name], snapshots)

    def _remember(self, name: str, info: DomainInfo, snapshots: list[dict[str, Any]],
                  before: list[Any] | None = None) -> None:
        """Cache *snapshots* for *info*'s signature; read again at the time *before* (the
        entry they came from) had, else within SNAPSHOT_RECHECK_S."""
        if isinstance(before, list) and len(before) == 3 and isinstance(before[2], int):
            again = float(before[2])
        else:
            spread = zlib.crc32(name.encode()) / 2**32  # per domain, fixed
            again = time.time() + SNAPSHOT_RECHECK_S * (0.5 + spread / 2)
        self.snapshot_cache[name] = [_signature(info), snapshots, round(again)]

    def info(self, name: str) -> DomainInfo | None:
        """What the snapshot says of *name* (idle path); None if there is no such domain."""
        self.prefetch([name])
        return self._info.get(name)

    @staticmethod
    def _make_info(name: str, state: int, reason: int, autostart: bool, persistent: bool,
                   xml: str, iso_dir: str = "", inactive: str | None = None) -> DomainInfo:
        root = etree.fromstring(xml.encode())
        owner, graphics, memory, vcpus = _domain_facts(root)
        state_name, reason_name = state_names(state, reason)
        settings = (_settings_or_none(inactive, iso_dir, xml) if inactive is not None
                    else _settings_or_none(root, iso_dir))
        return DomainInfo(name, state_name, reason_name, autostart, persistent,
                          memory, vcpus, owner, graphics, settings, owner_vm_of(root))

    def act_start(self, name: str, action: Action, params: dict[str, str],
                  decide: Decide) -> Trip:
        """Check ownership, perform *action*, read the state back: one trip to the libvirt
        thread, started (the pass serves other users while it runs: :class:`Trip`).

        *decide* maps the domain's owner metadata (owner and VM folder, read fresh,
        never from the snapshot or the owner index) to a reason to refuse, or None.
        Returns (outcome, message, info after).  Raises Unreachable if libvirt is
        gone before the action's call was sent, Interrupted if it went away (or
        stopped answering) after.
        """
        def work(dom: Any, owner: str | None, prev: DomainInfo | None,
                 sent: threading.Event) -> tuple[str, str, DomainInfo | None]:
            outcome, message = "done", ""
            try:
                if action.locks:
                    self.lock(dom, name, sent)
                if isinstance(action.call, Call):
                    sent.set()
                    action.call.invoke(dom, params, libvirt)
            except libvirt.libvirtError as exc:
                if not self._alive():
                    raise  # the connection dropped, not libvirt saying no
                outcome, message = "failed", f"libvirt: {exc.get_error_message()}"
            try:
                known = action.sets(params) if action.sets and outcome == "done" else {}
                info = _read_back(dom, name, owner, prev, action.touches, known, self.iso_dir)
            except libvirt.libvirtError as exc:
                info = None  # e.g. a transient domain that is gone after destroy
                if not self._alive():  # the outcome stands; later commands wait
                    self.down = f"lost the connection to libvirt ({exc.get_error_message()})"
            return outcome, message, info

        # a refresh (status) reads everything again, the snapshot list too
        return self._trip_start(name, decide, work, snapshots_change=action.call is None)

    def _trip(self, name: str, decide: Decide,
              work: Callable[[Any, str | None, DomainInfo | None, threading.Event],
                             tuple[str, str, DomainInfo | None]],
              snapshots_change: bool = False
              ) -> tuple[str, str, DomainInfo | None]:
        """:meth:`_trip_start`, waited for."""
        return self._trip_start(name, decide, work, snapshots_change).wait()

    def _trip_start(self, name: str, decide: Decide,
                    work: Callable[[Any, str | None, DomainInfo | None, threading.Event],
                                   tuple[str, str, DomainInfo | None]],
                    snapshots_change: bool = False) -> Trip:
        """One trip to the libvirt thread for one domain: look it up, check its owner
        metadata (read fresh) with *decide*, then *work*(dom, owner, info before, sent),
        which sets *sent* just before it changes anything.  Unreachable before that,
        Interrupted after; the info read back becomes the latest known.  Its snapshot
        list is read again only when *snapshots_change* (a snapshot action) or when
        none was known: no other action makes or removes snapshots."""
        missing = no_domain(name)
        sent = threading.Event()
        self.prefetch([name])
        prev = self._info.get(name)  # the latest known: snapshot, or an earlier command

        def job() -> tuple[str, str, DomainInfo | None]:
            dom = self._doms.get(name)
            try:
                if dom is None:
                    dom = self.conn.lookupByName(name)
                owner, owner_vm = owner_claim(dom)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                return "failed", missing, None
            problem = decide(owner, owner_vm)
            if problem:
                return "rejected", problem, None
            outcome, message, info = work(dom, owner, prev, sent)
            known = None if snapshots_change or prev is None else prev.snapshots
            if info is None:
                self.snapshot_cache.pop(name, None)
            elif known is not None:  # no snapshot action: the list is the one before
                info.snapshots = known
                self._remember(name, info, known, self.snapshot_cache.get(name))
            else:  # read now, kept for the state the command left
                try:
                    info.snapshots = read_snapshots(dom)
                    self._remember(name, info, info.snapshots)
                except libvirt.libvirtError as exc:
                    info.snapshots = None
                    self.snapshot_cache.pop(name, None)
                    if not self._alive():
                        self.down = f"lost the connection to libvirt ({exc.get_error_message()})"
            if info is not None:
                info.owner_vm = owner_vm
            return outcome, message, info

        future = self._submit(job)
        if self.wake_fd is not None:
            future.add_done_callback(self._wake)

        def complete(timeout: float) -> tuple[str, str, DomainInfo | None]:
            try:
                outcome, message, info = self._result(future, timeout)
            except Unreachable as exc:
                if sent.is_set():
                    raise Interrupted(str(exc)) from None
                raise
            if info is not None:
                self._info[name] = info
            return outcome, message, info

        return Trip(future, time.monotonic() + self.timeout, complete)

    def configure(self, name: str, wanted: dict[str, Any], iso_path: str | None,
                  decide: Decide,
                  check: Callable[[dict[str, Any]], None]
                  ) -> tuple[str, str, DomainInfo | None]:
        """Apply a VM's settings file (SPEC 9): one trip to the libvirt thread, as
        :meth:`act_start` makes.

        *wanted* is :func:`wirt_wrapper.rules.settings.parse`'s dict (only the
        keys the file names); *iso_path* is root's own path of the catalogue
        entry for ``cdrom`` (None: eject; the name in *wanted* is never made a
        path).  *decide* maps the owner metadata, read fresh, to a reason to
        refuse; *check* gets the settings the persistent definition holds now
        (:func:`~wirt_wrapper.root.definition.read_settings`, with
        ``has_cdrom``) and raises Rejection for a limit or quota.  Both run on
        the libvirt thread: they must not call this Hypervisor (so compute
        :meth:`usage` before).

        Writes the new persistent definition (defineXML) when it differs,
        and on a running domain changes the CD live as well.  Returns
        (outcome, message, info after, with ``settings`` and a known
        ``restart_needed``).  Raises Unreachable / Interrupted as :meth:`act_start`.
        """
        iso_dir = self.iso_dir

        def work(dom: Any, owner: str | None, prev: DomainInfo | None,
                 sent: threading.Event) -> tuple[str, str, DomainInfo | None]:
            if not dom.isPersistent():
                return "failed", (f"{name} is a transient domain (it has no persistent "
                                  "definition), so its settings cannot be changed; ask the "
                                  "admin to define it"), None
            inactive = dom.XMLDesc(HELD)  # defined back whole: its passwords stay
            held = read_settings(inactive, iso_dir)

            def back(definition: str) -> DomainInfo:
                return _read_back(dom, name, owner, prev, frozenset({"state", "devices"}), {},
                                  iso_dir, inactive=definition)

            try:
                check(held)
                new = apply_settings(inactive, wanted, iso_path)
            except (Rejection, ValueError) as exc:
                return "rejected", str(exc), back(inactive)
            changes = _changes(held, wanted, iso_path)
            outcome, notes = "done", []
            if changes:
                try:
                    sent.set()
                    self.conn.defineXML(new)
                except libvirt.libvirtError as exc:
                    if not self._alive():
                        raise
                    return ("failed", f"libvirt: {exc.get_error_message()}; nothing was "
                            "changed", back(inactive))
            live = dom.XMLDesc(LIVE) if dom.isActive() else None
            if live is not None and "cdrom" in wanted:
                now = read_settings(live, iso_dir)
                if now["has_cdrom"] and now["cdrom_file"] != (iso_path or ""):
                    try:
                        sent.set()
                        dom.updateDeviceFlags(cdrom_device_xml(live, iso_path),
                                              libvirt.VIR_DOMAIN_AFFECT_LIVE)
                        notes.append("the CD changed in the running VM too")
                    except libvirt.libvirtError as exc:
                        if not self._alive():
                            raise
                        outcome = "failed"
                        notes.append(f"libvirt: {exc.get_error_message()}: the CD in the "
                                     "running VM was not changed (the saved settings were, "
                                     "for its next start)")
            try:
                definition = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
                info = back(definition)
            except libvirt.libvirtError as exc:
                info = None
                if not self._alive():
                    self.down = f"lost the connection to libvirt ({exc.get_error_message()})"
            return outcome, _configure_message(changes, notes, info), info

        return self._trip(name, decide, work)

    def snapshot(self, name: str, op: str, snap: str, user: str,
                 decide: Decide,
                 check: Callable[[list[dict[str, Any]]], None]
                 ) -> tuple[str, str, DomainInfo | None]:
        """A snapshot action (SPEC 11) on domain *name*: one trip, like :meth:`act_start`.

        *op* is ``create``, ``revert`` or ``delete``; *snap* the snapshot's name
        (already held to the table's pattern); *user* the member asking.  *check*
        gets the domain's snapshots as libvirt lists them now and raises
        Rejection at a quota (create only; it runs on the libvirt thread, so it
        must not call this Hypervisor).  Only the user's own snapshots (marked
        with :data:`SNAPSHOT_MARK`) are reverted to or deleted.  Internal
        snapshots only: every disk must be qcow2.  Raises Unreachable /
        Interrupted as :meth:`act_start`.
        """
        iso_dir = self.iso_dir

        def work(dom: Any, owner: str | None, prev: DomainInfo | None,
                 sent: threading.Event) -> tuple[str, str, DomainInfo | None]:
            def back() -> DomainInfo:
                return _read_back(dom, name, owner, prev, frozenset({"state", "devices"}), {},
                                  iso_dir)

            existing = read_snapshots(dom, None)
            found = next((s for s in existing if s["name"] == snap), None)
            try:
                if op == "create":
                    return self._create(dom, snap, user, existing, found, check, sent, back)
                if found is None:
                    yours = [s["name"] for s in existing if s["by"] == user]
                    return "rejected", (f"there is no snapshot named '{snap}' of {name} "
                                        f"(yours: {', '.join(yours) or 'none'}); "
                                        "'wirt snapshots' lists them"), back()
                problem = _not_yours(found, user)
                if problem:
                    return "rejected", problem, back()
                target = dom.snapshotLookupByName(snap, 0)
                if op == "revert":
                    flags = {"running": libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING,
                             "paused": libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED
                             }.get(found["state"], 0)
                    sent.set()
                    dom.revertToSnapshot(target, flags)
                    state = {"shutoff": "shut off"}.get(found["state"], found["state"])
                    return "done", (f"back to snapshot '{snap}' of {found['time']}: "
                                    f"{state or 'as it was'} then, and now"), back()
                sent.set()
                target.delete(0)
                return "done", f"snapshot '{snap}' deleted", back()
            except libvirt.libvirtError as exc:
                if not self._alive():
                    raise
                return "failed", f"libvirt: {exc.get_error_message()}", back()

        return self._trip(name, decide, work, snapshots_change=True)

    @staticmethod
    def _create(dom: Any, snap: str, user: str, existing: list[dict[str, Any]],
                found: dict[str, Any] | None, check: Callable[[list[dict[str, Any]]], None],
                sent: threading.Event, back: Callable[[], DomainInfo]
                ) -> tuple[str, str, DomainInfo | None]:
        if found is not None:
            return "rejected", (f"there is already a snapshot named '{snap}' (made by "
                                f"{found['by']}); choose another name"), back()
        try:
            check(existing)
        except Rejection as exc:
            return "rejected", str(exc), back()
        live = dom.XMLDesc(0)
        problem = not_qcow2(live)
        if problem:
            return "failed", problem, back()
        running = _is_live(etree.fromstring(live.encode()))
        root = etree.Element("domainsnapshot")
        etree.SubElement(root, "name").text = snap
        etree.SubElement(root, "description").text = SNAPSHOT_MARK + user
        sent.set()
        dom.snapshotCreateXML(etree.tostring(root, encoding="unicode"), 0)
        what = ("with the running VM's memory: 'revert' brings it back running" if running
                else "of the shut-off VM: 'revert' brings it back shut off")
        return "done", f"snapshot '{snap}' taken, {what}", back()

    def snapshots_of(self, names: list[str]) -> dict[str, list[dict[str, Any]]]:
        """{domain: its snapshots, read now} for *names* (the per-user quota: only the
        domains the user's folders could map to, never the host's).  One trip; a
        domain that is not there is left out."""
        conn, doms = self.conn, self._doms

        def job() -> dict[str, list[dict[str, Any]]]:
            found = {}
            for name in names:
                try:
                    dom = doms.get(name) or conn.lookupByName(name)
                    found[name] = read_snapshots(dom, None)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        continue
                    raise
            return found

        return self._call(job)

    def lock(self, dom: Any, name: str, sent: threading.Event) -> bool:
        """The console lock (SPEC 10), on the libvirt thread: a persistent definition whose
        VNC or SPICE console has no password gets ``passwd=''`` (asks for a password, takes
        none until `console` sets one).  Only from the next start: QEMU cannot add a
        password to a console that started without one.  True when it changed."""
        if not self.console_lock or not dom.isPersistent():
            return False
        new = reach.lock_definition(dom.XMLDesc(HELD))
        if new is None:
            return False
        sent.set()
        self.conn.defineXML(new)
        with self.locked_guard:
            self.locked.append(name)
        return True

    def reach(self, name: str, action: Action, params: dict[str, str],
              decide: Decide
              ) -> tuple[str, str, DomainInfo | None, dict[str, Any] | None]:
        """A SPEC 10 action (console, screenshot, serial): one trip like :meth:`act_start`.

        Returns (outcome, message, info after, output): *output* is what the user
        side writes into the VM's info folder (rules.protocol.OUTPUT), only when
        done.  The console password is in *output* alone, never in the message.
        """
        output: dict[str, Any] = {}
        produce = {CONSOLE_FILE: self._console, SCREEN_FILE: self._screenshot,
                   SERIAL_FILE: self._serial}[action.output]

        def work(dom: Any, owner: str | None, prev: DomainInfo | None,
                 sent: threading.Event) -> tuple[str, str, DomainInfo | None]:
            try:
                if action.locks:
                    self.lock(dom, name, sent)
                outcome, message = produce(dom, params, sent, output)
            except libvirt.libvirtError as exc:
                if not self._alive():
                    raise
                outcome, message = "failed", f"libvirt: {exc.get_error_message()}"
            password = output.get("console", {}).get("password")
            if password and password in message:  # libvirt's words, never the password
                message = message.replace(password, "(password)")
            try:
                info = _read_back(dom, name, owner, prev, action.touches, {}, self.iso_dir)
            except libvirt.libvirtError as exc:
                info = None
                if not self._alive():
                    self.down = f"lost the connection to libvirt ({exc.get_error_message()})"
            return outcome, message, info

        outcome, message, info = self._trip(name, decide, work)
        if outcome == "done" and action.output == SERIAL_FILE:
            try:  # on this thread, not libvirt's: a slow file must not count as libvirt
                data = reach.read_tail(output.pop("path"))
            except reach.Refused as exc:
                return "failed", f"{name}: {exc}", info, None
            output["b64"] = base64.b64encode(data).decode("ascii")
            message = f"{len(data)} bytes of the serial log (its last {len(data) >> 10} KiB)"
        return outcome, message, info, ({"file": action.output, **output}
                                        if outcome == "done" else None)

    @staticmethod
    def _running(dom: Any, what: str) -> str | None:
        if dom.isActive():
            return None
        return f"the VM is not running (shut off): {what} exists only while it runs; start it"

    def _console(self, dom: Any, params: dict[str, str], sent: threading.Event,
                 output: dict[str, Any]) -> tuple[str, str]:
        not_running = self._running(dom, "its console")
        if not_running:
            return "failed", not_running
        device = reach.console_device(etree.fromstring(dom.XMLDesc(LIVE).encode()))
        if device is None:
            return "failed", ("the VM has no graphics device (a VNC or SPICE console); "
                              "ask the admin to add one")
        if device.get("passwd") is None:
            fix = ("the console lock has set an empty password in its definition: shut the VM "
                   "down, start it again, then ask for the console again" if self.console_lock
                   else "ask the admin to give its console a password (passwd='')")
            return "failed", ("its console was started without a password, and QEMU cannot "
                              f"add one to a running console; {fix}")
        port = device.get("port") or ""
        if not port.isdigit() or int(port) <= 0:
            return "failed", "its console has no port yet; try again in a moment"
        minutes = int(params.get("--minutes", DEFAULT_MINUTES))
        password = reach.new_password()
        until, shown = reach.valid_until(minutes)
        listen = device.get("listen") or ""
        listen_node = device.find("listen")
        if not listen and listen_node is not None:
            listen = listen_node.get("address", "")
        kind = str(device.get("type"))
        sent.set()
        dom.updateDeviceFlags(reach.graphics_update(device, password, until),
                              libvirt.VIR_DOMAIN_AFFECT_LIVE)
        output["console"] = {"type": kind, "host": listen or "127.0.0.1", "port": int(port),
                             "password": password, "valid_until": shown}
        return "done", (f"a {kind} console password, valid {minutes} minutes (until {shown}), "
                        f"for {listen or '127.0.0.1'} port {port}")

    def _screenshot(self, dom: Any, params: dict[str, str], sent: threading.Event,
                    output: dict[str, Any]) -> tuple[str, str]:
        not_running = self._running(dom, "its screen")
        if not_running:
            return "failed", not_running
        root = etree.fromstring(dom.XMLDesc(LIVE).encode())
        if root.find("devices/video") is None:
            return "failed", "the VM has no video device, so it has no screen; ask the admin"
        stream = self.conn.newStream(0)
        try:
            mime = dom.screenshot(stream, 0, 0)
            data = bytearray()
            while True:
                chunk = stream.recv(256 << 10)
                if not isinstance(chunk, bytes) or not chunk:
                    break
                data += chunk
                if len(data) > MAX_SCREEN:
                    stream.abort()
                    return "failed", (f"the screen image is larger than {MAX_SCREEN >> 20} "
                                      "MiB, more than wirt hands on; lower the VM's resolution")
            stream.finish()
        except libvirt.libvirtError:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            raise
        output.update(b64=base64.b64encode(bytes(data)).decode("ascii"), mime=str(mime or ""))
        return "done", f"the screen ({mime}, {len(data)} bytes)"

    @staticmethod
    def _serial(dom: Any, params: dict[str, str], sent: threading.Event,
                output: dict[str, Any]) -> tuple[str, str]:
        path = reach.serial_path(etree.fromstring(dom.XMLDesc(0).encode()))
        if path is None:
            return "failed", ("the VM's serial console is not logged to a file (no <serial "
                              "type='file'> and no <log file=...>); ask the admin to add one")
        output["path"] = path  # read by reach(), after the trip
        return "done", ""

    def open_consoles(self) -> list[tuple[str, str | None, dict[str, str]]]:
        """(domain, owner metadata, graphics) of every domain read this pass (the domains
        members' folders name) that runs with a console without a password, for the
        admin's digest: the live XML is read with its passwords (LIVE), so status.xml's
        protected= and this list come with no extra call."""
        return [(name, info.owner, info.graphics) for name, info in sorted(self._info.items())
                if info.graphics.get("protected") == "no" and info.state not in OFF_NAMES]

    def usage(self, user: str,
              decide_owner: Callable[[str, str | None], bool]) -> dict[str, tuple[int, int]]:
        """{domain: (memory_mib, vcpus)} of the persistent definition of every domain on
        the host that *decide_owner(domain name, owner metadata)* gives to *user*.

        For quotas (SPEC 9).  Cost: one listAllDomains and one XMLDesc(INACTIVE)
        per domain on the host (all in one trip to the libvirt thread, within
        one timeout; about a millisecond a domain on a local libvirtd), so call
        it only when a settings file is applied, never on the idle path.  The
        owner metadata is read from the same inactive XML.  A domain that
        vanishes meanwhile is left out.
        """
        conn = self.conn

        def job() -> dict[str, tuple[int, int]]:
            found: dict[str, tuple[int, int]] = {}
            for dom in conn.listAllDomains(0):
                try:
                    name = dom.name()
                    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        continue
                    raise
                root = etree.fromstring(xml.encode())
                meta = root.findtext(f"metadata/{{{OWNER_NS}}}owner")
                if decide_owner(name, meta.strip() if meta else None):
                    held = settings_from_tree(root, "")
                    found[name] = (held["memory_mib"], held["vcpus"])
            return found

        return self._call(job)


def _not_yours(snapshot: dict[str, Any], user: str) -> str | None:
    """Why *user* may not revert to or delete *snapshot*, or None if it is theirs."""
    if snapshot["by"] == user:
        return None
    if snapshot["by"] == ADMIN:
        return (f"snapshot '{snapshot['name']}' was made by the admin, not through wirt: "
                "it is listed but never reverted to or deleted by wirt; ask the admin")
    return (f"snapshot '{snapshot['name']}' was made by user '{snapshot['by']}'; you can "
            "revert to or delete only your own snapshots")


def not_qcow2(xml: str) -> str | None:
    """Why the domain in *xml* cannot have an internal snapshot, or None: every disk
    must be qcow2 (CD-ROM and floppy drives are not snapshotted)."""
    root = etree.fromstring(xml.encode())
    disks = [d for d in root.findall("devices/disk") if d.get("device", "disk") == "disk"]
    if not disks:
        return ("the VM has no disk: an internal snapshot is kept in its qcow2 disks; "
                "ask the admin for one")
    for disk in disks:
        kind = disk.find("driver")
        form = kind.get("type", "") if kind is not None else ""
        if form != "qcow2":
            target = disk.find("target")
            dev = target.get("dev", "?") if target is not None else "?"
            source = disk.find("source")
            where = ""
            if source is not None:
                where = " (" + (source.get("file") or source.get("dev") or source.get("name")
                                or "") + ")"
            return (f"disk {dev}{where} is {form or 'of an unknown format'}, not qcow2: "
                    "internal snapshots need every disk in qcow2; ask the admin to convert it")
    return None


def _changes(held: dict[str, Any], wanted: dict[str, Any],
             iso_path: str | None) -> list[str]:
    """What applying *wanted* changes in the definition that holds *held*, in words."""
    changes = []
    if "memory_mib" in wanted and wanted["memory_mib"] != held["memory_mib"]:
        changes.append(f"memory {wanted['memory_mib']} MiB (was {held['memory_mib']})")
    if "vcpus" in wanted and wanted["vcpus"] != held["vcpus"]:
        changes.append(f"vCPUs {wanted['vcpus']} (was {held['vcpus']})")
    if "boot" in wanted and list(wanted["boot"]) != held["boot"]:
        changes.append(f"boot order {','.join(wanted['boot'])} "
                       f"(was {','.join(held['boot']) or 'not set'})")
    if "cdrom" in wanted and (iso_path or "") != held["cdrom_file"]:
        was = held["cdrom"] or "empty"
        changes.append(f"CD {wanted['cdrom']} (was {was})" if iso_path is not None
                       else f"CD ejected (was {was})")
    return changes


def _configure_message(changes: list[str], notes: list[str], info: DomainInfo | None) -> str:
    """The outcome's message: what changed, and whether a restart is needed."""
    if changes:
        parts = ["set " + ", ".join(changes)]
    elif notes:
        parts = ["the saved definition already held these settings"]
    else:
        parts = ["no change: libvirt already holds these settings"]
    parts += notes
    settings = info.settings if info is not None else None
    restart = settings.get("restart_needed") if settings else None
    if restart:
        parts.append("memory, vCPUs and boot order take effect when the VM is shut down and "
                     "started again (a reboot inside it is not enough)")
    elif changes and info is not None and info.state == "shut off":
        parts.append("in effect at the next start")
    return "; ".join(parts)


def _read_back(dom: Any, name: str, owner: str | None, prev: DomainInfo | None,
               touches: frozenset[str], known: dict[str, bool], iso_dir: str = "",
               inactive: str | None = None) -> DomainInfo:
    """The domain after an action: what it *touches* asked again, what it is *known* to
    have set taken as set, the rest as known before.

    The settings come from the persistent definition (*inactive*, read here for a
    running domain when the caller does not have it) compared with the live XML
    read for "devices", or stay as before (actions that touch only the state keep the same
    QEMU process and definition).
    """
    if prev is None:
        touches = frozenset({"state", "autostart", "devices"})
        prev = DomainInfo(name, "", "", False, bool(dom.isPersistent()), 0, 0, owner)
    graphics, memory, vcpus = prev.graphics, prev.memory_kib, prev.vcpus
    state, reason = prev.state, prev.reason
    if "state" in touches:
        state, reason = state_names(*dom.state())
    settings = prev.settings
    if "devices" in touches:
        live = dom.XMLDesc(LIVE)
        root = etree.fromstring(live.encode())
        _, graphics, memory, vcpus = _domain_facts(root)
        if inactive is None and _is_live(root) and prev.persistent:
            inactive = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        if inactive is not None and _is_live(root):
            settings = _settings_or_none(inactive, iso_dir, live)
        else:
            settings = _settings_or_none(root, iso_dir)
    if "autostart" in known:
        autostart = known["autostart"]  # set by the call just made: not asked again
    else:
        autostart = bool(dom.autostart()) if "autostart" in touches else prev.autostart
    return DomainInfo(name, state, reason, autostart, prev.persistent, memory, vcpus, owner,
                      graphics, settings)


def _settings_or_none(xml: str | Any, iso_dir: str,
                      live: str | None = None) -> dict[str, Any] | None:
    """settings_of, or None for a definition wirt cannot read (never fails a pass)."""
    try:
        return settings_of(xml, iso_dir, live)
    except (ValueError, etree.XMLSyntaxError):
        return None


def owner_claim(dom: Any) -> tuple[str | None, str | None]:
    """The owner metadata of *dom*, asked of libvirt now: (owner, VM folder); (None, None)
    when it has none."""
    try:
        element = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OWNER_NS, 0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return None, None
        raise
    node = etree.fromstring(element.encode())
    text = (node.text or "").strip()
    if not text:
        return None, None
    return text, node.get("vm") or None
