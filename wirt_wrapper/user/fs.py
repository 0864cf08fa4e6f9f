"""The one way to touch a file under a user's home (runs as that user only).

Every function here is called in a child process that has dropped to the
user's uid, gid and groups for good (see :mod:`wirt_wrapper.boundary.privsep`), so the kernel
refuses whatever the user could not do.  On top of that, nothing is trusted:

* paths are walked one component at a time from a directory descriptor,
  with ``O_NOFOLLOW`` at every step, and every folder must be the user's;
* a file is judged by ``lstat`` before it is opened (a FIFO, socket, device,
  link, another owner's or a hard-linked file is never opened), opened
  ``O_NOFOLLOW | O_NONBLOCK``, and judged again by ``fstat`` on the
  descriptor: same inode, regular, owned by the user, one link, within the
  size limit (Postfix ``safe_open``);
* the tool's own outputs are created under a fresh name with ``O_EXCL`` and
  renamed over the target, never opened for writing by a name the user
  could have prepared (status.xml, history entries, log generations);
  renames stay inside one pinned folder and replace a name, never write
  through it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from wirt_wrapper.rules.spool import kind_of

__all__ = [
    "Unsafe",
    "append_line",
    "check_entry",
    "claim",
    "create_new",
    "kind_of",
    "free_name",
    "list_dir",
    "numbered",
    "open_dir",
    "open_regular",
    "place",
    "place_file",
    "set_mtime",
    "read_file",
    "rename_in",
    "replace_file",
    "walk",
]

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
APPEND_FLAGS = (
    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
)


ONLY_REGULAR = "wirt reads only regular files: write a plain file instead"


class Unsafe(Exception):
    """An entry that wirt will not follow, open or trust; the message says why."""


def _judge_owner(st: os.stat_result, uid: int) -> None:
    if st.st_uid != uid:
        raise Unsafe(
            f"is owned by uid {st.st_uid}, not by you (uid {uid}); "
            "another user may have written into your folder: remove it, and keep your "
            "folders writable by you alone (chmod go-w)"
        )


def _explain_denied(parent: int, name: str, uid: int) -> None:
    """After EACCES: an entry of another owner says so (Unsafe), with that owner's uid."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError:
        return
    _judge_owner(st, uid)


def open_dir(parent: int, name: str, uid: int, *, create: bool = False) -> int:
    """Open folder *name* below *parent* without following links; it must be the user's."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            pass
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            raise Unsafe(f"is {kind_of(st.st_mode)}, not a folder; make it a real folder") from None
        if exc.errno == errno.EACCES:
            _explain_denied(parent, name, uid)
        raise
    try:
        _judge_owner(os.fstat(fd), uid)
    except Unsafe:
        os.close(fd)
        raise
    return fd


def walk(top: int, parts: tuple[str, ...], uid: int, *, create: bool = False) -> int:
    """Open ``top/parts[0]/parts[1]/...`` one safe step at a time; returns a new fd."""
    fd = os.dup(top)
    try:
        for index, part in enumerate(parts):
            try:
                child = open_dir(fd, part, uid, create=create)
            except Unsafe as exc:
                raise Unsafe(f"~/{'/'.join(parts[: index + 1])} {exc}") from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def opened(top: int, parts: tuple[str, ...], uid: int, *, create: bool = False) -> Iterator[int]:
    fd = walk(top, parts, uid, create=create)
    try:
        yield fd
    finally:
        os.close(fd)


def list_dir(fd: int, limit: int) -> tuple[list[tuple[str, os.stat_result]], bool]:
    """Entries of the open folder *fd* with their lstat, at most *limit*; and 'truncated'."""
    entries: list[tuple[str, os.stat_result]] = []
    with os.scandir(fd) as it:
        for entry in it:
            if len(entries) >= limit:
                return entries, True
            try:
                entries.append((entry.name, entry.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue
            except OSError as exc:  # e.g. a folder that may be read but not searched
                raise Unsafe(f"cannot be searched ({exc.strerror})") from None
    return entries, False


def _judge_regular(st: os.stat_result, uid: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise Unsafe(f"is {kind_of(st.st_mode)}; {ONLY_REGULAR}")
    _judge_owner(st, uid)
    if st.st_nlink == 0:  # unlinked between its lstat (or open) and now
        raise Unsafe("was removed or replaced while being read")
    if st.st_nlink != 1:
        raise Unsafe(f"has {st.st_nlink} hard links (wirt reads and writes only files with "
                     "exactly one); write a new file instead of linking one")


def open_regular(parent: int, name: str, uid: int) -> tuple[int, os.stat_result]:
    """Open the user's regular file *name* for reading, judged on the descriptor.

    Same inode as the lstat before, regular, owned by the user, one link;
    raises Unsafe with the reason, or OSError.  No size limit: the caller's.
    """
    before = os.stat(name, dir_fd=parent, follow_symlinks=False)
    # Judged before it is opened too: a file of another owner or with another link is
    # never opened, and the user learns why (not "permission denied").
    _judge_regular(before, uid)
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Unsafe("was replaced by a symbolic link while being read") from None
        raise
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise Unsafe("was replaced while being read")
        _judge_regular(st, uid)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_file(parent: int, name: str, uid: int, max_bytes: int,
              hint: str = "a command file holds one short line of parameters"
              ) -> tuple[bytes, os.stat_result]:
    """Read a user's file safely; raises Unsafe with the reason, or OSError.  *hint* ends
    the message when the file is too big (what such a file should hold)."""
    fd, st = open_regular(parent, name, uid)
    try:
        if st.st_size > max_bytes:
            raise Unsafe(f"has {st.st_size} bytes, more than the limit of {max_bytes}; {hint}")
        data = os.read(fd, max_bytes + 1)
        if len(data) > max_bytes:
            raise Unsafe(f"has more than the limit of {max_bytes} bytes")
        return data, st
    finally:
        os.close(fd)


def set_mtime(parent: int, name: str, uid: int, when_ns: int, *,
              create: bytes | None = None) -> bool:
    """Set the modification time of the user's file *name* (judged on its descriptor like a
    file read); missing: made with *create* as content (0600), or False without it."""
    try:
        fd, _ = open_regular(parent, name, uid)
    except FileNotFoundError:
        if create is None:
            return False
        try:
            place_file(parent, name, create)
        except FileExistsError:
            pass  # made meanwhile: judged below like any other
        fd, _ = open_regular(parent, name, uid)
    try:
        os.utime(fd, ns=(when_ns, when_ns))
    finally:
        os.close(fd)
    return True


def check_entry(parent: int, name: str, uid: int) -> bool:
    """Whether *name* exists in *parent*; if it does, it must be the user's regular file."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        raise Unsafe(f"is {kind_of(st.st_mode)}")
    _judge_owner(st, uid)
    return True


