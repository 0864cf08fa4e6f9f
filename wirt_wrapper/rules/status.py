"""status.xml: render the VM's state for the user, and read it back (last command, CLI).

Rendering is deterministic (no clock, sorted attributes), so an idle pass
can compare bytes and leave unchanged files alone.  ``<read-at>`` is the time
wirt read the state shown (SPEC 2c): the writer keeps the old time while the
rest of the document stays the same (:func:`render` with the old stamp gives
the old bytes), so a state that does not change does not rewrite the file;
the per-user ``status-checked`` file's time says when a later pass confirmed it.
Reading an existing status.xml happens in the user's child process and with a parser that
resolves no entities and loads nothing from the network.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import re
import time
from typing import Any

from lxml import etree

__all__ = ["kept", "last_command", "last_config", "parse", "read_at", "render", "restamp",
           "stamp", "unstamp"]

VERSION = "1"
_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_pis=True
)


# Characters XML 1.0 cannot carry: C0 controls but tab/LF/CR, surrogates, U+FFFE/FFFF.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_safe(value: object) -> str:
    """*value* as text XML can hold: libvirt's messages and file names may hold anything."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", str(value))


def _text(parent: etree._Element, tag: str, value: object, **attrs: str) -> etree._Element:
    child = etree.SubElement(parent, tag, {k: _xml_safe(v) for k, v in attrs.items() if v != ""})
    child.text = _xml_safe(value)
    return child


def info_digest(info: dict[str, Any]) -> str:
    """A short fingerprint of what root said about a VM (the same on both sides)."""
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:32]


def _settings(parent: etree._Element, settings: dict[str, Any]) -> None:
    """``<settings>``: the persistent definition as libvirt holds it (SPEC section 9).

    ``<cdrom>`` is there only when the VM has a CD-ROM drive (empty text: no disc);
    ``<boot>`` holds the boot devices in order, separated by spaces.
    """
    node = etree.SubElement(parent, "settings", {
        "restart-needed": "yes" if settings.get("restart_needed") else "no"})
    _text(node, "memory", int(settings.get("memory_mib", 0)), unit="MiB")
    _text(node, "vcpus", int(settings.get("vcpus", 0)))
    if settings.get("has_cdrom"):
        _text(node, "cdrom", settings.get("cdrom") or "")
    _text(node, "boot", " ".join(str(dev) for dev in settings.get("boot", ())))


def _snapshots(parent: etree._Element, snapshots: list[dict[str, Any]]) -> None:
    """``<snapshots>``: every snapshot of the domain (SPEC 11), oldest first; ``by`` is the
    member who made it through wirt, or ``admin``."""
    node = etree.SubElement(parent, "snapshots", count=str(len(snapshots)))
    for snap in snapshots:
        etree.SubElement(node, "snapshot", {
            "name": _xml_safe(snap.get("name", "")), "time": _xml_safe(snap.get("time", "")),
            "state": _xml_safe(snap.get("state", "")),
            "current": "yes" if snap.get("current") else "no",
            "by": _xml_safe(snap.get("by", ""))})
STAMP = "%Y-%m-%dT%H:%M:%SZ"
_STAMP_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")  # its shape


def stamp(seconds: float) -> str:
    """A time as status.xml holds it: UTC, ISO 8601, whole seconds, ``Z``."""
    return time.strftime(STAMP, time.gmtime(int(seconds)))


def unstamp(text: str) -> float | None:
    """The time :func:`stamp` wrote, in seconds since the epoch; None if it is not one."""
    try:
        return float(calendar.timegm(time.strptime(text, STAMP)))
    except (ValueError, OverflowError):
        return None


def render(vm: str, info: dict[str, Any], last: dict[str, str] | None,
           last_config: dict[str, str] | None = None, read: str = "") -> bytes:
    """The status document for *vm*; *info* comes from the privileged side.

    *last* is the last command, *last_config* the last outcome of the VM's
    settings file (``outcome``, ``message``, ``time``), *read* the :func:`stamp`
    of the time root read *info* from libvirt.
    """
    root = etree.Element("status", version=VERSION)
    _text(root, "vm", vm)
    _text(root, "domain", info.get("domain", ""))
    if info.get("host"):  # with [[hosts]] only (SPEC 13): the host the domain is on
        _text(root, "host", info["host"])
    if read:
        _text(root, "read-at", read)
    problem = info.get("problem")
    if problem:
        _text(root, "problem", problem, kind=info.get("problem_kind", ""))
    else:
        _text(root, "state", info["state"], reason=info["reason"])
        _text(root, "autostart", "yes" if info["autostart"] else "no")
        _text(root, "persistent", "yes" if info["persistent"] else "no")
        _text(root, "memory", info["memory_kib"], unit="KiB")
        _text(root, "vcpus", info["vcpus"])
        graphics = info.get("graphics")
        if graphics:
            etree.SubElement(
                root, "graphics", {k: _xml_safe(v) for k, v in sorted(graphics.items()) if v != ""}
            )
    settings = info.get("settings")
    if settings:
        _settings(root, settings)
    snapshots = info.get("snapshots")
    if snapshots is not None and not problem:
        _snapshots(root, snapshots)
    if last:
        node = _text(root, "last-command", last.get("message", ""),
                     action=last.get("action", ""), outcome=last.get("outcome", ""),
                     time=last.get("time", ""), params=last.get("params", ""))
        node.tail = None
    if last_config:
        _text(root, "last-config", last_config.get("message", ""),
              outcome=last_config.get("outcome", ""), time=last_config.get("time", ""))
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def restamp(rendered: bytes, old: str, new: str) -> bytes | None:
    """*rendered* (by :func:`render` with the stamp *old*) with the stamp *new* instead:
    the same bytes as rendering again, without rendering again; None when *old* is not
    a stamp (then render again).  ``<read-at>`` is the one element whose text is a
    stamp; any other text with it in is escaped, so its first match is that element."""
    if not _STAMP_TEXT.fullmatch(old):  # not strptime: it loads a module per process
        return None
    return rendered.replace(f"<read-at>{old}</read-at>".encode(),
                            f"<read-at>{new}</read-at>".encode(), 1)


