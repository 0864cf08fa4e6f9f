"""The caller's own spool, for the ``wirt`` CLI (runs as the user; no privilege).

It distrusts the tree it works in as much as the pass does: a co-member may
have planted links or files if the user made folders group-writable.  Every
path is walked from the home's descriptor with ``O_NOFOLLOW`` at each step and
every file is judged on its descriptor (:mod:`userfs`).  A command is written
under a dot-name, which the pass ignores, and renamed into place without ever
replacing an existing entry.  The home is the password database's, not
``$HOME``: that is the folder the pass serves.

Finding a command's outcome: the pass moves the file into history (same
inode) and then appends one line to the VM's log naming that history entry
(``... (file start, kept as ~/wirt/logs/history/NAME) [id]``).  So: remember
the inode written, wait until it leaves the spool, find it in history by
inode, then wait for the log line that names that history entry.
"""

from __future__ import annotations

import gzip
import os
import pwd
import re
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from wirt_wrapper.rules import logline
from wirt_wrapper.rules import settings as settings_rules
from wirt_wrapper.rules import status as status_xml
from wirt_wrapper.rules import vms as vms_rules
from wirt_wrapper.rules.actions import Rejection, check_vm_name
from wirt_wrapper.rules.errors import NotAllowed, NotFound, Pending, UsageError
from wirt_wrapper.rules.layouts import CHECKED_FILE, LEGACY, STATUS_FILE, WIRT, Layout, safe_token
from wirt_wrapper.rules.spool import COMMAND, ODD, VM, in_spool, in_vm_folder
from wirt_wrapper.user import fs as userfs
from wirt_wrapper.user.fs import Unsafe
from wirt_wrapper.user.logs import generation

__all__ = ["Home", "Outcome", "VmRef", "Written"]

ORDER: tuple[Layout, ...] = (WIRT, LEGACY)
BY_NAME = {layout.name: layout for layout in ORDER}

STATUS_LIMIT = 64 * 1024
LOG_READ_LIMIT = 8 * 1024 * 1024
SMALL_FILE = 64 * 1024
ISOS_PARTS = ("wirt", "info")  # ~/wirt/info/isos.txt: the admin's ISO catalogue, by a pass
ISOS_FILE = "isos.txt"
ISOS_LIMIT = 1024 * 1024

@dataclass(frozen=True)
class VmRef:
    """A VM folder of the caller's, in one layout."""

    layout: Layout
    vm: str

    @property
    def folder(self) -> str:
        return self.layout.folder_of(self.vm)

    @property
    def parts(self) -> tuple[str, ...]:
        return (*self.layout.spool, self.folder)

    def shown(self, *more: str) -> str:
        return self.layout.shown(*self.parts, *more)


@dataclass(frozen=True)
class Written:
    """A command file the CLI placed; its inode follows it into history."""

    ref: VmRef
    name: str
    dev: int
    ino: int
    time: float
    log_ino: int = 0
    log_size: int = 0


@dataclass
class Outcome:
    """What became of a written command; ``outcome`` is None if there is none yet."""

    stage: str  # pending | claimed | handled | vanished
    outcome: str | None = None
    message: str = ""
    history: str | None = None
    line: str | None = None


def _unsafe(exc: Unsafe, what: str = "") -> NotAllowed:
    return NotAllowed(
        f"{what}{exc}. wirt does not follow links or use entries that are not yours; "
        "if another member planted it, remove it and make your folders private "
        "(chmod -R go-w ~/wirt)"
    )


