"""``wirt-migrate-legacy``: move a user's legacy spool to the wirt layout (runs as that user).

No privilege at all: a user runs it as themselves, on their own home (taken
from the passwd database, not from ``$HOME``); run as root it refuses, since
root would leave root-owned folders in a home.  It distrusts what it finds
as the pass does: folders are opened through :mod:`userfs` (no symlink is
followed, every folder must be the user's), and it never overwrites: each
move is one ``renameat2(RENAME_NOREPLACE)``, so an entry whose new name is
taken stays where it is, and the legacy layout keeps serving it.

    ~/virsh/dom-<vm>/<file>   ->  ~/wirt/service/vm/<vm>/<file>   (pending commands, mtimes kept)
    ~/virsh/history/<entry>   ->  ~/wirt/logs/history/<entry>
    ~/virsh/log/<entry>       ->  ~/wirt/logs/legacy/<entry>

Left where they are, and listed: symbolic links, FIFOs, sockets, devices,
entries owned by someone else, anything else in ``~/virsh``.  The folders the
old script made as root (``log``, ``history``, or the ``*.virsh-wrapper``
names a pass renamed them to) cannot be moved by the user: they stay, are
named, and only the admin can remove them; they do not count as a failure.
"""

from __future__ import annotations

import argparse
import os
import pwd
import stat
import sys

from wirt_wrapper.rules.actions import VM_NAME
from wirt_wrapper.rules.errors import EXIT_AS_ROOT, EXIT_KEPT, EXIT_OK
from wirt_wrapper.rules.layouts import LEGACY, SET_ASIDE, WIRT
from wirt_wrapper.user import fs as userfs
from wirt_wrapper.user.fs import Unsafe

__all__ = ["main"]

LEGACY_LOGS = ("wirt", "logs", "legacy")
LIMIT = 100_000


def shown(parts: tuple[str, ...], *more: str) -> str:
    """A path under the home, escaped for the terminal (names are the user's, or planted)."""
    return LEGACY.shown(*parts, *more)


class Migration:
    def __init__(self, home: int, uid: int, dry_run: bool) -> None:
        self.home = home
        self.uid = uid
        self.dry_run = dry_run
        self.moved = 0
        self.kept = 0
        self.roots = 0

    def keep(self, where: str, why: str) -> None:
        self.kept += 1
        print(f"kept {where}: {why}")

    def run(self) -> int:
        try:
            spool = userfs.walk(self.home, LEGACY.spool, self.uid)
        except FileNotFoundError:
            print(f"nothing to migrate: there is no {shown(LEGACY.spool)}")
            return EXIT_OK
        except (Unsafe, OSError) as exc:
            print(f"wirt-migrate-legacy: {exc}; nothing was moved", file=sys.stderr)
            return EXIT_KEPT
        try:
            entries, truncated = userfs.list_dir(spool, LIMIT)
            for name, st in sorted(entries):
                vm = LEGACY.vm_of(name)
                if name.removesuffix(SET_ASIDE) in LEGACY.made_by_root and st.st_uid == 0 \
                        and stat.S_ISDIR(st.st_mode):
                    self.roots += 1
                    print(f"left {shown(LEGACY.spool, name)}: the old virsh-wrapper made it as "
                          "root; you can read it, only the admin can remove it")
                elif name == "history":
                    self.folder(spool, name, st, WIRT.history)
                elif name == "log":
                    self.folder(spool, name, st, LEGACY_LOGS)
                elif vm is not None and VM_NAME.fullmatch(vm):
                    self.folder(spool, name, st, (*WIRT.spool, vm))
                else:
                    self.keep(shown(LEGACY.spool, name), "not a dom-<vm> folder, log or history")
            if truncated:
                self.keep(shown(LEGACY.spool), f"more than {LIMIT} entries: run me again")
        finally:
            os.close(spool)
        if not self.dry_run and not self.kept:
            self._rmdir(self.home, LEGACY.spool[0])
        verb = "would move" if self.dry_run else "moved"
        print(f"{verb} {self.moved} entries; {self.kept} left where they are"
              + (f"; {self.roots} folders of root's left" if self.roots else ""))
        return EXIT_KEPT if self.kept else EXIT_OK

    def folder(self, parent: int, name: str, st: os.stat_result,
               target: tuple[str, ...]) -> None:
        where = shown(LEGACY.spool, name)
        if not stat.S_ISDIR(st.st_mode):
            self.keep(where, f"is {userfs.kind_of(st.st_mode)}, not a folder")
            return
        try:
            src = userfs.open_dir(parent, name, self.uid)
        except (Unsafe, OSError) as exc:
            self.keep(where, str(exc))
            return
        try:
            entries, truncated = userfs.list_dir(src, LIMIT)
            if truncated:
                self.keep(where, f"more than {LIMIT} entries: run me again for the rest")
            dst = self._target(target) if entries else None
            for entry, est in sorted(entries, key=lambda item: (item[1].st_mtime_ns, item[0])):
                self.entry(src, entry, est, dst, where, target)
        except (Unsafe, OSError) as exc:
            self.keep(where, f"cannot move into {shown(target)}: {exc}")
        finally:
            os.close(src)
        if not self.dry_run:
            self._rmdir(parent, name)

    def _target(self, parts: tuple[str, ...]) -> int | None:
        """The target folder (created unless dry-run; None if dry-run and missing)."""
        try:
            return userfs.walk(self.home, parts, self.uid, create=not self.dry_run)
        except FileNotFoundError:
            if self.dry_run:
                return None
            raise

    def entry(self, src: int, name: str, st: os.stat_result, dst: int | None,
              where: str, target: tuple[str, ...]) -> None:
        old, new = f"{where}/{name}", shown(target, name)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            self.keep(old, f"is {userfs.kind_of(st.st_mode)}")
            return
        if st.st_uid != self.uid:
            self.keep(old, f"is owned by uid {st.st_uid}, not by you")
            return
        if self.dry_run:
            taken = dst is not None and _exists(dst, name)
            if taken:
                self.keep(old, f"{new} exists already")
            else:
                self.moved += 1
                print(f"would move {old} -> {new}")
            return
        if dst is None:  # cannot happen outside a dry run: the folder was created
            self.keep(old, f"{shown(target)} is missing")
            return
        try:
            userfs.move_noreplace(src, name, dst, name)
        except FileExistsError:
            self.keep(old, f"{new} exists already (nothing is overwritten)")
            return
        except FileNotFoundError:
            return  # gone meanwhile: a pass took it, and it has its outcome there
        self.moved += 1
        print(f"moved {old} -> {new}")

    def _rmdir(self, parent: int, name: str) -> None:
        try:
            os.rmdir(name, dir_fd=parent)
        except OSError:
            pass  # not empty: something was kept, and said so


def _exists(parent: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="wirt-migrate-legacy",
        description="Move your legacy ~/virsh/dom-<vm> folders, with their pending commands, "
        "history and logs, to the wirt layout (~/wirt/...). Run it as yourself. Nothing is "
        "overwritten; what cannot be moved stays where it is and is listed.",
    )
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be moved, change nothing")
    args = parser.parse_args(argv)
    uid = os.getuid()
    if uid == 0 or os.geteuid() == 0:
        print("wirt-migrate-legacy: run me as the user whose folders these are, not as root",
              file=sys.stderr)
        return EXIT_AS_ROOT
    home = pwd.getpwuid(uid).pw_dir
    os.umask(0o077)
    home_fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return Migration(home_fd, uid, args.dry_run).run()
    finally:
        os.close(home_fd)


if __name__ == "__main__":
    sys.exit(main())
