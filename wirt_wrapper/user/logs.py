"""Size-based rotation of the logs wirt keeps in a user's home (runs as that user only).

Called in the user's child (see :mod:`wirt_wrapper.boundary.privsep`), on a folder descriptor that
:mod:`userfs` pinned, before a line is appended.  It distrusts every entry
in that folder: the generation names (``web.log.1.gz`` ...) may have been
prepared by the user as links, folders or FIFOs.  So:

* the current log is read only through :func:`userfs.open_regular` (regular,
  the user's, one link; judged on the descriptor);
* the new generation is written to a fresh ``O_EXCL`` file and renamed into
  place; older generations move up by rename inside the pinned folder, which
  replaces names and never writes through them;
* an odd entry at a generation name stops the rotation with a reason (the
  log line is still appended); nothing is followed, nothing else is removed.

A rotation killed half-way loses nothing: the current log is emptied last,
so the worst case is the same lines in two generations.
"""

from __future__ import annotations

import gzip
import os
from contextlib import suppress

from wirt_wrapper.user import fs as userfs
from wirt_wrapper.user.fs import Unsafe

__all__ = ["generation", "rotate_if_large"]

CHUNK = 1 << 16


def generation(name: str, number: int) -> str:
    """``web.log`` generation 2 is ``web.log.2.gz`` (gzip, like logrotate's ``compress``)."""
    return f"{name}.{number}.gz"


def rotate_if_large(parent: int, name: str, uid: int, max_bytes: int, keep: int) -> bool:
    """Rotate log *name* in the pinned folder *parent* if it is over *max_bytes*.

    Keeps *keep* compressed generations (the oldest one is replaced).
    Returns whether it rotated; raises Unsafe or OSError with the reason.
    """
    try:
        if not userfs.check_entry(parent, name, uid):
            return False
        size = os.stat(name, dir_fd=parent, follow_symlinks=False).st_size
    except Unsafe:
        return False  # not ours to rotate; appending to it reports the problem
    if size <= max_bytes:
        return False
    for number in range(1, keep + 1):
        try:
            userfs.check_entry(parent, generation(name, number), uid)
        except Unsafe as exc:
            raise Unsafe(f"{generation(name, number)} {exc}; remove it") from None
    try:
        temp = _compress(parent, name, uid)
    except Unsafe as exc:
        raise Unsafe(f"{name} {exc}") from None
    try:
        for number in range(keep - 1, 0, -1):
            if userfs.check_entry(parent, generation(name, number), uid):
                userfs.rename_in(parent, generation(name, number), generation(name, number + 1))
        userfs.rename_in(parent, temp, generation(name, 1))
    except BaseException:
        with suppress(OSError):
            os.unlink(temp, dir_fd=parent)
        raise
    userfs.replace_file(parent, name, b"")  # emptied last: a kill never loses lines
    return True


def _compress(parent: int, name: str, uid: int) -> str:
    """Write a gzip copy of log *name* to a fresh hidden file; returns its name."""
    source, _ = userfs.open_regular(parent, name, uid)
    try:
        temp, out = userfs.create_new(parent, f".{generation(name, 1)}.new")
        try:
            with os.fdopen(out, "wb") as raw, gzip.GzipFile(
                filename=name, mode="wb", fileobj=raw
            ) as packed:
                while chunk := os.read(source, CHUNK):
                    packed.write(chunk)
        except BaseException:
            with suppress(OSError):
                os.unlink(temp, dir_fd=parent)
            raise
    finally:
        os.close(source)
    return temp
