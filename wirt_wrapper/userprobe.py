"""A quick look at a user's spool, so that idle users need no user-side process at all.

Runs in :class:`privsep.Prober` with the user's *filesystem* identity
(fsuid, fsgid and groups: the kernel checks every step as the user, as it
does for knfsd and Samba).  It only walks folders with :mod:`userfs`, lists
them and lstats ``status.xml``: it never opens a file, never reads content,
never writes.  Root starts a full user side (dropped for good) only when
something could need doing: a command file, anything unexpected, a new VM
folder, or a status that is not the one the last full pass wrote (see
``rootside.Pass.needs_turn``).
"""

from __future__ import annotations

import os
import stat
from typing import Any

from . import userfs
from .actions import RESERVED, VM_NAME
from .layouts import LAYOUTS, STATUS_FILE, Layout
from .userfs import Unsafe

__all__ = ["BUSY", "look", "signature"]

BUSY = {"spool": "busy"}  # something to do, or something to look at closely


def signature(st: os.stat_result) -> list[int]:
    """What tells a status.xml apart from the one wirt wrote (any write changes one)."""
    return [st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode, st.st_nlink]


def _look(home: int, layout: Layout, uid: int, limit: int) -> dict[str, Any]:
    try:
        spool = userfs.walk(home, layout.spool, uid)
    except FileNotFoundError:
        return {"spool": "absent"}
    except (Unsafe, OSError):
        return BUSY
    vms: dict[str, list[int] | None] = {}
    # Entries the full side only reports (once) and otherwise ignores, under the
    # keys it reports them by: root starts it only if one of them is new.
    odd: list[str] = []
    try:
        entries, truncated = userfs.list_dir(spool, limit)
        if truncated:
            return BUSY
        for name, st in entries:
            if name.startswith(".") or name in layout.own_entries:
                continue
            vm = layout.vm_of(name)
            if vm is None or not stat.S_ISDIR(st.st_mode) or not VM_NAME.fullmatch(vm):
                odd.append(f"entry:{name}:{st.st_ino}")
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
            for inner, ist in inside:
                if inner.startswith(".") or inner in RESERVED:
                    continue
                if not stat.S_ISDIR(ist.st_mode):
                    return BUSY  # a command is waiting
                odd.append(f"entry:{name}/{inner}:{ist.st_ino}")  # a folder: never a command
            vms[vm] = None
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
                    vms[vm] = signature(os.stat(STATUS_FILE, dir_fd=folder,
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
