"""The owner index: which domains' libvirt metadata names an owner (runs as root).

SPEC section 4 lets a domain's owner metadata name the member and the VM folder
that drive it (``<wirt:owner vm="box">alice</wirt:owner>``), whatever the domain
is called.  Finding "the domain assigned to alice's folder box" would mean
reading the metadata of every domain on the host each pass; the pass reads only
the cheap listings instead (names, UUIDs, states), and this index remembers, in
the root-only file ``owners.json`` in ``state_dir``:

* per domain UUID whose metadata names an owner: that owner and folder;
* every UUID already examined, so each pass reads the metadata only of domains
  it has not seen before (cost follows new domains, not the host's count);
* when every domain was last read again (``rescan``): once every
  :data:`RESCAN_SECONDS` (a day) the pass reads them all, to catch metadata the
  admin changed by hand (``virsh metadata``, ``virsh edit``); ``wirt admin
  assign`` and ``unassign`` update the index at once.

The index is only a hint for which domain a folder means.  Every action checks
the owner metadata fresh, at the moment it acts (``Hypervisor._trip``): a stale
index can send a folder to the wrong domain's door, never through it.

The file holds what libvirt's metadata says (written by root or by the admin),
never anything a member wrote; it is bounded by the host's domain count.
Writers (the pass, ``wirt admin``) change it under ``owners.lock`` by applying
their own changes to the file as it is then, so neither undoes the other's.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from wirt_wrapper.root.state import load_state, open_root_file, save_state

__all__ = ["INDEX_FILE", "RESCAN_SECONDS", "OwnerIndex"]

INDEX_FILE = "owners.json"
LOCK_FILE = "owners.lock"
# A day: metadata edited by hand (not with wirt admin) is found within one; until then
# the folder it names keeps its old mapping, which the fresh check at act time guards.
RESCAN_SECONDS = 24 * 3600

Claim = tuple[str, str | None]  # (owner, VM folder or None)


class OwnerIndex:
    """The index as one pass (or one ``wirt admin`` call) sees and changes it."""

    def __init__(self, state_dir: str | None) -> None:
        """*state_dir* None: nothing is read or written (dry run, tests)."""
        self.state_dir = state_dir
        data = self._read()
        self.claims: dict[str, Claim] = _claims(data.get("owners"))
        seen = data.get("seen")
        self.seen: set[str] = {u for u in seen if isinstance(u, str)} \
            if isinstance(seen, list) else set()
        scanned = data.get("scanned")
        self.scanned = float(scanned) if isinstance(scanned, (int, float)) else 0.0
        # this process's changes: UUID -> claim (None: no owner), and UUIDs gone
        self._learned: dict[str, Claim | None] = {}
        self._gone: set[str] = set()
        self._rescanned: float | None = None

    def _path(self, name: str) -> str:
        return os.path.join(str(self.state_dir), name)

    def _read(self) -> dict[str, Any]:
        if self.state_dir is None:
            return {}
        return load_state(self._path(INDEX_FILE))

    # -- what to read ------------------------------------------------------------
    def to_read(self, uuids: Iterable[str], now: float | None = None, *,
                complete: bool = True) -> list[str]:
        """The UUIDs whose metadata this pass must read: those never seen, or all of
        them when the last rescan is older than RESCAN_SECONDS and *uuids* is the whole
        listing (*complete*: no host down, whose domains would miss the rescan)."""
        now = time.time() if now is None else now
        current = list(uuids)
        if complete and (now - self.scanned >= RESCAN_SECONDS or now < self.scanned):
            self._rescanned = now
            return current
        return [u for u in current if u not in self.seen]

    def learn(self, uuid: str, claim: Claim | None) -> None:
        """What *uuid*'s metadata says now (None: it names no owner)."""
        self.seen.add(uuid)
        if claim is None:
            self.claims.pop(uuid, None)
        else:
            self.claims[uuid] = claim
        self._learned[uuid] = claim

    def keep_only(self, uuids: Iterable[str]) -> None:
        """Forget domains that are no longer defined (only a full listing may say so)."""
        current = set(uuids)
        for uuid in [u for u in self.seen | set(self.claims) if u not in current]:
            self.seen.discard(uuid)
            self.claims.pop(uuid, None)
            self._gone.add(uuid)

    # -- what it says ------------------------------------------------------------
    def by_folder(self, names: dict[str, str]) -> dict[Claim, list[str]]:
        """(owner, folder) -> the names of the domains assigned to it, for the domains
        in *names* ({UUID: current name}); claims without a folder are left out."""
        found: dict[Claim, list[str]] = {}
        for uuid, (owner, vm) in self.claims.items():
            if vm is not None and uuid in names:
                found.setdefault((owner, vm), []).append(names[uuid])
        return found

    def by_owner(self, names: dict[str, str]) -> dict[str, list[tuple[str, str | None]]]:
        """owner -> [(domain name, folder or None)] for the domains in *names*."""
        found: dict[str, list[tuple[str, str | None]]] = {}
        for uuid, (owner, vm) in self.claims.items():
            if uuid in names:
                found.setdefault(owner, []).append((names[uuid], vm))
        return found

    def claim_of(self, uuid: str) -> Claim | None:
        return self.claims.get(uuid)

    # -- keeping -------------------------------------------------------------------
    def save(self) -> None:
        """Apply this process's changes to the file as it is now, under the lock."""
        if self.state_dir is None or not (self._learned or self._gone or self._rescanned):
            return
        with self._locked():
            data = self._read()
            claims = _claims(data.get("owners"))
            raw_seen = data.get("seen")
            seen = {u for u in raw_seen if isinstance(u, str)} \
                if isinstance(raw_seen, list) else set()
            for uuid in self._gone:
                claims.pop(uuid, None)
                seen.discard(uuid)
            for uuid, claim in self._learned.items():
                seen.add(uuid)
                if claim is None:
                    claims.pop(uuid, None)
                else:
                    claims[uuid] = claim
            scanned = data.get("scanned")
            stamp = float(scanned) if isinstance(scanned, (int, float)) else 0.0
            if self._rescanned is not None:
                stamp = self._rescanned
            save_state(self._path(INDEX_FILE), {
                "owners": {u: [o, v] for u, (o, v) in sorted(claims.items())},
                "seen": sorted(seen), "scanned": stamp})
        self._learned, self._gone, self._rescanned = {}, set(), None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = open_root_file(self._path(LOCK_FILE), os.O_RDWR, "lock file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _claims(raw: Any) -> dict[str, Claim]:
    """The ``owners`` object of the file, keeping only well-formed entries."""
    found: dict[str, Claim] = {}
    if not isinstance(raw, dict):
        return found
    for uuid, value in raw.items():
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) \
                and (value[1] is None or isinstance(value[1], str)):
            found[uuid] = (value[0], value[1])
    return found