def _root(document: bytes) -> etree._Element | None:
    try:
        return etree.fromstring(document, _PARSER)
    except etree.XMLSyntaxError:
        return None


def _last(root: etree._Element | None, tag: str,
          keep: tuple[str, ...]) -> dict[str, str] | None:
    node = root.find(tag) if root is not None else None
    if node is None:
        return None
    found = {k: str(node.get(k)) for k in keep if node.get(k) is not None}
    found["message"] = node.text or ""
    return found


_LAST_COMMAND = ("last-command", ("action", "outcome", "time", "params"))
_LAST_CONFIG = ("last-config", ("outcome", "time"))


def last_command(document: bytes) -> dict[str, str] | None:
    """The ``<last-command>`` of an existing status.xml, or None if absent or unreadable."""
    return _last(_root(document), *_LAST_COMMAND)


def read_at(document: bytes) -> str:
    """The ``<read-at>`` stamp of an existing status.xml ("" if absent or unreadable)."""
    root = _root(document)
    return (root.findtext("read-at") or "") if root is not None else ""


def last_config(document: bytes) -> dict[str, str] | None:
    """The ``<last-config>`` (last settings-file outcome), or None if absent or unreadable."""
    return _last(_root(document), *_LAST_CONFIG)


def kept(document: bytes) -> tuple[dict[str, str] | None, dict[str, str] | None, str]:
    """What a rewrite keeps of an existing status.xml, read in one parse: its
    :func:`last_command`, :func:`last_config` and :func:`read_at`."""
    root = _root(document)
    return (_last(root, *_LAST_COMMAND), _last(root, *_LAST_CONFIG),
            (root.findtext("read-at") or "") if root is not None else "")


def _read_settings(node: etree._Element) -> dict[str, Any]:
    """``<settings>`` read back in the shape root hands over (``info["settings"]``)."""
    cdrom = node.find("cdrom")
    return {
        "memory_mib": int(node.findtext("memory") or 0),
        "vcpus": int(node.findtext("vcpus") or 0),
        "cdrom": "" if cdrom is None else cdrom.text or "",
        "boot": (node.findtext("boot") or "").split(),
        "has_cdrom": cdrom is not None,
        "restart_needed": node.get("restart-needed") == "yes",
    }


def parse(document: bytes) -> dict[str, Any]:
    """Every field :func:`render` writes, read back (for the ``wirt`` CLI); ValueError if bad."""
    try:
        root = etree.fromstring(document, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"not valid XML: {exc}") from None
    if root.tag != "status":
        raise ValueError("not a wirt status document")
    found: dict[str, Any] = {
        "vm": root.findtext("vm") or "", "domain": root.findtext("domain") or "",
        "read_at": unstamp(root.findtext("read-at") or ""),
    }
    host = root.findtext("host")
    if host is not None:
        found["host"] = host
    problem = root.find("problem")
    if problem is not None:
        found["problem"] = problem.text or ""
        found["problem_kind"] = problem.get("kind", "")
    state = root.find("state")
    if state is not None:
        found["state"] = state.text or ""
        found["reason"] = state.get("reason", "")
    for tag in ("autostart", "persistent"):
        text = root.findtext(tag)
        if text is not None:
            found[tag] = text == "yes"
    for tag, key in (("memory", "memory_kib"), ("vcpus", "vcpus")):
        text = root.findtext(tag)
        if text is not None:
            found[key] = int(text)
    graphics = root.find("graphics")
    if graphics is not None:
        found["graphics"] = {str(k): str(v) for k, v in graphics.attrib.items()}
    settings = root.find("settings")
    if settings is not None:
        found["settings"] = _read_settings(settings)
    snapshots = root.find("snapshots")
    if snapshots is not None:
        found["snapshots"] = [
            {"name": node.get("name", ""), "time": node.get("time", ""),
             "state": node.get("state", ""), "current": node.get("current") == "yes",
             "by": node.get("by", "")}
            for node in snapshots.findall("snapshot")]
    found["last"] = last_command(document)
    found["last_config"] = last_config(document)
    return found
