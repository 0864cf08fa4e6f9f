"""Everything that talks to libvirt (runs as root, in the privileged process).

It is handed only validated requests (see :mod:`rootside`).  It never
creates, defines or undefines a domain, never runs ``virsh`` or a shell, and
never reads the URI from the environment.  Every libvirt call runs on one
worker thread with a timeout, so a hung libvirtd cannot hang the pass.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import libvirt
from lxml import etree

from .actions import Action

__all__ = ["OWNER_NS", "DomainInfo", "Hypervisor", "Unreachable"]

# The owner of a domain: <metadata><wirt:owner xmlns:wirt=OWNER_NS>alice</wirt:owner>
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


class Unreachable(Exception):
    """libvirt cannot be reached (now); commands stay pending."""


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

    def as_status(self) -> dict[str, Any]:
        return {
            "domain": self.name, "state": self.state, "reason": self.reason,
            "autostart": self.autostart, "persistent": self.persistent,
            "memory_kib": self.memory_kib, "vcpus": self.vcpus, "graphics": self.graphics,
        }


def _parse_xml(xml: str) -> tuple[str | None, dict[str, str], int, int]:
    root = etree.fromstring(xml.encode())
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
    memory = int(root.findtext("currentMemory") or root.findtext("memory") or 0)
    vcpu = root.find("vcpu")
    vcpus = int(vcpu.get("current") or vcpu.text or 0) if vcpu is not None else 0
    return (owner.strip() if owner else None), graphics, memory, vcpus


def state_names(state: int, reason: int) -> tuple[str, str]:
    name = STATES.get(state, f"state {state}")
    reasons = REASONS.get(name, [])
    return name, reasons[reason] if 0 <= reason < len(reasons) else f"reason {reason}"


class Hypervisor:
    """One libvirt connection for one pass, with a bulk snapshot for the idle path."""

    def __init__(self, uri: str, timeout: float) -> None:
        self.uri = uri
        self.timeout = timeout
        self.conn: Any = None
        self.down: str | None = None  # why libvirt is unusable for the rest of the pass
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="libvirt")
        self._doms: dict[str, Any] = {}
        self._states: dict[str, tuple[int, int]] = {}
        self._autostart: set[str] = set()
        self._persistent: set[str] = set()
        self._info: dict[str, DomainInfo] = {}

    def _call(self, fn: Callable[[], T]) -> T:
        if self.down:
            raise Unreachable(self.down)
        future = self._pool.submit(fn)
        try:
            return future.result(timeout=self.timeout)
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

    def _snapshot(self) -> None:
        conn = self.conn
        flags = libvirt.VIR_DOMAIN_STATS_STATE
        stats = self._call(lambda: conn.getAllDomainStats(flags))
        self._doms = {dom.name(): dom for dom, _ in stats}
        self._states = {
            dom.name(): (s.get("state.state", 0), s.get("state.reason", 0)) for dom, s in stats
        }
        auto = self._call(lambda: conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART))
        self._autostart = {d.name() for d in auto}
        pers = self._call(lambda: conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT))
        self._persistent = {d.name() for d in pers}

    def close(self) -> None:
        if self.conn is not None and not self.down:
            try:
                self._call(self.conn.close)
            except (libvirt.libvirtError, Unreachable):
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)

    def exists(self, name: str) -> bool:
        return name in self._doms

    def info(self, name: str, *, fresh: bool = False) -> DomainInfo | None:
        """What the user may see of *name*; None if there is no such domain.

        The snapshot serves the idle path; ``fresh`` asks libvirt again (after
        an action, and always before deciding ownership).
        """
        if not fresh and name in self._info:
            return self._info[name]
        if fresh:
            try:
                dom = self._call(lambda: self.conn.lookupByName(name))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    self._doms.pop(name, None)
                    self._info.pop(name, None)
                    return None
                raise
            self._doms[name] = dom
            state, reason = self._call(dom.state)
            autostart = bool(self._call(dom.autostart))
            persistent = bool(self._call(dom.isPersistent))
        else:
            dom = self._doms.get(name)
            if dom is None:
                return None
            state, reason = self._states[name]
            autostart = name in self._autostart
            persistent = name in self._persistent
        owner, graphics, memory, vcpus = _parse_xml(self._call(lambda: dom.XMLDesc(0)))
        state_name, reason_name = state_names(state, reason)
        info = DomainInfo(name, state_name, reason_name, autostart, persistent,
                          memory, vcpus, owner, graphics)
        self._info[name] = info
        return info

    def run(self, action: Action, params: dict[str, str], name: str) -> None:
        """Perform *action* on the domain *name*; raises libvirtError or Unreachable."""
        if action.call is None:
            return
        dom = self._doms[name]
        call = action.call
        self._call(lambda: call(dom, params))