def numbered(base: str, attempt: int, suffix: str = "") -> str:
    """The *attempt*-th name :func:`create_new` tries: ``base``, ``base-2``, ... + suffix."""
    return f"{base}{suffix}" if attempt == 1 else f"{base}-{attempt}{suffix}"


def create_new(parent: int, base: str, mode: int = 0o600, *,
               suffix: str = "") -> tuple[str, int]:
    """Create a fresh file ``base`` (or ``base-2``, ...; then *suffix*) with O_EXCL.

    Returns its name and a write fd (``x-2.log``, not ``x.log-2``, with suffix ``.log``).
    """
    for attempt in range(1, 1000):
        name = numbered(base, attempt, suffix)
        try:
            return name, os.open(name, NEW_FLAGS, mode, dir_fd=parent)
        except FileExistsError:
            continue
    raise Unsafe(f"cannot find a free name for {base}{suffix}")


def rename_in(parent: int, old: str, new: str) -> None:
    """Rename *old* to *new* inside the pinned folder *parent* (atomic).

    An entry already at *new* (even a symbolic link) is replaced as a name;
    nothing is ever written through it.
    """
    os.rename(old, new, src_dir_fd=parent, dst_dir_fd=parent)


def free_name(parent: int, base: str) -> str:
    """The first of ``base``, ``base-2``, ... that does not exist now (see :func:`place`)."""
    for attempt in range(1, 1000):
        name = numbered(base, attempt)
        try:
            os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return name
    raise Unsafe(f"cannot find a free name for {base}")


def place(parent: int, name: str) -> None:
    """Create the empty placeholder *name* with O_EXCL (FileExistsError if it was taken)."""
    os.close(os.open(name, NEW_FLAGS, 0o600, dir_fd=parent))


def claim(src_dir: int, name: str, dst_dir: int, dst_name: str) -> None:
    """Move a command file into history (over its placeholder); atomic."""
    os.rename(name, dst_name, src_dir_fd=src_dir, dst_dir_fd=dst_dir)


def replace_file(parent: int, name: str, data: bytes, mode: int = 0o600) -> None:
    """Write *data* to a fresh ``.name.*`` file and rename it over *name*.

    The data goes through the descriptor that created the file (O_EXCL), never
    through a second open by name.
    """
    temp, fd = create_new(parent, f".{name}.new", mode)
    try:
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp, dir_fd=parent)
        raise


def append_line(parent: int, name: str, line: str, uid: int) -> None:
    """Append one line to the user's log file *name* (created if missing)."""
    try:
        fd = os.open(name, APPEND_FLAGS, 0o600, dir_fd=parent)
    except PermissionError:
        _explain_denied(parent, name, uid)
        raise
    try:
        # The one place wirt writes into a file that may already exist (a log, by
        # appending): judged on the descriptor like any file it reads.
        _judge_regular(os.fstat(fd), uid)
        os.write(fd, line.encode("utf-8", "backslashreplace"))
    finally:
        os.close(fd)


_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)


def move_noreplace(src_dir: int, name: str, dst_dir: int, dst_name: str) -> None:
    """renameat2(RENAME_NOREPLACE): atomic, and never replaces an existing *dst_name*.

    Python's os module has no renameat2; link()+unlink() would show the file
    with two links for a moment (which the pass rejects).  Raises FileExistsError.
    """
    if _libc.renameat2(src_dir, os.fsencode(name), dst_dir, os.fsencode(dst_name),
                       _RENAME_NOREPLACE) == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.EINVAL, errno.ENOSYS):
        raise OSError(err, os.strerror(err), dst_name)
    # The file system cannot refuse to replace: check, then rename (a race only
    # with another writer of the same name in the user's own folder).
    try:
        os.stat(dst_name, dir_fd=dst_dir, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(name, dst_name, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
        return
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst_name)


def place_file(parent: int, name: str, data: bytes, mode: int = 0o600) -> os.stat_result:
    """Write *data* under a fresh ``.name.*`` and rename it to *name*; never replaces.

    A reader that ignores dot-files sees nothing or the whole file, never a part.
    Raises FileExistsError if *name* exists, Unsafe if the file in place is not the
    one written (someone with write access to the folder swapped it).  Returns the
    placed file's fstat: its inode identifies it after the pass moves it to history.
    """
    temp, fd = create_new(parent, f".{name}.wirt-new", mode)  # written through this fd
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        move_noreplace(parent, temp, parent, name)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp, dir_fd=parent)
        raise
    try:
        placed = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return st  # a pass claimed it already
    if (placed.st_dev, placed.st_ino) != (st.st_dev, st.st_ino):
        raise Unsafe("was swapped for another file while being written")
    return st
