"""The one protocol across the boundary: what a user side may ask root, in which order.

Pure rules, no I/O.  Both sides import this module: the user side to build
its requests, root to check every request it receives, for type *and* for
the state the turn is in (OpenSSH ``monitor.c``: a request that is not
allowed now is as fatal as an unknown one; ``MON_ONCE``).  Root treats the
user side as possibly subverted (it reads hostile files): a message that is
too large, too deep, not strict JSON, of the wrong shape or out of order ends
that user's turn and nothing else (SECURITY.md row 19).  Everything that
matters (dry run, command ids, which layouts are served) comes from root's own
state, never from a request.

One turn, in order::

    recovered?                      once, first, only when root handed over journal entries
    (inventory (settings | intend (unclaimed | run)?)*)*
                                    per layout, each layout once, in root's order;
                                    'settings' at most once per VM folder
    notices?                        once
    bye                             last; root does not answer it

Every request may carry ``logged``: ids whose log line the user side wrote.

Root's answer to ``run`` may carry ``output``: what a SPEC 10 action produced
for the user side to write into the VM's info folder (:data:`OUTPUT`; the
user side checks it with :func:`check_output` before it writes anything).
Bytes travel base64-encoded, within :data:`MAX_MESSAGE`: a screenshot of at
most :data:`MAX_SCREEN` bytes, a serial log tail of at most :data:`MAX_SERIAL`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wirt_wrapper.rules import strictjson
from wirt_wrapper.rules.errors import ProtocolError

__all__ = [
    "BYE", "INTEND", "INVENTORY", "MAX_DEPTH", "MAX_MESSAGE", "MAX_SETTINGS", "NOTICES",
    "RECOVERED", "REQUESTS", "RUN", "SETTINGS", "UNCLAIMED", "WATCHING", "Turn", "UserJob",
    "check_request", "check_watching", "decode", "encode", "MAX_SCREEN", "MAX_SCREEN_SIDE",
    "MAX_SERIAL", "OUTPUT", "check_output", "CONSOLE_TYPES", "check_console",
]

MAX_MESSAGE = 4 << 20  # bytes of one framed message, either way
MAX_DEPTH = 8  # nesting of arrays and objects; the deepest request needs 5
MAX_ITEMS = 10_000  # entries of any one list or object in a request
MAX_TEXT = 4096  # characters of any one string in a request

RECOVERED, INVENTORY, INTEND, UNCLAIMED, RUN, SETTINGS, NOTICES, BYE = (
    "recovered", "inventory", "intend", "unclaimed", "run", "settings", "notices", "bye")
MAX_SETTINGS = 1 << 20  # characters of a settings file (limits.max_file_bytes is at most this)
MAX_SCREEN = 2 << 20  # bytes of a screenshot as libvirt streams it (base64: 2.7 MiB)
MAX_SCREEN_SIDE = 4096  # pixels of a screenshot's width and height
MAX_SERIAL = 64 << 10  # bytes of a serial log's tail


def _b64_chars(size: int) -> int:
    return 4 * ((size + 2) // 3)


def decode(data: bytes) -> dict[str, Any]:
    """One message: at most MAX_MESSAGE bytes and MAX_DEPTH deep, strict JSON, an object."""
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(data)} bytes is too large")
    try:
        message = strictjson.loads(data, max_bytes=MAX_MESSAGE, max_depth=MAX_DEPTH)
    except strictjson.StrictJSONError as exc:
        raise ProtocolError(f"message: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message


def encode(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(data)} bytes is too large")
    return data


# -- shapes -----------------------------------------------------------------------
Check = Callable[[Any, str], None]


def _fail(where: str, what: str) -> ProtocolError:
    return ProtocolError(f"{where}: must be {what}")


def text(limit: int = MAX_TEXT) -> Check:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, str) or len(value) > limit:
            raise _fail(where, f"a string of at most {limit} characters")
    return check


def integer(value: Any, where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        raise _fail(where, "a non-negative integer")


def boolean(value: Any, where: str) -> None:
    if not isinstance(value, bool):
        raise _fail(where, "true or false")


def list_of(item: Check, limit: int = MAX_ITEMS) -> Check:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, list) or len(value) > limit:
            raise _fail(where, f"a list of at most {limit} items")
        for index, element in enumerate(value):
            item(element, f"{where}[{index}]")
    return check


def map_of(key: Check, item: Check, limit: int = MAX_ITEMS) -> Check:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, dict) or len(value) > limit:
            raise _fail(where, f"an object of at most {limit} entries")
        for name, element in value.items():
            key(name, f"{where} key")
            item(element, f"{where}.{name}")
    return check


def record(required: dict[str, Check], optional: dict[str, Check] | None = None) -> Check:
    """An object with exactly these keys (the optional ones may be left out)."""
    optional = optional or {}

    def check(value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise _fail(where, "an object")
        extra = set(value) - set(required) - set(optional)
        if extra:
            raise ProtocolError(f"{where}: unexpected key {sorted(extra)[0]!r}")
        for name, item in required.items():
            if name not in value:
                raise ProtocolError(f"{where}: {name} is missing")
            item(value[name], f"{where}.{name}")
        for name, item in optional.items():
            if name in value:
                item(value[name], f"{where}.{name}")
    return check


def nullable(check: Check) -> Check:
    def checked(value: Any, where: str) -> None:
        if value is not None:
            check(value, where)
    return checked


def _seen(value: Any, where: str) -> None:
    """What a turn left in a VM's folders: [digest of the info behind status.xml, its lstat
    signature, the lstat signature of the settings file handled] (each null when none)."""
    if not isinstance(value, list) or len(value) != 3:
        raise _fail(where, "[info digest, status.xml signature, config signature]")
    nullable(text(64))(value[0], where + "[0]")
    nullable(list_of(integer, 8))(value[1], where + "[1]")
    nullable(list_of(integer, 8))(value[2], where + "[2]")


ID = text(64)
NAME = text(255)  # a file or folder name (root re-checks it against the layout's rules)
_LOGGED = {"logged": list_of(ID)}

# Every request a user side may make, and its exact shape.
REQUESTS: dict[str, Check] = {
    RECOVERED: record({"op": text(), "items": list_of(record(
        {"id": ID, "claimed": boolean, "logged": boolean}))}, _LOGGED),
    INVENTORY: record({"op": text(), "layout": NAME, "vms": list_of(NAME)}, _LOGGED),
    INTEND: record(
        {"op": text(), "layout": NAME, "vm": NAME, "file": NAME, "ino": integer},
        {"action": NAME, "tokens": list_of(text(), 64), "rejected": text(), "hist": NAME,
         **_LOGGED}),
    UNCLAIMED: record({"op": text(), "id": ID}, _LOGGED),
    RUN: record({"op": text(), "id": ID}, _LOGGED),
    NOTICES: record({"op": text(), "items": list_of(record(
        {"layout": NAME, "key": text(), "message": text()}))}, _LOGGED),
    SETTINGS: record(
        {"op": text(), "layout": NAME, "vm": NAME, "digest": ID},
        {"content": text(MAX_SETTINGS), "rejected": text(), **_LOGGED}),
    BYE: record({"op": text(), "statuses": map_of(NAME, map_of(NAME, _seen))},
                {"isos": ID, "vms": ID, **_LOGGED}),
}


# The watch placer's one message (wirt_wrapper.user.watch): its inotify descriptor rides
# along as SCM_RIGHTS when 'problem' is absent.
WATCHING = "watching"
_WATCHING = record({"op": text(), "watches": integer}, {"problem": text(300)})


def check_watching(message: dict[str, Any]) -> str | None:
    """The placer's problem (None: watching), once the message's shape is checked."""
    if message.get("op") != WATCHING:
        raise ProtocolError(f"expected {WATCHING!r}, got {str(message.get('op'))[:40]!r}")
    _WATCHING(message, WATCHING)
    problem = message.get("problem")
    return None if problem is None else str(problem)


CONSOLE_TYPES = ("vnc", "spice")  # the graphics wirt gives a console password (SPEC 10)
_CONSOLE_FIELDS: Check = record({"type": text(16), "host": text(255), "port": integer,
                                 "password": text(8), "valid_until": text(32)})


def _console(value: Any, where: str) -> None:
    """console.json's fields: a known type, a TCP port, and host, password and time each
    one word of printable characters (the CLI writes host and password into a viewer's
    file, a line each: a newline there would add a line of its own)."""
    _CONSOLE_FIELDS(value, where)
    if value["type"] not in CONSOLE_TYPES:
        raise _fail(f"{where}.type", "one of " + ", ".join(CONSOLE_TYPES))
    if not 0 < value["port"] < 1 << 16:
        raise _fail(f"{where}.port", "a TCP port")
    for key in ("host", "password", "valid_until"):
        if not value[key] or not value[key].isprintable() or " " in value[key]:
            raise _fail(f"{where}.{key}", "one word of printable characters")


# What a SPEC 10 action hands the user side (root's answer to 'run', key 'output').
OUTPUT: Check = record(
    {"file": text(64)},
    {"b64": text(_b64_chars(MAX_SCREEN)), "mime": text(64), "console": _console})


def check_console(value: Any) -> dict[str, Any]:
    """*value* if it has the shape of a console (console.json, or a remote wirt's answer,
    before the CLI hands it to a viewer); else ProtocolError."""
    _console(value, "console")
    return dict(value)


def check_output(value: Any) -> dict[str, Any]:
    """*value* if it has the shape of :data:`OUTPUT` (else ProtocolError)."""
    OUTPUT(value, "output")
    return dict(value)


def check_request(message: dict[str, Any]) -> str:
    """The request's op, once its shape is checked against :data:`REQUESTS`."""
    op = message.get("op")
    check = REQUESTS.get(op) if isinstance(op, str) else None
    if check is None:
        raise ProtocolError(f"unknown request {str(op)[:40]!r}")
    name = str(op)
    check(message, name)
    return name


