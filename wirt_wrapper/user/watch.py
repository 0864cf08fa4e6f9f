"""The watch placer: inotify watches on a user's spool, placed as the user (runs as the user).

Forked by the spawner and dropped for good like every user side
(:mod:`wirt_wrapper.boundary.privsep`), so the kernel judges every step as
the user, and the inotify instance and its watches count against the user's
own limits (``fs.inotify.max_user_instances``, ``max_user_watches``), not
root's: one user cannot use up the watches of another.

It opens each layout's spool one safe step at a time (:mod:`userfs`, never
following a link), and watches each folder it opened through its descriptor
(``fchdir``, then ``inotify_add_watch(".")``: no path is resolved twice).
It watches the folders on the way down (``~/wirt``, ``~/wirt/service``: a
spool that appears or is replaced), the spool itself and each VM folder in
it; never the home.  Then it hands the inotify descriptor to root over its
channel (SCM_RIGHTS) and exits.  Root reads only the events' masks, never
their names (see :mod:`wirt_wrapper.root.watch`).
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any

from wirt_wrapper.boundary.channel import Channel
from wirt_wrapper.rules import spool as spool_rules
from wirt_wrapper.rules.inotify import (
    FOLDER_EVENTS,
    IN_CLOEXEC,
    IN_DONT_FOLLOW,
    IN_NONBLOCK,
    IN_ONLYDIR,
)
from wirt_wrapper.rules.layouts import LAYOUTS, Layout
from wirt_wrapper.user import fs as userfs
from wirt_wrapper.user.fs import Unsafe

__all__ = ["place", "watch_main"]

_libc = ctypes.CDLL(None, use_errno=True)


def _add_watch(inotify: int, folder: int) -> None:
    """Watch the open folder *folder* (its own inode: '.', after fchdir; no path walk)."""
    os.fchdir(folder)
    if _libc.inotify_add_watch(inotify, b".", FOLDER_EVENTS | IN_ONLYDIR | IN_DONT_FOLLOW) < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _place_layout(inotify: int, home: int, layout: Layout, uid: int, limit: int) -> int:
    """Watches for one layout: the folders on the way to the spool (not the home), the spool
    and its VM folders.  Returns the number placed; a missing folder ends the way down."""
    placed = 0
    fd = os.dup(home)
    try:
        for part in layout.spool:
            try:
                child = userfs.open_dir(fd, part, uid)
            except FileNotFoundError:
                return placed  # the deepest existing folder is watched: its creation is seen
            os.close(fd)
            fd = child
            _add_watch(inotify, fd)
            placed += 1
        entries, _ = userfs.list_dir(fd, limit)
        for name, st in entries:
            if spool_rules.in_spool(layout, name, st.st_mode).kind != spool_rules.VM:
                continue
            try:
                vm = userfs.open_dir(fd, name, uid)
            except (OSError, Unsafe):
                continue  # gone meanwhile, or not a folder wirt follows: the pass tells
            try:
                _add_watch(inotify, vm)
                placed += 1
            finally:
                os.close(vm)
    finally:
        os.close(fd)
    return placed


def place(job: dict[str, Any]) -> tuple[int, int]:
    """A fresh inotify instance with the user's watches; (its descriptor, watches placed).

    Raises OSError (ENOSPC: no watches left; EMFILE: no instance left) or Unsafe.
    """
    fd = _libc.inotify_init1(IN_CLOEXEC | IN_NONBLOCK)
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    try:
        home = os.open(job["home"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            placed = sum(_place_layout(fd, home, LAYOUTS[name], job["uid"], job["limit"])
                         for name in job["layouts"])
        finally:
            os.close(home)
            os.chdir("/")
    except BaseException:
        os.close(fd)
        raise
    return fd, placed


def watch_main(job: dict[str, Any], channel: Channel) -> None:
    """The placer's whole life: place, hand the descriptor to root (or say why not), exit."""
    try:
        fd, placed = place(job)
    except (OSError, Unsafe) as exc:
        code = exc.errno if isinstance(exc, OSError) else errno.EPERM
        name = errno.errorcode.get(code or 0, "error")
        channel.send({"op": "watching", "watches": 0, "problem": f"{name}: {exc}"[:300]})
        return
    channel.send_fds({"op": "watching", "watches": placed}, [fd])
    os.close(fd)
