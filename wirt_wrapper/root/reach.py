"""Reaching a VM (SPEC 10): console password, console lock, serial log (runs as root).

Pure helpers for :mod:`wirt_wrapper.root.hypervisor`: they read the domain
XML libvirt gave (admin-defined, trusted for its paths but not for where they
point), and the serial log file that XML names.  Root reads that file only
when every folder on its path is root's alone (:func:`state.chain_problem`,
SECURITY.md row 17), opened ``O_NOFOLLOW|O_NONBLOCK``, a regular file
(fstat), and only its last :data:`~wirt_wrapper.rules.protocol.MAX_SERIAL`
bytes.  Nothing here opens a path in a user's home, and the console password
made here goes only into the answer for console.json, never into a message.
"""

from __future__ import annotations

import copy
import errno
import os
import secrets
import stat
import string
import time
from pathlib import Path
from typing import Any

from lxml import etree

from wirt_wrapper.root.state import chain_problem
from wirt_wrapper.rules.protocol import MAX_SERIAL

__all__ = ["ASK_ADMIN", "PASSWORD_LENGTH", "Refused", "console_device", "graphics_update",
           "lock_definition", "new_password", "read_tail", "serial_path", "valid_until"]

PASSWORD_LENGTH = 8  # VNC uses at most 8 characters of a password
_ALPHABET = string.ascii_letters + string.digits
CONSOLE_TYPES = ("vnc", "spice")
ASK_ADMIN = ("ask the admin to keep the VM's serial log in a folder only root can write "
             "(such as /var/log/libvirt/qemu)")


class Refused(Exception):
    """The serial log cannot be read safely, or is not there; the message says why."""


def new_password() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(PASSWORD_LENGTH))


def valid_until(minutes: int, now: float | None = None) -> tuple[str, str]:
    """(libvirt's passwdValidTo, console.json's valid_until), *minutes* from now, UTC."""
    moment = time.gmtime((time.time() if now is None else now) + 60 * minutes)
    return time.strftime("%Y-%m-%dT%H:%M:%S", moment), time.strftime("%Y-%m-%dT%H:%M:%SZ", moment)


def console_device(root: Any) -> Any | None:
    """The domain's first VNC or SPICE graphics device, or None."""
    for node in root.findall("devices/graphics"):
        if node.get("type") in CONSOLE_TYPES:
            return node
    return None


def graphics_update(node: Any, password: str, until: str) -> str:
    """The device XML for updateDeviceFlags: the live device with a new password."""
    device = copy.deepcopy(node)
    device.tail = None
    device.set("passwd", password)
    device.set("passwdValidTo", until)
    return str(etree.tostring(device, encoding="unicode"))


def lock_definition(xml: str) -> str | None:
    """The persistent definition (read with VIR_DOMAIN_XML_SECURE) with ``passwd=''`` on
    every graphics device that has no password; None when each has one already."""
    root = etree.fromstring(xml.encode())
    changed = False
    for node in root.findall("devices/graphics"):
        if node.get("type") in CONSOLE_TYPES and node.get("passwd") is None:
            node.set("passwd", "")
            changed = True
    return str(etree.tostring(root, encoding="unicode")) if changed else None


def serial_path(root: Any) -> str | None:
    """Where the domain's serial console is logged: a ``<serial type='file'>`` source, or
    a ``<log file=...>`` on its serial or console device; None when it has neither."""
    for node in root.findall("devices/serial"):
        source = node.find("source")
        if node.get("type") == "file" and source is not None and source.get("path"):
            return str(source.get("path"))
    for tag in ("devices/serial/log", "devices/console/log"):
        for node in root.findall(tag):
            if node.get("file"):
                return str(node.get("file"))
    return None


def read_tail(path: str, limit: int = MAX_SERIAL) -> bytes:
    """The last *limit* bytes of the log at *path*, read only when it is safe (row 17)."""
    if not path.startswith("/") or os.path.normpath(path) != path:
        raise Refused(f"its serial log path {path!r} is not a plain absolute path; {ASK_ADMIN}")
    problem = chain_problem(Path(path).parent)
    if problem is not None:
        raise Refused(f"its serial log {path} is not in a folder only root can write "
                      f"({problem}), so wirt does not read it; {ASK_ADMIN}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                     | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise Refused(f"its serial log {path} does not exist yet: the VM has not "
                          "written to it since it was defined; start it first") from None
        if exc.errno == errno.ELOOP:
            raise Refused(f"its serial log {path} is a symbolic link, which wirt does not "
                          f"follow; {ASK_ADMIN}") from None
        raise Refused(f"its serial log {path} cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"its serial log {path} is not a regular file; {ASK_ADMIN}")
        os.lseek(fd, max(0, st.st_size - limit), os.SEEK_SET)
        chunks = bytearray()
        while len(chunks) < limit:
            chunk = os.read(fd, limit - len(chunks))
            if not chunk:
                break
            chunks += chunk
        return bytes(chunks)
    finally:
        os.close(fd)