class Home:
    """The caller's home, opened once; every path below it is walked safely."""

    def __init__(self) -> None:
        entry = pwd.getpwuid(os.getuid())
        self.user, self.uid, self.path = entry.pw_name, entry.pw_uid, entry.pw_dir
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise NotFound(f"your home {self.path} cannot be opened: {exc.strerror}") from None
        self.warnings: list[str] = []

    # -- safe access -------------------------------------------------------
    @contextmanager
    def folder(self, parts: tuple[str, ...], *, create: bool = False) -> Iterator[int]:
        """An open folder below the home; FileNotFoundError if missing, NotAllowed if unsafe."""
        try:
            fd = userfs.walk(self.fd, parts, self.uid, create=create)
        except Unsafe as exc:
            raise _unsafe(exc) from None
        except PermissionError as exc:
            raise NotAllowed(f"~/{'/'.join(parts)}: {exc.strerror}") from None
        try:
            yield fd
        finally:
            os.close(fd)

    def read_small(self, parts: tuple[str, ...], name: str, limit: int = SMALL_FILE) -> bytes:
        """A whole small file of the user's (config, status.xml); FileNotFoundError if missing."""
        with self.folder(parts) as fd:
            try:
                data, _ = userfs.read_file(fd, name, self.uid, limit)
            except Unsafe as exc:
                raise _unsafe(exc, f"~/{'/'.join((*parts, name))} ") from None
        return data

    def _read_from(self, fd: int, name: str, offset: int, limit: int) -> tuple[bytes, int, int]:
        """Bytes of *name* from *offset* (from 0 if it was replaced or shrank); ino, size."""
        handle, st = userfs.open_regular(fd, name, self.uid)
        try:
            start = offset if offset <= st.st_size else 0
            start = max(start, st.st_size - limit)
            os.lseek(handle, start, os.SEEK_SET)
            chunks = []
            left = st.st_size - start
            while left > 0:
                chunk = os.read(handle, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks), st.st_ino, st.st_size
        finally:
            os.close(handle)

    # -- VM folders ----------------------------------------------------------
    def vms(self) -> list[VmRef]:
        """Every VM folder in every layout the user has; odd entries become warnings."""
        found: list[VmRef] = []
        for layout in ORDER:
            try:
                with self.folder(layout.spool) as fd:
                    entries, _ = userfs.list_dir(fd, 10_000)
            except FileNotFoundError:
                continue
            except NotAllowed as exc:
                self.warnings.append(str(exc))
                continue
            for name, st in sorted(entries):
                entry = in_spool(layout, name, st.st_mode)
                where = layout.shown(*layout.spool, name)
                if entry.kind == ODD and layout.vm_of(name) is not None:
                    self.warnings.append(f"{where}: ignored (and by the pass): {entry.problem}")
                elif entry.kind != VM or entry.vm is None:
                    continue
                elif st.st_uid != self.uid:
                    self.warnings.append(f"{where} belongs to uid {st.st_uid}, not you: ignored")
                else:
                    found.append(VmRef(layout, entry.vm))
        return found

    def has_spool(self) -> bool:
        for layout in ORDER:
            try:
                with self.folder(layout.spool):
                    return True
            except (FileNotFoundError, NotAllowed):
                continue
        return False

    def find(self, vm: str, layout: str | None = None) -> VmRef:
        """The user's folder for *vm* (wirt layout first); clear errors if there is none."""
        try:
            check_vm_name(vm)
        except Rejection as exc:
            raise UsageError(str(exc)) from None
        layouts = [BY_NAME[layout]] if layout else list(ORDER)
        for candidate in layouts:
            ref = VmRef(candidate, vm)
            try:
                with self.folder(ref.parts):
                    return ref
            except FileNotFoundError:
                continue
        looked = " and ".join(VmRef(c, vm).shown() for c in layouts)
        if not self.has_spool():
            raise NotFound(
                f"you have no wirt spool yet ({WIRT.shown(*WIRT.spool)} does not exist); "
                f"create the VM's folder with: wirt create {vm}"
            )
        mine = ", ".join(sorted({r.vm for r in self.vms()})) or "none"
        raise NotFound(
            f"unknown VM '{vm}': there is no {looked}. Your VMs: {mine}. "
            f"To add it: wirt create {vm} (the admin must give you its libvirt domain)"
        )

    def create(self, vm: str, layout: str = "wirt") -> tuple[VmRef, bool]:
        """Make the VM's folder (and the spool above it), private (0700); (ref, created)."""
        try:
            check_vm_name(vm)
        except Rejection as exc:
            raise UsageError(str(exc)) from None
        ref = VmRef(BY_NAME[layout], vm)
        with self.folder(ref.layout.spool, create=True) as spool:
            try:
                os.mkdir(ref.folder, 0o700, dir_fd=spool)
                created = True
            except FileExistsError:
                created = False
            try:
                fd = userfs.open_dir(spool, ref.folder, self.uid)
            except Unsafe as exc:
                raise _unsafe(exc, f"{ref.shown()} ") from None
            try:
                self._check_private(fd, ref.shown())
            finally:
                os.close(fd)
        return ref, created

    def _check_private(self, fd: int, where: str) -> None:
        mode = os.fstat(fd).st_mode
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            self.warnings.append(
                f"{where} is writable by others (mode {stat.S_IMODE(mode):04o}): other "
                f"members can drop files there (the pass rejects them); chmod go-w {where}"
            )

    def pending(self, ref: VmRef) -> list[str]:
        """Command files waiting in the VM folder (names only; dot-files and config skipped)."""
        try:
            with self.folder(ref.parts) as fd:
                entries, _ = userfs.list_dir(fd, 1000)
        except FileNotFoundError:
            return []
        return sorted(name for name, st in entries
                      if in_vm_folder(ref.folder, name, st.st_mode).kind == COMMAND)

    # -- writing a command ---------------------------------------------------
    def write(self, ref: VmRef, name: str, content: str) -> Written:
        """Place command file *name* atomically (0600), never over an existing one."""
        log_ino = log_size = 0
        if ref.layout.info is not None:
            log_ino, log_size = self._log_mark(ref)
        with self.folder(ref.parts) as fd:
            self._check_private(fd, ref.shown())
            try:
                st = userfs.place_file(fd, name, content.encode("ascii"))
            except FileExistsError:
                raise self._in_the_way(fd, ref, name) from None
            except Unsafe as exc:
                raise _unsafe(exc, f"{ref.shown(name)} ") from None
        return Written(ref, name, st.st_dev, st.st_ino, time.time(), log_ino, log_size)

    def _in_the_way(self, fd: int, ref: VmRef, name: str) -> Exception:
        where = ref.shown(name)
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return Pending(f"{where} appeared meanwhile; try again")
        if not stat.S_ISREG(st.st_mode) or st.st_uid != self.uid:
            what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else (
                "not a regular file" if not stat.S_ISREG(st.st_mode) else
                f"owned by uid {st.st_uid}, not you")
            return NotAllowed(
                f"{where} exists and is {what}: another member may have planted it. "
                "It was left alone; remove it, and chmod go-w the folder"
            )
        return Pending(
            f"a '{name}' command for VM '{ref.vm}' is already waiting for the next pass "
            f"({where}); nothing was written. Follow it with: wirt log {ref.vm} -f, "
            f"or take it back with: wirt cancel {ref.vm} {name}"
        )

    # -- taking a command back -------------------------------------------------
    def cancel(self, ref: VmRef, name: str) -> str:
        """Move the pending command file *name* to history, as the user; a log line says so.

        Never a file that is not the user's own regular file; never over an existing
        history entry.  Returns the history entry as shown to the user.
        """
        layout = ref.layout
        with self.folder(ref.parts) as vm_fd:
            try:
                st = os.stat(name, dir_fd=vm_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise NotFound(f"no '{name}' command is waiting for VM '{ref.vm}' "
                               f"({ref.shown(name)}): nothing to take back") from None
            if not stat.S_ISREG(st.st_mode) or st.st_uid != self.uid:
                raise self._in_the_way(vm_fd, ref, name)
            stamp = layout.stamp(time.time_ns())
            with self.folder(layout.history, create=True) as hist_fd:
                for _ in range(5):  # a pass may take a name at the same moment: another one
                    hist = userfs.free_name(hist_fd, layout.history_base(stamp, ref.vm, name,
                                                                         self.user))
                    try:
                        userfs.move_noreplace(vm_fd, name, hist_fd, hist)
                        break
                    except FileExistsError:
                        continue
                    except FileNotFoundError:
                        raise NotFound(f"{ref.shown(name)} is gone: a pass took it meanwhile "
                                       f"(see wirt log {ref.vm})") from None
                else:
                    raise Pending("history names kept changing under wirt; try again")
        shown = layout.shown(*layout.history, hist)
        line = logline.render(stamp=logline.now_text(), vm=ref.vm, action=name, params="",
                              outcome=logline.CANCELLED, message="taken back with wirt cancel",
                              file=name, history=shown, cid=f"cancel-{time.time_ns():x}")
        self._append_log(ref, name, stamp, line)
        return shown

    def _append_log(self, ref: VmRef, name: str, stamp: str, line: str) -> None:
        layout = ref.layout
        try:
            with self.folder(layout.logs, create=True) as fd:
                if layout.per_command_log:  # legacy: one new file per command
                    stem, ext = os.path.splitext(layout.log_name(stamp, ref.vm, name,
                                                                 self.user))
                    _, handle = userfs.create_new(fd, stem, suffix=ext)
                    try:
                        os.write(handle, line.encode("ascii", "backslashreplace"))
                    finally:
                        os.close(handle)
                else:
                    userfs.append_line(fd, self._log_name(ref), line, self.uid)
        except (Unsafe, OSError, NotAllowed) as exc:
            self.warnings.append(f"the command was taken back, but its log line could not be "
                                 f"written: {exc}")

    def _log_mark(self, ref: VmRef) -> tuple[int, int]:
        try:
            with self.folder(ref.layout.logs) as fd:
                st = os.stat(self._log_name(ref), dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, NotAllowed):
            return 0, 0
        return st.st_ino, st.st_size

    @staticmethod
    def _log_name(ref: VmRef) -> str:
        return f"{ref.vm}.log"

    # -- waiting for the outcome ---------------------------------------------
    def wait(self, written: Written, timeout: float,
             tick: Callable[[str, float], None] | None = None,
             interval: float = 0.2) -> Outcome:
        """Poll until the pass has logged the command's outcome, or *timeout* seconds pass."""
        started = time.monotonic()
        result = Outcome("pending")
        gone_since: float | None = None
        while True:
            now = time.monotonic()
            if result.history is None:
                if self._still_pending(written):
                    gone_since = None
                else:
                    result.stage = "claimed"
                    result.history = self._history_of(written)
                    if result.history is None:
                        gone_since = gone_since or now
                        if now - gone_since > 3.0:
                            result.stage = "vanished"
                            return result
            if result.history is not None:
                line = self._log_line(written, result.history)
                if line is not None:
                    record = logline.parse(line) or {}
                    result.stage = "handled"
                    result.line = line
                    result.outcome = record.get("outcome") or _outcome_word(line)
                    result.message = record.get("message", "")
                    return result
            if now - started >= timeout:
                return result
            if tick is not None:
                tick(result.stage, now - started)
            time.sleep(interval)

    def _still_pending(self, written: Written) -> bool:
        try:
            with self.folder(written.ref.parts) as fd:
                st = os.stat(written.name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == (written.dev, written.ino)

    def _history_of(self, written: Written) -> str | None:
        """The history entry holding our inode (the pass renames, so the inode stays)."""
        layout = written.ref.layout
        try:
            with self.folder(layout.history) as fd, os.scandir(fd) as it:
                for entry in it:
                    if entry.inode() != written.ino:
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if st.st_dev == written.dev and stat.S_ISREG(st.st_mode):
                        return layout.shown(*layout.history, entry.name)
        except FileNotFoundError:
            return None
        return None

    def _log_line(self, written: Written, history: str) -> str | None:
        """The log line that names *history*, or None if it is not written yet."""
        needle = f"(file {written.name}, kept as {history}) ["

        def find(text: str) -> str | None:
            for line in text.splitlines():
                if needle in line and line.rstrip().endswith("]"):
                    return line
            return None

        ref = written.ref
        try:
            with self.folder(ref.layout.logs) as fd:
                if ref.layout.info is None:
                    for name in self._legacy_logs(fd, ref, since=written.time - 5):
                        try:
                            data, _, _ = self._read_from(fd, name, 0, SMALL_FILE)
                        except (FileNotFoundError, Unsafe):
                            continue
                        if (line := find(data.decode("utf-8", "replace"))) is not None:
                            return line
                    return None
                name = self._log_name(ref)
                try:
                    data, ino, _ = self._read_from(fd, name, written.log_size, LOG_READ_LIMIT)
                    if ino != written.log_ino:
                        data, _, _ = self._read_from(fd, name, 0, LOG_READ_LIMIT)
                except FileNotFoundError:
                    data, ino = b"", 0
                except Unsafe as exc:
                    raise _unsafe(exc, f"{ref.layout.shown(*ref.layout.logs, name)} ") from None
                if (line := find(data.decode("utf-8", "replace"))) is not None:
                    return line
                if ino != written.log_ino or not ino:
                    # rotated since the command was written: generation 1 holds the rest
                    return find(self._rotated(fd, name))
        except FileNotFoundError:
            return None
        return None

    def _legacy_logs(self, fd: int, ref: VmRef, since: float = 0.0) -> list[str]:
        """Per-command log files of *ref* (``<stamp>-<user>-dom-<vm>-<action>.log``)."""
        # stamp (no '-'), this user, this folder, the action; create_new adds -2, -3 ...
        who = re.escape(safe_token(self.user))
        pattern = re.compile(rf"[^-]+-{who}-{re.escape(ref.folder)}-[^-]+(?:-[0-9]+)?\.log")
        names = []
        with os.scandir(fd) as it:
            for entry in it:
                if pattern.fullmatch(entry.name):
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode) and st.st_mtime >= since:
                        names.append((st.st_mtime, entry.name))
        return [name for _, name in sorted(names)]

    # -- the VM's settings file ------------------------------------------------
    def read_config(self, ref: VmRef) -> bytes | None:
        """The VM folder's ``config`` (safe path: no link, yours, one link); None if absent."""
        try:
            return self.read_small(ref.parts, settings_rules.FILE)
        except FileNotFoundError:
            return None

    def write_config(self, ref: VmRef, data: bytes) -> None:
        """Replace ``config`` atomically: a fresh ``.config.new`` (0600), renamed over it.

        The rename replaces the name; nothing is ever written through an entry
        that is there (a pass reads the old file or the new one, never a part).
        """
        with self.folder(ref.parts) as fd:
            self._check_private(fd, ref.shown())
            try:
                userfs.check_entry(fd, settings_rules.FILE, self.uid)
                userfs.replace_file(fd, settings_rules.FILE, data, 0o600)
            except Unsafe as exc:
                raise _unsafe(exc, f"{ref.shown(settings_rules.FILE)} ") from None

    def owned(self) -> list[dict[str, Any]] | None:
        """The domains ~/wirt/info/vms.json says the user owns (a pass writes it), with
        their VM folder and state; None if there is none (yet) or it is unreadable."""
        try:
            data = self.read_small(ISOS_PARTS, vms_rules.FILE, vms_rules.MAX_BYTES)
        except FileNotFoundError:
            return None
        except NotAllowed as exc:
            self.warnings.append(str(exc))
            return None
        try:
            return vms_rules.parse(data)
        except ValueError as exc:
            self.warnings.append(f"~/{'/'.join(ISOS_PARTS)}/{vms_rules.FILE}: ignored: {exc}")
            return None

    def isos(self) -> list[str] | None:
        """The ISO names of ~/wirt/info/isos.txt (a pass writes it); None if not published."""
        try:
            data = self.read_small(ISOS_PARTS, ISOS_FILE, ISOS_LIMIT)
        except FileNotFoundError:
            return None
        names = []
        for line in data.decode("ascii", "replace").splitlines():
            name = line.strip()
            if not name or name.startswith("#"):
                continue
            if settings_rules.ISO_NAME.fullmatch(name):
                names.append(name)
            else:
                self.warnings.append(f"~/{'/'.join(ISOS_PARTS)}/{ISOS_FILE}: ignored a line "
                                     "that is not an ISO name")
        return names

    def last_config(self, ref: VmRef) -> dict[str, str] | None:
        """The last outcome of the settings file in status.xml (None: none, or no status)."""
        found = (self.status(ref) or {}).get("last_config")
        return found if isinstance(found, dict) else None

    def wait_config(self, ref: VmRef, before: dict[str, str] | None, timeout: float,
                    tick: Callable[[str, float], None] | None = None,
                    interval: float = 0.2) -> dict[str, str] | None:
        """Poll status.xml until its ``<last-config>`` differs from *before*; None on timeout."""
        started = time.monotonic()
        while True:
            now = time.monotonic()
            current = self.last_config(ref)
            if current is not None and current != before:
                return current
            if now - started >= timeout:
                return None
            if tick is not None:
                tick("pending", now - started)
            time.sleep(interval)

    # -- reading results -------------------------------------------------------
    def status(self, ref: VmRef) -> dict[str, Any] | None:
        """The VM's status.xml, parsed; None if the layout has none or no pass wrote it yet."""
        info = ref.layout.info
        if info is None:
            return None
        try:
            data = self.read_small((*info, ref.vm), STATUS_FILE, STATUS_LIMIT)
        except FileNotFoundError:
            return None
        try:
            return status_xml.parse(data)
        except ValueError as exc:
            self.warnings.append(f"{ref.layout.shown(*info, ref.vm, STATUS_FILE)}: {exc}")
            return None

    def checked(self, ref: VmRef) -> float | None:
        """When a later pass found the layout's status.xml files current: the time of
        ``~/wirt/info/status-checked`` (a pass sets it to when it read libvirt); None if
        there is none."""
        info = ref.layout.info
        if info is None:
            return None
        try:
            with self.folder(info[:-1]) as fd:
                handle, st = userfs.open_regular(fd, CHECKED_FILE, self.uid)
                os.close(handle)
        except (FileNotFoundError, NotAllowed, Unsafe):
            return None
        return st.st_mtime

    def as_of(self, ref: VmRef, status: dict[str, Any] | None) -> float | None:
        """The time the state in *status* is known to hold: when it was read (status.xml),
        or when a later pass confirmed it unchanged (status-checked), whichever is later."""
        if status is None:
            return None
        times = [t for t in (status.get("read_at"), self.checked(ref)) if t is not None]
        return max(times) if times else None

    def info_file(self, ref: VmRef, name: str, limit: int) -> bytes:
        """A file a pass wrote in the VM's info folder (console.json, screen.png, serial.log);
        FileNotFoundError if missing (or the layout has no info folder)."""
        info = ref.layout.info
        if info is None:
            raise FileNotFoundError(name)
        return self.read_small((*info, ref.vm), name, limit)

    def log_lines(self, ref: VmRef, count: int) -> list[str]:
        """The last *count* lines of the VM's log and its newest rotated generation (0: all)."""
        lines = self._log_text(ref, rotated=True).splitlines()
        return lines[-count:] if count else lines

    def _rotated(self, fd: int, name: str) -> str:
        """Generation 1 of a rotated log (``web.log.1.gz``), or "" if there is none usable."""
        try:
            handle, _ = userfs.open_regular(fd, generation(name, 1), self.uid)
        except (FileNotFoundError, Unsafe):
            return ""
        try:
            with os.fdopen(handle, "rb") as raw, gzip.GzipFile(fileobj=raw) as packed:
                data = packed.read(LOG_READ_LIMIT)
        except (OSError, EOFError):
            return ""
        return data.decode("utf-8", "replace")

    def _log_text(self, ref: VmRef, *, rotated: bool = False) -> str:
        try:
            with self.folder(ref.layout.logs) as fd:
                if ref.layout.info is not None:
                    name = self._log_name(ref)
                    older = self._rotated(fd, name) if rotated else ""
                    try:
                        data, _, _ = self._read_from(fd, name, 0, LOG_READ_LIMIT)
                    except FileNotFoundError:
                        return older
                    except Unsafe as exc:
                        raise _unsafe(exc, f"{ref.layout.shown(*ref.layout.logs)}/ ") from None
                    return older + data.decode("utf-8", "replace")
                parts = []
                for name in self._legacy_logs(fd, ref)[-200:]:
                    try:
                        data, _, _ = self._read_from(fd, name, 0, SMALL_FILE)
                    except (FileNotFoundError, Unsafe):
                        continue
                    text = data.decode("utf-8", "replace").rstrip("\n")
                    parts.append(f"{name}: {text}" if "\n" not in text else f"{name}:\n{text}")
                return "\n".join(parts) + ("\n" if parts else "")
        except FileNotFoundError:
            return ""

    def follow(self, ref: VmRef, interval: float = 0.5) -> Iterator[str]:
        """New log text as it arrives (``tail -f``); starts at the current end."""
        seen = self._log_text(ref)
        while True:
            time.sleep(interval)
            text = self._log_text(ref)
            # rotated or truncated: show it all again
            new = text[len(seen):] if text.startswith(seen) else text
            if new:
                yield new
            seen = text

    def history(self, vm: str | None) -> list[dict[str, str]]:
        """Handled commands, oldest first, from the logs (wirt) and history (legacy)."""
        records: list[dict[str, str]] = []
        refs = [r for r in self.vms() if vm is None or r.vm == vm]
        if vm is not None and not any(r.layout is WIRT for r in refs):
            refs.append(VmRef(WIRT, vm))  # its log may outlive the folder
        seen: set[str] = set()
        for ref in refs:
            if ref.layout is WIRT and ref.vm not in seen:
                seen.add(ref.vm)
                for line in self.log_lines(ref, 0):
                    record = logline.parse(line)
                    if record is not None:
                        records.append({"layout": ref.layout.name, **record})
        if vm is None:
            records += self._orphan_logs(seen)
        records += self._legacy_history(vm)
        records.sort(key=lambda r: r.get("time", ""))
        return records

    def _orphan_logs(self, seen: set[str]) -> list[dict[str, str]]:
        """Logs of wirt VMs whose folder is gone."""
        records: list[dict[str, str]] = []
        try:
            with self.folder(WIRT.logs) as fd:
                names = sorted(n for n in os.listdir(fd) if n.endswith(".log"))
        except (FileNotFoundError, NotAllowed):
            return records
        for name in names:
            vm = name[: -len(".log")]
            if vm in seen:
                continue
            try:
                check_vm_name(vm)
            except Rejection:
                continue
            for line in self.log_lines(VmRef(WIRT, vm), 0):
                record = logline.parse(line)
                if record is not None:
                    records.append({"layout": WIRT.name, **record})
        return records

    def _legacy_history(self, vm: str | None) -> list[dict[str, str]]:
        """Legacy history entries, named ``<stamp>-dom-<vm>-<action>`` or ``ERRORFILE-<stamp>``."""
        layout = LEGACY
        try:
            with self.folder(layout.history) as fd:
                names = sorted(os.listdir(fd))
        except (FileNotFoundError, NotAllowed):
            return []
        outcomes = self._legacy_outcomes()
        records = []
        for name in names:
            shown = layout.shown(*layout.history, name)
            match = re.fullmatch(r"(?P<stamp>.+?)-dom-(?P<vm>.+)-(?P<action>[^-]+?)(?:-\d+)?",
                                 name)
            if match:
                rec_vm, action, stamp = match["vm"], match["action"], match["stamp"]
            elif name.startswith("ERRORFILE-"):
                rec_vm, action, stamp = "", "", name[len("ERRORFILE-"):]
            else:
                continue
            if vm is not None and rec_vm != vm:
                continue
            known = outcomes.get(shown, {})
            records.append({
                "layout": layout.name, "time": known.get("time", stamp), "vm": rec_vm,
                "action": known.get("action", action), "params": known.get("params", ""),
                "outcome": known.get("outcome", "rejected" if not rec_vm else ""),
                "message": known.get("message", ""), "file": known.get("file", ""),
                "history": shown, "id": known.get("id", ""),
            })
        return records

    def _legacy_outcomes(self) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        try:
            with self.folder(LEGACY.logs) as fd:
                names = sorted(n for n in os.listdir(fd) if n.endswith(".log"))[-2000:]
                for name in names:
                    try:
                        data, _, _ = self._read_from(fd, name, 0, SMALL_FILE)
                    except (FileNotFoundError, Unsafe, OSError):
                        continue
                    for line in data.decode("utf-8", "replace").splitlines():
                        record = logline.parse(line)
                        if record is not None:
                            found[record["history"]] = record
        except (FileNotFoundError, NotAllowed):
            pass
        return found


def _outcome_word(line: str) -> str | None:
    match = re.search(r": (done|failed|rejected|interrupted|cancelled)\b", line)
    return match.group(1) if match else None
