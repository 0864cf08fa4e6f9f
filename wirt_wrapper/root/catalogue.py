"""The admin's ISO catalogue, ``settings.iso_dir`` (SPEC section 9; runs as root).

The catalogue is one folder.  It must be root-owned and not group/other-writable
(a sticky bit does not make it safe: anyone could still add a file), and every
folder above it root-owned and writable by root alone or sticky, checked like
the config file (:func:`~wirt_wrapper.rules.config.check_root_owned`, SECURITY.md
row 17).  Its files need not stay root's: libvirt's dynamic ownership hands an
attached ISO to ``libvirt-qemu`` and does not give it back (HOST-NOTES).

The listing holds the regular files directly in the folder whose names match
:data:`~wirt_wrapper.rules.settings.ISO_NAME`, looked at with ``lstat`` through
a descriptor of the checked folder: links, subfolders, devices, FIFOs, files
any local user may write and other names are left out.  A user's ``cdrom``
value is a *name*: :func:`iso_path` finds it in the listing and joins the
listing's own string, never the user's, to the folder (SECURITY.md row 15).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from wirt_wrapper.rules.config import check_root_owned
from wirt_wrapper.rules.errors import ConfigError, WirtError
from wirt_wrapper.rules.settings import ISO_NAME

__all__ = ["KEY", "MAX_ENTRIES", "Catalogue", "CatalogueError", "NotInCatalogue", "iso_path",
           "listing_digest", "listing_text", "read_catalogue"]

KEY = "settings.iso_dir"
MAX_ENTRIES = 10_000  # entries of any kind in the folder: the listing's work is bounded


class CatalogueError(ConfigError):
    """The ISO catalogue folder (settings.iso_dir) is unsafe or cannot be read."""


class NotInCatalogue(WirtError):
    """A name asked for is not in the catalogue's listing (nothing is joined into a path)."""


@dataclass(frozen=True)
class Catalogue:
    """One look at the catalogue: the checked real folder and the names in it, sorted."""

    directory: str
    names: tuple[str, ...]

    def path(self, name: str) -> str:
        return iso_path(self.directory, name, self.names)


def _refuse(iso_dir: str, why: str) -> CatalogueError:
    return CatalogueError(f"{KEY} {iso_dir}: {why}")


def read_catalogue(iso_dir: str) -> Catalogue:
    """Check the folder *iso_dir* and list it (raises :class:`CatalogueError`)."""
    if not iso_dir.startswith("/"):
        raise _refuse(iso_dir, "must be an absolute path")
    try:
        real = check_root_owned(iso_dir, KEY)
    except ConfigError as exc:
        raise CatalogueError(str(exc)) from None
    try:
        fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            if os.path.islink(real):  # replaced since the check
                raise _refuse(iso_dir, f"{real} is a link now, not the folder checked") from None
            raise _refuse(iso_dir, f"{real} is not a folder") from None
        raise _refuse(iso_dir, f"cannot open {real}: {exc.strerror}") from None
    try:
        # the folder opened is the one checked: root's, and nobody else may add to it
        st = os.fstat(fd)
        if st.st_uid != 0:
            raise _refuse(iso_dir, f"{real} is owned by uid {st.st_uid}, not root")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise _refuse(iso_dir, f"{real} is writable by group or others")
        return Catalogue(real, _scan(fd, iso_dir))
    finally:
        os.close(fd)


def _scan(fd: int, iso_dir: str) -> tuple[str, ...]:
    names = []
    try:
        with os.scandir(fd) as entries:
            for count, entry in enumerate(entries, 1):
                if count > MAX_ENTRIES:
                    raise _refuse(iso_dir, f"holds more than {MAX_ENTRIES} entries")
                name = entry.name
                if not ISO_NAME.fullmatch(name):
                    continue
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while listed
                if stat.S_ISREG(st.st_mode) and not st.st_mode & stat.S_IWOTH:
                    names.append(name)
    except OSError as exc:
        raise _refuse(iso_dir, f"cannot list it: {exc.strerror}") from None
    return tuple(sorted(names))


def iso_path(iso_dir_real: str, name: str, listing: Collection[str]) -> str:
    """The file of *name*, only if the listing holds it: the listing's string is joined."""
    for entry in listing:
        if entry == name and ISO_NAME.fullmatch(entry):
            return os.path.join(iso_dir_real, entry)
    raise NotInCatalogue(f"{name!r} is not in the ISO catalogue ({KEY})")


def listing_text(names: Iterable[str]) -> str:
    """The content of a user's ``~/wirt/info/isos.txt``: a comment line, then one name a line."""
    names = list(names)
    for name in names:  # one name a line: nothing else may reach a user's file
        if not ISO_NAME.fullmatch(name):
            raise ValueError(f"not an ISO name: {name!r}")
    header = ("# ISO images for a VM's CD drive (wirt's catalogue): put "
              '{"cdrom": "NAME"} in the VM\'s config file, or run: wirt set VM cdrom=NAME\n')
    return header + "".join(f"{name}\n" for name in names)


def listing_digest(names: Iterable[str]) -> str:
    """What identifies one listing: isos.txt is rewritten only when this changes."""
    return hashlib.sha256(listing_text(names).encode("ascii")).hexdigest()[:32]
