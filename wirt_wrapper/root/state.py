"""Root's own files: the pass lock, the state folder, the audit log's folder (runs as root).

Any local user, member or not, can create a name in a world-writable folder
(``/run/lock``, ``/tmp``) before root does (SECURITY.md row 14).  So the
lock and every state file live only in folders that wirt creates itself and
checks on every start: the folder is root's and writable by root alone, and
every folder above it is root-owned and either writable by root alone or
sticky (then nobody else can replace the root-owned entry below it).  A
config that puts ``lock_file``, ``state_dir`` or ``audit_log`` anywhere else
is refused, naming the key.  Inside those folders files are created
``O_EXCL`` under fresh names and renamed into place; an existing name is
never opened for writing unless it is a root-owned regular file, mode 0600.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from pathlib import Path
from typing import Any

from wirt_wrapper.rules.config import Config
from wirt_wrapper.rules.errors import ConfigError, LockError, WirtError

__all__ = [
    "acquire_lock", "chain_problem", "load_state", "open_root_file", "prepare_state",
    "replace_root_file", "save_state", "secure_folder",
]

_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def _refuse(key: str, path: str, why: str) -> ConfigError:
    return ConfigError(f"{key}: {path}: {why}; keep it in a folder that only root can write "
                       "(the defaults are /run/wirt, /var/lib/wirt and /var/log/wirt)")


def chain_problem(folder: Path) -> str | None:
    """Why *folder* is not root's alone, or None: it and every folder above it must be
    folders (lstat: a link is not one), root-owned; *folder* writable by root alone, the
    ones above it too or sticky (nobody else can replace root's entry in them)."""
    for index, item in enumerate((folder, *folder.parents)):
        try:
            st = os.lstat(item)
        except OSError as exc:
            return f"{item}: {exc.strerror}"
        if not stat.S_ISDIR(st.st_mode):
            return f"{item} is not a folder"
        if st.st_uid != 0:
            return f"{item} is owned by uid {st.st_uid}, not root"
        if st.st_mode & _OTHERS_WRITE and (index == 0 or not st.st_mode & stat.S_ISVTX):
            return f"{item} is writable by group or others"
    return None


def _check_chain(folder: Path, key: str, shown: str) -> None:
    problem = chain_problem(folder)
    if problem is not None:
        raise _refuse(key, shown, problem)


def secure_folder(path: str, key: str, value: str | None = None) -> str:
    """Create the missing part of folder *path* (mode 0700) and check it; the real path.

    *value*: the configured value to name in a refusal (default *path*).
    """
    real = Path(os.path.realpath(path))
    missing: list[Path] = []
    existing = real
    while not os.path.lexists(existing):
        missing.append(existing)
        existing = existing.parent
    # never create a name where someone else could have made it first
    shown = value or path
    _check_chain(existing, key, shown)
    for item in reversed(missing):
        try:
            os.mkdir(item, 0o700)
        except FileExistsError:
            pass  # made meanwhile, by root (nobody else can write here): checked below
    _check_chain(real, key, shown)
    return str(real)


def prepare_state(config: Config) -> None:
    """Make and check the folders of the lock, the state and the audit log (every start)."""
    secure_folder(os.path.dirname(config.lock_file), "lock_file", config.lock_file)
    secure_folder(config.state_dir, "state_dir")
    secure_folder(os.path.dirname(config.audit_log), "audit_log", config.audit_log)


def open_root_file(path: str, flags: int, what: str) -> int:
    """Open (or create, mode 0600) a root-only file in a checked folder; refuse anything odd."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_CREAT | os.O_NONBLOCK, 0o600)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o077 \
            or st.st_nlink != 1:
        os.close(fd)
        raise WirtError(f"{what} {path} must be a regular file owned by root with mode 0600 "
                        "and one link")
    os.set_blocking(fd, True)
    return fd


def replace_root_file(path: str, data: bytes) -> None:
    """Write a root-only file whole: a fresh O_EXCL file beside it, fsync, rename over *path*."""
    import tempfile  # here: imported before the spawner forks, its random would run in each child

    folder, name = os.path.split(path)
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)  # O_EXCL, mode 0600
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def load_state(path: str) -> dict[str, Any]:
    """A root-only JSON state file ({} when missing, torn or not an object)."""
    if not os.path.lexists(path):
        return {}
    fd = open_root_file(path, os.O_RDONLY, "state file")
    with os.fdopen(fd, "rb") as handle:
        try:
            data = json.load(handle)
        except (ValueError, RecursionError):
            return {}
    return data if isinstance(data, dict) else {}


def save_state(path: str, data: dict[str, Any]) -> None:
    replace_root_file(path, json.dumps(data, sort_keys=True).encode())


def acquire_lock(path: str) -> int | None:
    """The pass lock's descriptor, or None if another pass holds it."""
    try:
        fd = open_root_file(path, os.O_RDWR, "lock file")
    except OSError as exc:
        raise LockError(f"lock file {path}: {exc.strerror}") from None
    except WirtError as exc:
        raise LockError(str(exc)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