# -- order ------------------------------------------------------------------------
@dataclass
class Turn:
    """Where one user's turn is: which requests are allowed now (root's own state)."""

    layouts: tuple[str, ...]  # the layouts this pass serves, in the order they are served
    recovering: bool  # root handed over journal entries: 'recovered' comes first
    max_commands: int  # 'intend' requests one turn may make
    started: bool = False
    layout: str | None = None  # the layout whose inventory was given
    done: set[str] = field(default_factory=set)  # layouts inventoried, once-only requests
    commands: int = 0
    configured: set[tuple[str, str | None]] = field(default_factory=set)  # settings given

    def allow(self, op: str, layout: str | None = None, vm: str | None = None) -> None:
        """Raise unless *op* (for *layout*) may come now; then advance the turn."""
        first, self.started = not self.started, True
        if self.recovering and first and op != RECOVERED:
            raise ProtocolError(f"'{op}' before 'recovered'")
        if op == RECOVERED and not (self.recovering and first):
            raise ProtocolError("'recovered' only as the first request, when asked for")
        if BYE in self.done or (NOTICES in self.done and op != BYE):
            raise ProtocolError(f"'{op}' after 'notices'")
        if op == INVENTORY:
            if layout not in self.layouts or layout in self.done:
                raise ProtocolError(f"inventory of layout {layout!r}: not served, or given")
            later = self.layouts[self.layouts.index(layout) + 1:]
            if any(name in self.done for name in later):
                raise ProtocolError(f"inventory of layout {layout!r} out of order")
            self.layout = layout
            self.done.add(layout)
        elif op in (INTEND, SETTINGS):
            if layout is None or layout != self.layout:
                raise ProtocolError(f"'{op}' for layout {layout!r} before its inventory")
            if op == SETTINGS:
                if (layout, vm) in self.configured:
                    raise ProtocolError(f"'settings' twice for VM {vm!r}")
                self.configured.add((layout, vm))
                return
            self.commands += 1
            if self.commands > self.max_commands:
                raise ProtocolError(f"more than {self.max_commands} commands in one turn")
        elif op in (NOTICES, BYE):
            if op in self.done:
                raise ProtocolError(f"'{op}' twice in one turn")
            self.done.add(op)


@dataclass
class UserJob:
    """What root hands a user side at fork time (trusted: it comes from root)."""

    user: str
    uid: int
    home: str
    layouts: tuple[str, ...]
    max_files: int
    max_bytes: int
    dry_run: bool
    recover: list[dict[str, Any]] = field(default_factory=list)
    log_max_bytes: int = 1 << 20
    log_keep: int = 3
    # ~/wirt/info/isos.txt as root lists the ISO catalogue, its digest, and the digest of
    # what root last had written there for this user (equal: nothing to write)
    isos_text: str = ""
    isos_digest: str = ""
    isos_known: str = ""
    # ~/wirt/info/vms.json (rules.vms): its text, digest, and the digest root last had
    # written there for this user; no digest: not known this pass (libvirt unreachable)
    vms_text: str = ""
    vms_digest: str = ""
    vms_known: str = ""
