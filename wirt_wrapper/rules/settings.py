"""The VM's settings file ``config`` (SPEC section 9): its grammar and its limits (pure rules).

The user side parses the file with :func:`parse`; root parses the same bytes
again with the same function, then checks the admin's limits, the ISO
catalogue and the user's quotas with :func:`check_limits` and
:func:`check_quota` before anything reaches libvirt.  The whole file is
accepted or nothing of it is applied; every refusal is a
:class:`~wirt_wrapper.rules.actions.Rejection` that names the key and the rule.

A ``cdrom`` value is a *name*, matched against the catalogue's listing; it
is never joined into a path here (root does that, with the catalogue's own
name for the file).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection
from typing import Any

from wirt_wrapper.rules import strictjson
from wirt_wrapper.rules.actions import Rejection, printable

__all__ = ["BOOT_DEVICES", "FILE", "ISO_NAME", "KEYS", "MIN_MEMORY_MIB", "check_limits",
           "check_quota", "digest", "dumps", "parse", "restart_needed"]

FILE = "config"  # in each VM folder; never a command, never moved
KEYS = ("memory_mib", "vcpus", "cdrom", "boot")
BOOT_DEVICES = ("hd", "cdrom", "network")
ISO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,126}\.iso")
MIN_MEMORY_MIB = 64
_DEPTH = 2  # an object holding a list (boot): nothing in the table nests deeper
_TEXT = re.compile(rb"[\x20-\x7e\t\r\n]*")


def _reject(key: str, rule: str) -> Rejection:
    return Rejection(f"config: {key}: {rule}; nothing of the file was applied")


def _integer(key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _reject(key, f"must be a whole number, not {_json(value)}")
    if value < low:
        raise _reject(key, f"must be at least {low}, not {_number(value)}")
    return value


def _number(value: int) -> str:
    """A whole number as the user is told it: a file may hold one of 4,000 digits, which
    would push the rule out of the (length-capped) message."""
    text = str(value)
    digits = len(text.lstrip("-"))
    return text if digits <= 20 else f"{text[:12]}... (a number of {digits} digits)"


def _json(value: Any) -> str:
    return printable(json.dumps(value), 60)


def parse(content: bytes, max_bytes: int) -> dict[str, Any]:
    """The settings the file asks for: only the keys it names (``cdrom`` None: eject)."""
    if not _TEXT.fullmatch(content[:max_bytes + 1]):
        bad = next(i for i, b in enumerate(content) if not (0x20 <= b < 0x7F or b in b"\t\r\n"))
        raise _reject("file", f"byte 0x{content[bad]:02x} at position {bad} is not printable "
                      "ASCII; write the settings as plain ASCII JSON")
    try:
        data = strictjson.loads(content, max_bytes=max_bytes, max_depth=_DEPTH, floats=False)
    except strictjson.StrictJSONError as exc:
        raise _reject("file", f"{exc}; write one JSON object such as "
                      '{"memory_mib": 1024, "vcpus": 2}') from None
    if not isinstance(data, dict):
        raise _reject("file", f"must be one JSON object, not {_json(data)}")
    wanted: dict[str, Any] = {}
    for key, value in data.items():
        if key not in KEYS:
            raise _reject(printable(key, 40), f"is not a setting (known: {', '.join(KEYS)})")
        if key == "memory_mib":
            wanted[key] = _integer(key, value, MIN_MEMORY_MIB)
        elif key == "vcpus":
            wanted[key] = _integer(key, value, 1)
        elif key == "cdrom":
            if value is not None and not (isinstance(value, str) and ISO_NAME.fullmatch(value)):
                raise _reject(key, f"must be the name of an ISO in the catalogue "
                              f"(~/wirt/info/isos.txt) or null to eject, not {_json(value)}")
            wanted[key] = value
        else:
            wanted[key] = _boot(value)
    return wanted


def _boot(value: Any) -> tuple[str, ...]:
    shape = f"a list of 1 to 3 different values of {', '.join(BOOT_DEVICES)}"
    if not isinstance(value, list) or not 1 <= len(value) <= 3:
        raise _reject("boot", f"must be {shape}, not {_json(value)}")
    for item in value:
        if item not in BOOT_DEVICES:
            raise _reject("boot", f"{_json(item)} is not a boot device ({shape})")
    if len(set(value)) != len(value):
        raise _reject("boot", f"names a device twice ({shape})")
    return tuple(value)


def check_limits(wanted: dict[str, Any], *, max_memory_mib: int, max_vcpus: int,
                 isos: Collection[str] | None, has_cdrom: bool) -> None:
    """The admin's per-VM limits and the ISO catalogue (None: CD changes are off)."""
    memory = wanted.get("memory_mib")
    if memory is not None and memory > max_memory_mib:
        raise _reject("memory_mib", f"{_number(memory)} is more than the limit of {max_memory_mib} "
                      "MiB per VM (settings.max_memory_mib)")
    vcpus = wanted.get("vcpus")
    if vcpus is not None and vcpus > max_vcpus:
        raise _reject("vcpus", f"{_number(vcpus)} is more than the limit of {max_vcpus} per VM "
                      "(settings.max_vcpus)")
    if "cdrom" in wanted:
        if not has_cdrom:
            raise _reject("cdrom", "this VM has no CD-ROM drive; ask the admin to add one")
        if isos is None:
            raise _reject("cdrom", "the admin has not set up an ISO catalogue "
                          "(settings.iso_dir): CDs cannot be changed here")
        if wanted["cdrom"] is not None and wanted["cdrom"] not in isos:
            raise _reject("cdrom", f"'{wanted['cdrom']}' is not in the catalogue; "
                          "~/wirt/info/isos.txt lists the ISOs you can use")


def check_quota(key: str, quota: int, elsewhere: int, request: int) -> None:
    """*request* for this VM plus *elsewhere* (the user's other domains) within *quota*."""
    if quota and elsewhere + request > quota:
        raise _reject(key, f"{request} would take you over your quota of {quota} "
                      f"(quota.{key}; your other VMs use {elsewhere}, so at most "
                      f"{max(0, quota - elsewhere)} is left for this one)")


def restart_needed(wanted: dict[str, Any], running: dict[str, Any]) -> bool:
    """Whether a running domain still runs with other memory, vCPUs or boot order."""
    return any(key in wanted and running.get(key) != wanted[key]
               for key in ("memory_mib", "vcpus", "boot"))


def digest(content: bytes) -> str:
    """What identifies one version of the file (root applies each version once)."""
    return hashlib.sha256(content).hexdigest()[:32]


def dumps(wanted: dict[str, Any]) -> bytes:
    """The file as ``wirt set`` writes it: one object, keys in table order."""
    ordered = {key: list(wanted[key]) if key == "boot" else wanted[key]
               for key in KEYS if key in wanted}
    return (json.dumps(ordered, indent=2) + "\n").encode("ascii")
