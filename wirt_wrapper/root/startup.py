"""What every root entry point does first: ``virsh_wrapper``, ``wirt admin``, ``wirt-audit``.

Trusts nothing it was started with: the environment is replaced (sudo may
pass some variables through, libvirt and PAM read some), the interpreter
must run isolated (``-I``: no ``PYTHON*`` variable, user site or current
folder can put code in front of wirt's), and the interpreter and every file
of the package must be root's alone, all the way up to ``/`` (SPEC 5.8).
The user sides run that same code after dropping to a user, so it must also
be readable by an unprivileged user; otherwise a user side would fail half
way (a module that cannot be imported after the drop).
"""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
from pathlib import Path

from wirt_wrapper.rules.config import check_root_owned
from wirt_wrapper.rules.errors import ConfigError, NotRootError, UnsafeInstall

__all__ = ["SAFE_ENV", "check_code", "check_readable", "prepare", "scrub_environment"]

SAFE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
PACKAGE = Path(__file__).resolve().parent.parent


def scrub_environment() -> None:
    """Forget every variable the caller set; libvirt and PAM read some of them."""
    os.environ.clear()
    os.environ.update(SAFE_ENV)


def _code_files(package: Path) -> list[tuple[Path, os.stat_result]]:
    """The package's folders and the files Python loads from them (sources and caches),
    each with its lstat, below *package* (which is not in the list)."""
    found = []
    for folder, dirs, files in os.walk(package):
        dirs.sort()
        for name in (*dirs, *sorted(f for f in files if f.endswith((".py", ".pyc")))):
            path = Path(folder, name)
            found.append((path, os.lstat(path)))
    return found


def check_code(package: Path = PACKAGE) -> None:
    """The code that runs as root, and the interpreter running it, must be root's alone."""
    check_root_owned(os.path.realpath(sys.executable), "interpreter")
    check_root_owned(str(package), "code")  # the package folder and every folder above it
    for path, st in _code_files(package):
        if stat.S_ISLNK(st.st_mode):
            check_root_owned(str(path), "code")  # where it leads, all the way up
        elif st.st_uid != 0:
            raise ConfigError(f"code {path}: {path} is owned by uid {st.st_uid}, not root")
        elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ConfigError(f"code {path}: {path} is writable by group or others")


def check_readable(package: Path = PACKAGE) -> None:
    """A user side can load the interpreter's library and the package (others may read).

    Python lists a folder before it imports from it, so the folders that hold
    modules need read and search, their parents search.
    """
    roots = [package, Path(os.__file__).resolve().parent]
    # found, not imported: the prober forks without lxml, and a user side loads Pillow
    # itself, after the drop (a screenshot; see privsep.Spawner), with the libraries its
    # wheel brings beside it (pillow.libs)
    for name, libs in (("lxml", None), ("PIL", "pillow.libs")):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            found = Path(spec.origin).resolve().parent
            roots.append(found)
            if libs is not None and (found.parent / libs).is_dir():
                roots.append(found.parent / libs)
    for root in roots:
        for parent in root.parents:
            _readable(parent, stat.S_IXOTH, "folder")
    entries = [(root, os.stat(root)) for root in roots]
    for path, st in (*entries, *_code_files(package)):
        folder = stat.S_ISDIR(st.st_mode)
        _readable(path, stat.S_IROTH | (stat.S_IXOTH if folder else 0),
                  "folder" if folder else "file", st.st_mode)


def _readable(path: Path, need: int, kind: str, mode: int | None = None) -> None:
    if mode is None:
        mode = os.stat(path).st_mode
    if mode & need != need:
        raise UnsafeInstall(
            f"{kind} {path} is not readable by unprivileged users (mode "
            f"{stat.S_IMODE(mode):04o}); wirt's user sides run as the user and could "
            "not load their code: install wirt and its Python where others may read "
            "(deploy/install.sh uses /opt/wirt)")


def prepare(what: str, module: str | None, argv: list[str] | None, *,
            hint: str = "run it as root") -> None:
    """The start-up checks of a root entry point; raises the WirtError that says what is wrong.

    With *module*, an interpreter not run isolated is replaced by one that is
    (``python -I -m MODULE``, same arguments, clean environment) before
    anything else.  ``virsh_wrapper`` and ``wirt-audit`` pass None: they are
    installed as scripts that run ``python -I`` already (deploy/), and the
    test suite runs them through pip's scripts with a preloaded fake clock.
    """
    scrub_environment()
    if os.geteuid() != 0:
        raise NotRootError(f"{what} must run as root: {hint}")
    if module is not None and not sys.flags.isolated:
        check_root_owned(os.path.realpath(sys.executable), "interpreter")
        args = sys.argv[1:] if argv is None else argv
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-I", "-m", module, *args])  # noqa: S606
    check_code()
    check_readable()
