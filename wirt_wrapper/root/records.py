"""What root remembers about each member between passes (runs as root).

Root-only JSON files in ``state_dir``, the per-user ones bounded per user so that no
member can grow them (SECURITY.md row 10), and pruned of users who are no
longer members:

* ``reported.json``: the notices each user was already told (a stray entry,
  an unwritable log, ...), so that each is told once.  A notice that is gone
  in a pass is forgotten, so it is told again if it comes back.  Notices are
  kept under :func:`notice_key`: a key that holds a long or unprintable name
  is kept as a digest, so that a key costs at most ~75 bytes whatever names
  a user chose (2,000 keys of 240-byte non-UTF-8 names, escaped in JSON,
  were 2.8 MB for one user).
* ``idle.json``: per user, layout and VM, the digest of the info behind the
  status.xml the last full turn wrote and that file's lstat signature, so
  that the prober's look can tell that nothing needs a user side.  Each full
  turn replaces the user's entry with exactly what it wrote: VM folders that
  are gone are dropped.
* ``snapshots.json`` and ``details.json``: per domain, its snapshot list and
  what its XML said (bounded by the host's domains, pruned to its listing), so
  that the idle pass reads neither while nothing could have changed them.
* ``settings.json``: per user, layout and VM, the digest of the settings file
  root last handled (applied, or refused), so that each version of the file
  is applied once; and the digests of the ISO listing and of the vms.json the
  user last got.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from wirt_wrapper.root.state import load_state, save_state

__all__ = ["MAX_IDLE_VMS", "MAX_NOTICE_KEYS", "Records", "notice_key"]

MAX_NOTICE_KEYS = 2000  # notices remembered per user; more are told again each pass
MAX_IDLE_VMS = 500  # VM folders per user whose status a look can vouch for; more get a turn

Idle = dict[str, dict[str, list[Any]]]  # layout -> VM -> [digest, lstat signature]

_PLAIN_KEY = 64  # characters of a printable ASCII key kept as it is


def notice_key(layout: str, key: str) -> str:
    """How root remembers a notice: the same for the look's keys and the user side's.

    A short printable key is kept as is (readable in reported.json); any other
    (a name the user chose: up to 255 bytes, escaped 6-fold in JSON if not UTF-8)
    by its digest, so every key is short and equal keys stay equal.
    """
    if len(key) <= _PLAIN_KEY and key.isascii() and key.isprintable():
        return f"{layout}:{key}"
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{layout}:#{digest}"


class Records:
    def __init__(self, state_dir: str | None) -> None:
        """*state_dir* None: nothing is read or written (dry run, tests)."""
        self.state_dir = state_dir
        self.reported: dict[str, list[str]] = self._load("reported.json")
        self.idle: dict[str, Idle] = self._load("idle.json")
        self.settings: dict[str, dict[str, Any]] = self._load("settings.json")
        self.snapshots: dict[str, list[Any]] = self._load("snapshots.json")
        self.details: dict[str, list[Any]] = self._load("details.json")
        self._loaded = self._snapshot()
        self.seen: dict[str, set[str]] = {}  # per user served this pass: notices still there

    def _load(self, name: str) -> dict[str, Any]:
        if self.state_dir is None:
            return {}
        return load_state(os.path.join(self.state_dir, name))

    def _snapshot(self) -> tuple[str, ...]:
        return (json.dumps(self.reported, sort_keys=True), json.dumps(self.idle, sort_keys=True),
                json.dumps(self.settings, sort_keys=True),
                json.dumps(self.snapshots, sort_keys=True),
                json.dumps(self.details, sort_keys=True))

    # -- notices -------------------------------------------------------------
    def reported_keys(self, uid: int) -> set[str]:
        return set(self.reported.get(str(uid), ()))

    def notice_seen(self, uid: int, key: str) -> bool:
        """Note that *key* is still there for *uid*; True if the user was not told yet."""
        seen = self.seen.setdefault(str(uid), set())
        if len(seen) < MAX_NOTICE_KEYS:
            seen.add(key)
        return key not in self.reported.get(str(uid), ())

    def served(self, uid: int) -> None:
        """*uid*'s turn ended normally: notices not seen in it are gone."""
        self.seen.setdefault(str(uid), set())

    # -- idle looks ------------------------------------------------------------
    def idle_of(self, uid: int) -> Idle:
        return self.idle.get(str(uid), {})

    def forget_idle(self, uid: int) -> None:
        """The next look of *uid* cannot vouch for anything: a full turn follows."""
        self.idle.pop(str(uid), None)

    def set_idle(self, uid: int, statuses: Idle) -> None:
        kept: Idle = {}
        count = 0
        for layout in sorted(statuses):
            for vm in sorted(statuses[layout]):
                if count < MAX_IDLE_VMS:
                    kept.setdefault(layout, {})[vm] = statuses[layout][vm]
                    count += 1
        self.idle[str(uid)] = kept

    # -- settings files and the ISO listing --------------------------------------
    def configs_of(self, uid: int) -> dict[str, dict[str, str]]:
        """layout -> VM -> digest of the settings file root last handled."""
        found = self.settings.get(str(uid), {}).get("configs", {})
        return found if isinstance(found, dict) else {}

    def set_config(self, uid: int, layout: str, vm: str, digest: str) -> None:
        mine = self.settings.setdefault(str(uid), {})
        configs = mine.setdefault("configs", {})
        if vm not in configs.get(layout, {}) and \
                sum(len(v) for v in configs.values()) >= MAX_IDLE_VMS:
            return  # bounded: past this many VM folders a file is handled each pass again
        configs.setdefault(layout, {})[vm] = digest

    def vms_of(self, uid: int) -> str:
        """The digest of the vms.json root last had written for *uid*."""
        return str(self.settings.get(str(uid), {}).get("vms", ""))

    def set_vms(self, uid: int, digest: str) -> None:
        self.settings.setdefault(str(uid), {})["vms"] = digest

    def isos_of(self, uid: int) -> str:
        return str(self.settings.get(str(uid), {}).get("isos", ""))

    def set_isos(self, uid: int, digest: str) -> None:
        self.settings.setdefault(str(uid), {})["isos"] = digest

    # -- snapshot lists --------------------------------------------------------
    def keep_snapshots(self, domains: set[str]) -> None:
        """Forget the snapshot lists and details of domains that are not on the host any
        more."""
        for kept in (self.snapshots, self.details):
            for name in [n for n in kept if n not in domains]:
                del kept[name]

    # -- keeping ---------------------------------------------------------------
    def prune(self, members: set[int]) -> None:
        """Forget users who are not members any more."""
        keep = {str(uid) for uid in members}
        self.reported = {uid: keys for uid, keys in self.reported.items() if uid in keep}
        self.idle = {uid: vms for uid, vms in self.idle.items() if uid in keep}
        self.settings = {uid: mine for uid, mine in self.settings.items() if uid in keep}

    def save(self) -> None:
        for uid, keys in self.seen.items():
            self.reported[uid] = sorted(keys)
        self.reported = {uid: keys for uid, keys in self.reported.items() if keys}
        now = self._snapshot()
        if self.state_dir is None or now == self._loaded:
            return
        files: tuple[tuple[str, dict[str, Any]], ...] = (
            ("reported.json", self.reported), ("idle.json", self.idle),
            ("settings.json", self.settings), ("snapshots.json", self.snapshots),
            ("details.json", self.details))
        for index, (name, data) in enumerate(files):
            if now[index] != self._loaded[index]:
                save_state(os.path.join(self.state_dir, name), data)
        self._loaded = now
