"""A quick look at a user's spool, so that idle users need no user-side process at all.

Runs in :class:`privsep.Prober` with the user's *filesystem* identity
(fsuid, fsgid and groups: the kernel checks every step as the user, as it
does for knfsd and Samba).  It only walks folders with :mod:`userfs`, lists
them and lstats ``status.xml``: it never reads content and never writes (the
settings file ``config`` is judged by its listing's lstat too), with one
exception, :func:`mark`: after root found every status.xml of the user
current, it sets the time of the user's existing ``~/wirt/info/status-checked``
(never creates it; opened on the one safe path, as the user).  Root starts a
full user side (dropped for good) only when something could need doing: a
command file, anything unexpected, a new VM folder, a settings file that is
not the one root last handled, or a status that is not the one the last full
pass wrote (see ``wirt_wrapper.root.scheduler.Pass.needs_turn``).
"""

from __future__ import annotations

import os
from typing import Any

from wirt_wrapper.rules import spool as spool_rules
from wirt_wrapper.rules.layouts import CHECKED_FILE, LAYOUTS, STATUS_FILE, Layout
from wirt_wrapper.rules.settings import FILE as SETTINGS_FILE
from wirt_wrapper.user import fs as userfs
from wirt_wrapper.user.fs import Unsafe

__all__ = ["BUSY", "look", "mark", "signature"]

BUSY = {"spool": "busy"}  # something to do, or something to look at closely


def signature(st: os.stat_result) -> list[int]:
    """What tells a status.xml apart from the one wirt wrote (any write changes one)."""
    return [st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode, st.st_nlink]


class _Busy(Exception):
    """Too much to judge in a look: a full user side looks closely."""


def _walk_spool(home: int, layout: Layout, uid: int, limit: int, odd: list[str]) -> int:
    """The spool, walked one safe step at a time; the folders above it are listed on the way
    (their strays' keys go to *odd*).  Raises like :func:`userfs.walk`."""
    parents = dict(layout.parents)
    fd = os.dup(home)
    try:
        for index, part in enumerate(layout.spool):
            child = userfs.open_dir(fd, part, uid)
            os.close(fd)
            fd = child
            here = layout.spool[:index + 1]
            if here in parents:
                entries, truncated = userfs.list_dir(fd, limit)
                if truncated:
                    raise _Busy()
                odd += [e.key for name, st in entries
                        if (e := spool_rules.in_parent(layout, here, parents[here], name,
                                                       st.st_mode)).kind == spool_rules.ODD]
    except BaseException:
        os.close(fd)
        raise
    return fd


def _look(home: int, layout: Layout, uid: int, limit: int) -> dict[str, Any]:
    # Entries the full side only reports (once) and otherwise ignores, under the
    # keys it reports them by: root starts it only if one of them is new.
    odd: list[str] = []
    try:
        spool = _walk_spool(home, layout, uid, limit, odd)
    except FileNotFoundError:
        return {"spool": "absent", "odd": odd}
    except (Unsafe, OSError, _Busy):
        return BUSY
    vms: dict[str, list[list[int] | None]] = {}  # VM -> [status.xml's lstat, config's]
    try:
        entries, truncated = userfs.list_dir(spool, limit)
        if truncated:
            return BUSY
        for name, st in entries:
            entry = spool_rules.in_spool(layout, name, st.st_mode)
            if entry.kind == spool_rules.ODD:
                odd.append(entry.key)
            if entry.kind != spool_rules.VM or entry.vm is None:
                continue
            try:
                folder = userfs.open_dir(spool, name, uid)
            except (Unsafe, OSError):
                return BUSY
            try:
                inside, truncated = userfs.list_dir(folder, limit)
            finally:
                os.close(folder)
            if truncated:
                return BUSY
            config = None
            for inner, ist in inside:
                found = spool_rules.in_vm_folder(name, inner, ist.st_mode)
                if found.kind == spool_rules.COMMAND:
                    return BUSY  # a command is waiting
                if found.kind == spool_rules.ODD:
                    odd.append(found.key)  # a folder: never a command
                if inner == SETTINGS_FILE:
                    config = signature(ist)  # root compares it with the one it handled
            vms[entry.vm] = [None, config]
    finally:
        os.close(spool)
    if layout.info is not None and vms:
        try:
            info = userfs.walk(home, layout.info, uid)
        except (Unsafe, OSError):
            return BUSY
        try:
            for vm in vms:
                try:
                    folder = userfs.open_dir(info, vm, uid)
                except (Unsafe, OSError):
                    return BUSY
                try:
                    vms[vm][0] = signature(os.stat(STATUS_FILE, dir_fd=folder,
                                                   follow_symlinks=False))
                except OSError:
                    return BUSY
                finally:
                    os.close(folder)
        finally:
            os.close(info)
    return {"spool": "ok", "vms": vms, "odd": odd}


def _look_safely(home: int, layout: Layout, uid: int, limit: int) -> dict[str, Any]:
    try:
        return _look(home, layout, uid, limit)
    except (Unsafe, OSError):
        return BUSY  # whatever is odd, the full side looks closely and tells the user


def look(job: dict[str, Any]) -> dict[str, Any]:
    """Each layout's spool of one user: "absent", "busy", or "ok" with its VMs' status lstat."""
    try:
        home = os.open(job["home"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return {name: BUSY for name in job["layouts"]}
    try:
        return {name: _look_safely(home, LAYOUTS[name], job["uid"], job["limit"])
                for name in job["layouts"]}
    finally:
        os.close(home)


def mark(job: dict[str, Any]) -> bool:
    """An idle pass confirmed the user's status.xml files: ``status-checked`` gets root's read
    time (``job["ns"]``); False if the file is missing or unusable (a full turn makes it)."""
    info = LAYOUTS[job["layout"]].info
    if info is None:
        return False
    try:
        home = os.open(job["home"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        with userfs.opened(home, info[:-1], job["uid"]) as folder:
            return userfs.set_mtime(folder, CHECKED_FILE, job["uid"], int(job["ns"]))
    except (Unsafe, OSError):
        return False
    finally:
        os.close(home)
