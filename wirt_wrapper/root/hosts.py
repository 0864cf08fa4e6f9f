"""Several hypervisor hosts (SPEC section 13): one :class:`Hypervisor` per host, one interface.

:class:`Hosts` offers what the pass (:mod:`~wirt_wrapper.root.scheduler`,
:mod:`~wirt_wrapper.root.monitor`) asks of libvirt, and routes each domain to
the one host whose bulk listing has it.  Each Hypervisor keeps its own libvirt
thread and its own timeout, so the hosts are connected and listed at the same
time, and a hung host costs its ``libvirt_timeout`` once a pass (after that it
is *down* and answers at once).  A domain listed on two hosts is refused
(ambiguous); a domain found on no reachable host while some host is down
stays pending, naming the host that is down.

With no ``[[hosts]]`` in the config there is one host, ``local``, at ``uri``:
then nothing is named after a host (messages, status.xml) and every domain
goes to it, as before there were several.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from wirt_wrapper.root.hypervisor import Decide, DomainInfo, Hypervisor, Trip, Unreachable
from wirt_wrapper.rules.actions import Action, ambiguous_domain, no_domain, on_a_host_down
from wirt_wrapper.rules.config import Config, HostConfig

__all__ = ["Hosts"]

Outcome = tuple[str, str, DomainInfo | None]


class Hosts:
    """The hosts of one pass; *named*: the config has ``[[hosts]]`` (host names are shown)."""

    def __init__(self, hosts: Sequence[HostConfig], timeout: float, iso_dir: str = "",
                 named: bool = False, console_lock: bool = False) -> None:
        self.named = named
        self.members = [Hypervisor(h.uri, timeout, iso_dir, host=h.name,
                                   console_lock=console_lock) for h in hosts]
        self._where: dict[str, list[Hypervisor]] = {}
        self._connecting: threading.Thread | None = None  # start_connect's

    @classmethod
    def from_config(cls, config: Config, iso_dir: str = "") -> Hosts:
        return cls(config.host_list(), config.limits.libvirt_timeout, iso_dir,
                   named=bool(config.hosts), console_lock=config.console.lock)

    # -- the hosts' state --------------------------------------------------------
    def _why(self, hv: Hypervisor) -> str:
        """*hv*'s reason to be down, naming it when there are named hosts."""
        return f"host {hv.host}: {hv.down}" if self.named else str(hv.down)

    @property
    def down(self) -> str | None:
        """Why no host can be used (every command waits); None while one is reachable."""
        if all(hv.down for hv in self.members):
            return "; ".join(self._why(hv) for hv in self.members)
        return None

    def problems(self) -> dict[str, str]:
        """{host name: why it is down} for the hosts that are down now."""
        return {hv.host: self._why(hv) for hv in self.members if hv.down}

    def start_connect(self) -> None:
        """Begin :meth:`connect` on a thread of its own: the listings (libvirt's time more
        than root's) come in while the pass reads its records; :meth:`connect` waits."""
        self._connecting = threading.Thread(target=self._connect_all, name="connect",
                                            daemon=True)
        self._connecting.start()

    def connect(self) -> None:
        """Connect to every host and list its domains, all at once (one thread each), or
        wait for what :meth:`start_connect` began.

        Raises Unreachable only when no host could be reached; :meth:`problems`
        says which are down.
        """
        if self._connecting is None:
            self._connect_all()
        else:
            self._connecting.join()  # bounded by each host's timeouts
            self._connecting = None
        if self.down:
            raise Unreachable(self.down)

    def _connect_all(self) -> None:
        def one(hv: Hypervisor) -> None:
            try:
                hv.connect()
            except Unreachable:
                pass  # hv.down says why
            except Exception as exc:  # noqa: BLE001 -- a host's failure is that host's only
                hv.down = hv.down or f"cannot use {hv.uri}: {exc}"

        if len(self.members) == 1:
            one(self.members[0])
        else:
            threads = [threading.Thread(target=one, args=(hv,), name=f"connect-{hv.host}",
                                        daemon=True) for hv in self.members]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()  # each connect is bounded by its host's timeouts
        self._where = {}
        if len(self.members) > 1:  # with one host, _on needs no map
            for hv in self.members:
                for name in hv.names():
                    self._where.setdefault(name, []).append(hv)

    def close(self) -> None:
        for hv in self.members:
            hv.close()

    def all_listed(self) -> bool:
        """Whether every host was reached and listed (so :meth:`names` is the whole truth)."""
        return all(hv.conn is not None and not hv.down for hv in self.members)

    def names(self) -> frozenset[str]:
        """The domains of every reachable host's listing (no call to libvirt)."""
        return frozenset().union(*(hv.names() for hv in self.members))

    @property
    def read_at(self) -> float:
        """When the oldest of the reachable hosts' listings was read (0: none yet)."""
        return min((hv.read_at for hv in self.members if hv.read_at and not hv.down),
                   default=0.0)

    @property
    def snapshot_cache(self) -> dict[str, list[Any]]:
        """Root's snapshot lists (records' snapshots.json), one dict shared by every host."""
        return self.members[0].snapshot_cache

    @snapshot_cache.setter
    def snapshot_cache(self, cache: dict[str, list[Any]]) -> None:
        for hv in self.members:
            hv.snapshot_cache = cache

    @property
    def details_cache(self) -> dict[str, list[Any]]:
        """Root's domain details (records' details.json), one dict shared by every host."""
        return self.members[0].details_cache

    @details_cache.setter
    def details_cache(self, cache: dict[str, list[Any]]) -> None:
        for hv in self.members:
            hv.details_cache = cache

    @property
    def wake_fd(self) -> int | None:
        """Where every host tells that a read :meth:`request` started, or a trip, is done."""
        return self.members[0].wake_fd

    @wake_fd.setter
    def wake_fd(self, fd: int | None) -> None:
        for hv in self.members:
            hv.wake_fd = fd

    def _split(self, names: Iterable[str]) -> list[tuple[Hypervisor, list[str]]]:
        """*names* grouped by the one host that has each (ambiguous or unknown: left out)."""
        per_host: dict[int, list[str]] = {}
        for name in names:
            found = self._on(name)
            if len(found) == 1:
                per_host.setdefault(id(found[0]), []).append(name)
        return [(hv, per_host[id(hv)]) for hv in self.members if id(hv) in per_host]

    def request(self, names: Iterable[str]) -> None:
        """Each host starts reading the details of its own domains among *names*."""
        for hv, mine in self._split(names):
            hv.request(mine)

    def details_ready(self, names: Iterable[str]) -> bool:
        if len(self.members) == 1:
            return bool(self.members[0].down) or self.members[0].details_ready(names)
        return all(hv.down or hv.details_ready(mine) for hv, mine in self._split(names))

    # -- the owner index's questions (root.owners), over every host ----------------
    def uuids(self) -> dict[str, str]:
        """{UUID: domain name} of every reachable host's listing."""
        found: dict[str, str] = {}
        for hv in self.members:
            found.update(hv.uuids())
        return found

    def owner_claims(self, uuids: list[str]) -> dict[str, tuple[str, str | None] | None]:
        """:meth:`Hypervisor.owner_claims`, each UUID asked of the host that lists it."""
        found: dict[str, tuple[str, str | None] | None] = {}
        for hv in self.members:
            listed = hv.uuids()
            mine = [u for u in uuids if u in listed]
            if mine and not hv.down:
                found.update(hv.owner_claims(mine))
        return found

    def exists(self, name: str) -> bool:
        return any(hv.exists(name) for hv in self.members)

    def names_from(self, prefix: str) -> list[str]:
        return sorted({n for hv in self.members for n in hv.names_from(prefix)})

    def state_of(self, name: str) -> str:
        """The state of *name* on the one host that has it ("" if none, or several, do)."""
        found = self._on(name)
        return found[0].state_of(name) if len(found) == 1 and not found[0].down else ""

    # -- routing --------------------------------------------------------------
    def _on(self, name: str) -> list[Hypervisor]:
        """The hosts whose listing has *name*; with one host, that host in any case
        (it looks up a domain defined after its listing by name)."""
        if len(self.members) == 1:
            return self.members
        return self._where.get(name, [])

    def hosts_of(self, name: str) -> list[str]:
        """The names of the hosts whose listing has domain *name*."""
        return [hv.host for hv in self._where.get(name, [])]

    def host_of(self, name: str) -> str | None:
        """The host that serves *name*: the one host that has it, else None."""
        found = self._on(name)
        return found[0].host if len(found) == 1 else None

    def ambiguous(self, name: str) -> str | None:
        """The refusal for a domain defined on more than one host; None if it is not."""
        found = self.hosts_of(name)
        return ambiguous_domain(name, found) if len(found) > 1 else None

    def pending(self, name: str) -> str | None:
        """Why commands for domain *name* wait now (its host, or possibly its host, is
        down); None if they can run (or be refused) now."""
        found = self._on(name)
        if len(found) == 1:
            return self._why(found[0]) if found[0].down else None
        if found:
            return None  # ambiguous: refused, whatever the hosts' state
        down = {hv.host: str(hv.down) for hv in self.members if hv.down}
        return on_a_host_down(name, down) if down else None

    def _label(self, info: DomainInfo | None, hv: Hypervisor) -> DomainInfo | None:
        return replace(info, host=hv.host) if info is not None and self.named else info

    # -- what the pass asks -----------------------------------------------------
    def prefetch(self, names: list[str]) -> None:
        """Each host reads the details of its own domains among *names* (the idle path).

        With several hosts, a host that goes down meanwhile is left out (its
        domains are then :meth:`pending`); with one, Unreachable is raised.
        """
        if len(self.members) == 1:
            self.members[0].prefetch(names)
            return
        for hv, mine in self._split(names):
            if not hv.down:
                try:
                    hv.prefetch(mine)
                except Unreachable:
                    pass  # hv.down says why; its domains wait

    def info(self, name: str) -> DomainInfo | None:
        """What the snapshot says of *name*, on the one host that has it; None if none has
        it (ask :meth:`ambiguous` and :meth:`pending` first).  Raises Unreachable if its
        host is down."""
        found = self._on(name)
        if len(found) != 1:
            return None
        try:
            return self._label(found[0].info(name), found[0])
        except Unreachable:
            if not self.named:
                raise
            raise Unreachable(self._why(found[0])) from None

    def _pick(self, name: str) -> Hypervisor | Outcome:
        """The host that has *name*, or the outcome without one (two have it, none has);
        Unreachable when its host (or the host that may have it) is down."""
        refusal = self.ambiguous(name)
        if refusal:
            return "rejected", refusal, None
        found = self._on(name)
        if not found:
            waits = self.pending(name)
            if waits:
                raise Unreachable(waits)
            return "failed", no_domain(name), None
        hv = found[0]
        if hv.down:
            raise Unreachable(self._why(hv))
        return hv

    def _route(self, name: str, trip: Callable[[Hypervisor], Outcome]) -> Outcome:
        hv = self._pick(name)
        if not isinstance(hv, Hypervisor):
            return hv
        return self._named(hv, lambda: trip(hv))

    def _named(self, hv: Hypervisor, call: Callable[[], Outcome]) -> Outcome:
        """*call*'s outcome on *hv*: its info labelled with the host, its Unreachable
        (Interrupted too: the same kind) naming it, with several hosts."""
        try:
            outcome, message, info = call()
        except Unreachable as exc:
            raise self._named_error(exc, hv) from None
        return outcome, message, self._label(info, hv)

    def act_start(self, name: str, action: Action, params: dict[str, str],
                  decide: Decide) -> Trip:
        """:meth:`Hypervisor.act_start` on the host that has *name*, as :meth:`_route` picks
        it (``rejected`` when two have it); what _route would raise, completing the trip
        raises."""
        try:
            hv = self._pick(name)
        except Unreachable as exc:
            return Trip.failing(exc)
        if not isinstance(hv, Hypervisor):
            return Trip.now(hv)
        try:
            trip = hv.act_start(name, action, params, decide)
        except Unreachable as exc:
            return Trip.failing(self._named_error(exc, hv))

        return Trip(trip.future, trip.deadline,
                    lambda timeout: self._named(hv, lambda: trip.complete(timeout)))

    def _named_error(self, exc: Unreachable, hv: Hypervisor) -> Unreachable:
        """*exc* naming its host, with several hosts (as :meth:`_route` says it)."""
        return type(exc)(f"host {hv.host}: {exc}") if self.named else exc

    def configure(self, name: str, wanted: dict[str, Any], iso_path: str | None,
                  decide: Decide,
                  check: Callable[[dict[str, Any]], None]) -> Outcome:
        """:meth:`Hypervisor.configure` on the host that has *name*."""
        return self._route(name, lambda hv: hv.configure(name, wanted, iso_path, decide, check))

    def snapshot(self, name: str, op: str, snap: str, user: str,
                 decide: Decide,
                 check: Callable[[list[dict[str, Any]]], None]) -> Outcome:
        """:meth:`Hypervisor.snapshot` on the host that has *name*."""
        return self._route(name, lambda hv: hv.snapshot(name, op, snap, user, decide, check))

    def snapshots_of(self, names: list[str]) -> dict[str, list[dict[str, Any]]]:
        """:meth:`Hypervisor.snapshots_of`, each domain asked of the one host that has it
        (the per-user quota counts every host's); Unreachable if such a host is down."""
        found: dict[str, list[dict[str, Any]]] = {}
        for hv in self.members:
            mine = [name for name in names if hv in self._on(name)]
            if mine:
                if hv.down:
                    raise Unreachable(self._why(hv))
                found.update(hv.snapshots_of(mine))
        return found

    def reach(self, name: str, action: Action, params: dict[str, str], decide: Decide
              ) -> tuple[str, str, DomainInfo | None, dict[str, Any] | None]:
        """:meth:`Hypervisor.reach` (console, screenshot, serial) on the host that has *name*."""
        output: list[dict[str, Any] | None] = [None]

        def trip(hv: Hypervisor) -> Outcome:
            outcome, message, info, output[0] = hv.reach(name, action, params, decide)
            return outcome, message, info

        outcome, message, info = self._route(name, trip)
        return outcome, message, info, output[0]

    def take_locked(self, domain: str) -> list[str]:
        """*domain* once for each time the console lock closed it since last asked (for the
        audit log; other domains' stay for their own commands' answers)."""
        found = []
        for hv in self.members:
            with hv.locked_guard:
                found += [name for name in hv.locked if name == domain]
                hv.locked[:] = [name for name in hv.locked if name != domain]
        return found

    def open_consoles(self) -> list[tuple[str, str | None, dict[str, str]]]:
        """:meth:`Hypervisor.open_consoles` of every host."""
        return [found for hv in self.members for found in hv.open_consoles()]

    def usage(self, user: str,
              decide_owner: Callable[[str, str | None], bool]) -> dict[str, tuple[int, int]]:
        """:meth:`Hypervisor.usage` summed over every host (quotas: SPEC 9 and 13).

        A domain of the same name on a second host counts too, under
        ``host:name``.  Raises Unreachable if any host is down: a quota cannot
        be checked without all of them.
        """
        found: dict[str, tuple[int, int]] = {}
        for hv in self.members:
            if hv.down:
                raise Unreachable(self._why(hv))
            for name, use in hv.usage(user, decide_owner).items():
                found[f"{hv.host}:{name}" if name in found else name] = use
        return found
