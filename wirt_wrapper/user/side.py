"""The user side of a pass: runs in a child that *is* the user (no privilege at all).

It distrusts everything in the home it serves: every file is reached through
:mod:`userfs`, judged, parsed with the action table, and only then offered to
the privileged side, which re-validates it.  It never talks to libvirt; it
asks root over the channel and writes what root answers back into the
user's tree, as the user.

Per command, the order is what makes "exactly one outcome" hold:
pick a free history name -> root journals the intent (with that name) ->
placeholder (O_EXCL) -> claim (rename the file over it) -> root runs it ->
the log line (appended to the VM's log, or, in the legacy layout, a new
``O_EXCL`` file per command).  A command file is never read twice, because
it has left the spool before anything happens to the VM.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from contextlib import suppress
from typing import Any

from wirt_wrapper.boundary.channel import Channel
from wirt_wrapper.rules import logline, protocol
from wirt_wrapper.rules import settings as settings_rules
from wirt_wrapper.rules import spool as spool_rules
from wirt_wrapper.rules import status as status_xml
from wirt_wrapper.rules import vms as vms_rules
from wirt_wrapper.rules.actions import Rejection, parse_command, printable
from wirt_wrapper.rules.layouts import CHECKED_FILE, LAYOUTS, SET_ASIDE, STATUS_FILE, Layout
from wirt_wrapper.rules.protocol import UserJob
from wirt_wrapper.user import fs as userfs
from wirt_wrapper.user import logs as userlogs
from wirt_wrapper.user import outputs as useroutputs
from wirt_wrapper.user.fs import Unsafe
from wirt_wrapper.user.probe import signature

__all__ = ["user_main"]

STATUS_LIMIT = 64 * 1024
ISOS_FILE = "isos.txt"  # in ~/wirt/info: the admin's ISO catalogue, for the user
PENDING = "pending"  # a settings file still to be handled (libvirt unreachable)
CHECKED_TEXT = (b"wirt: this file's modification time is when a pass last read your VMs' states "
                b"and found every status.xml current\n")
SETTINGS_HINT = 'a settings file holds one small JSON object such as {"vcpus": 2}'
# What one turn tells root (rules.protocol bounds every request; these stay inside them).
MAX_NOTICES = 2000
MESSAGE_LIMIT = 2000
LOG_TAIL = 64 * 1024


class UserSide:
    def __init__(self, chan: Channel, job: UserJob) -> None:
        self.chan = chan
        self.job = job
        self.uid = job.uid
        self.home = os.open(job.home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.notices: list[dict[str, str]] = []
        self.unlisted = 0  # notices past MAX_NOTICES
        self.logged: list[str] = []
        self.last: dict[tuple[str, str], dict[str, str]] = {}
        self.budget = job.max_files
        self.stopped = False  # root said: leave the rest pending
        self.held: set[tuple[str, str]] = set()  # (layout, vm): root said its host is down
        self.dirs: dict[tuple[str, ...], int] = {}
        self.statuses: dict[str, dict[str, list[Any]]] = {}
        self.last_config: dict[tuple[str, str], dict[str, str]] = {}
        self.isos_written = ""  # the listing's digest once isos.txt holds it
        # when root read the states it handed over: the inventory's, or a command's read-back
        self.inventory_read = 0.0
        self.read_at: dict[tuple[str, str], float] = {}
        self.vms_written = ""  # root's digest once vms.json holds that text

    def folder(self, parts: tuple[str, ...], *, create: bool = True) -> int:
        """An output folder, walked safely once per pass and then kept open (pinned)."""
        fd = self.dirs.get(parts)
        if fd is None:
            fd = userfs.walk(self.home, parts, self.uid, create=create)
            self.dirs[parts] = fd
        return fd

    # -- talking to root -------------------------------------------------
    def ask(self, op: str, **fields: Any) -> dict[str, Any]:
        fields["op"] = op
        if self.logged:
            fields["logged"], self.logged = self.logged, []
        return self.chan.request(fields)

    def notice(self, layout: Layout, key: str, message: str) -> None:
        """Tell the user once (root remembers the key); past MAX_NOTICES, count only."""
        if len(self.notices) >= MAX_NOTICES:
            self.unlisted += 1
            return
        # the key whole: root keeps it as the prober's look names it (records.notice_key)
        self.notices.append({"layout": layout.name, "key": key,
                             "message": message[:MESSAGE_LIMIT]})

    # -- writing results -------------------------------------------------
    def log(self, layout: Layout, entry: dict[str, Any], line: str) -> None:
        if self.job.dry_run:
            return
        vm = entry["vm"]
        if layout.per_command_log:
            self.command_log(layout, entry, line)
            return
        name = layout.log_name("", vm, "", self.job.user)
        where = layout.shown(*layout.logs, name)
        try:
            fd = self.folder(layout.logs)
            problem = self.rotate(fd, name)
            if problem:
                self.notice(layout, f"rotate:{vm}", f"{where} is over "
                            f"{self.job.log_max_bytes} bytes but cannot be rotated: "
                            f"{layout.shown(*layout.logs, problem)}")
            userfs.append_line(fd, name, line, self.uid)
        except (Unsafe, OSError) as exc:
            self.notice(layout, f"log:{vm}", f"{where}: cannot write the log of VM '{vm}': "
                        f"{_why(exc)}; make it a regular file of yours, or remove it")

    def command_log(self, layout: Layout, entry: dict[str, Any], line: str) -> None:
        """Legacy: one new file per command, never an existing one (so never rotated)."""
        stem, ext = os.path.splitext(self.command_log_name(layout, entry))
        try:
            name, fd = userfs.create_new(self.folder(layout.logs), stem, suffix=ext)
            try:
                os.write(fd, line.encode("utf-8", "backslashreplace"))
            finally:
                os.close(fd)
        except (Unsafe, OSError) as exc:
            vm = entry["vm"]
            self.notice(layout, f"log:{vm}", f"{layout.shown(*layout.logs)}: cannot write "
                        f"the log of VM '{vm}': {_why(exc)}")

    def command_log_name(self, layout: Layout, entry: dict[str, Any]) -> str:
        """A per-command log's first-choice name: the stamp of its history name."""
        stamp = (entry.get("stamp") or layout.stamp_of(entry["hist"])
                 or layout.stamp(time.time_ns()))
        return layout.log_name(stamp, entry["vm"], entry["file"], self.job.user)

    def rotate(self, fd: int, name: str) -> str | None:
        """Rotate log *name* if it grew past the limit; the problem, if any, as text."""
        try:
            userlogs.rotate_if_large(fd, name, self.uid, self.job.log_max_bytes,
                                     self.job.log_keep)
        except (Unsafe, OSError) as exc:
            return _why(exc)
        return None

    def general(self, layout: Layout, lines: list[str]) -> None:
        *folder, name = layout.general_log
        try:
            with userfs.opened(self.home, tuple(folder), self.uid, create=True) as fd:
                self.rotate(fd, name)  # too late for a notice: root's audit log has the lines
                userfs.append_line(fd, name, "".join(lines), self.uid)
        except (Unsafe, OSError):
            pass  # nowhere left to tell the user; root's audit log has it

    def logged_already(self, layout: Layout, entry: dict[str, Any]) -> bool:
        marker = f"[{entry['id']}]".encode()
        try:
            with userfs.opened(self.home, layout.logs, self.uid) as fd:
                if not layout.per_command_log:
                    name = layout.log_name("", entry["vm"], "", self.job.user)
                    return marker in self._tail(fd, name)
                stem, ext = os.path.splitext(self.command_log_name(layout, entry))
                for attempt in range(1, 1000):  # the names create_new tries, in order
                    if marker in self._tail(fd, userfs.numbered(stem, attempt, ext)):
                        return True
        except (Unsafe, OSError):
            pass  # the first missing name ends the search
        return False

    def _tail(self, fd: int, name: str) -> bytes:
        handle, st = userfs.open_regular(fd, name, self.uid)  # the one safe-open path
        try:
            os.lseek(handle, max(0, st.st_size - LOG_TAIL), os.SEEK_SET)
            return os.read(handle, LOG_TAIL)
        finally:
            os.close(handle)

    def write_status(self, layout: Layout, vm: str,
                     info: dict[str, Any] | None) -> list[Any] | None:
        """Write status.xml if it changed; [info digest, its lstat signature], or None."""
        if layout.info is None or info is None or self.job.dry_run:
            return None
        try:
            vm_fd = userfs.open_dir(self.folder(layout.info), vm, self.uid, create=True)
            try:
                return self._write_status(vm_fd, layout, vm, info)
            finally:
                os.close(vm_fd)
        except (Unsafe, OSError) as exc:
            where = layout.shown(*layout.info, vm, STATUS_FILE)
            self.notice(layout, f"status:{vm}", f"{where}: cannot write the status: "
                        f"{_why(exc)}; remove or rename what is in the way")
        return None

    def _write_status(self, vm_fd: int, layout: Layout, vm: str,
                      info: dict[str, Any]) -> list[Any]:
        try:
            old, _ = userfs.read_file(vm_fd, STATUS_FILE, self.uid, STATUS_LIMIT)
        except (Unsafe, OSError):
            old = b""
        old_last, old_config, old_read = status_xml.kept(old)
        last = self.last.get((layout.name, vm)) or old_last
        config = self.last_config.get((layout.name, vm)) or old_config
        # the same state and details keep the time they were first read: the file stays
        unchanged = status_xml.render(vm, info, last, config, old_read)
        if unchanged != old:
            read = self.read_at.get((layout.name, vm), self.inventory_read) or time.time()
            userfs.replace_file(vm_fd, STATUS_FILE,
                                status_xml.restamp(unchanged, old_read, status_xml.stamp(read))
                                or status_xml.render(vm, info, last, config,
                                                     status_xml.stamp(read)))
        # what lets the next pass's probe tell that nothing changed (user.probe)
        st = os.stat(STATUS_FILE, dir_fd=vm_fd, follow_symlinks=False)
        return [status_xml.info_digest(info), signature(st)]

    def write_output(self, layout: Layout, vm: str, output: Any) -> None:
        """What console, screenshot or serial produced, as info/vm/<vm>/<file>, mode 0600."""
        if layout.info is None:
            return
        name = output.get("file", "?") if isinstance(output, dict) else "?"
        where = layout.shown(*layout.info, vm, printable(str(name), 64))
        try:
            name, data = useroutputs.render(output)
            vm_fd = userfs.open_dir(self.folder(layout.info), vm, self.uid, create=True)
            try:
                userfs.replace_file(vm_fd, name, data, 0o600)
            finally:
                os.close(vm_fd)
        except useroutputs.BadOutput as exc:
            self.notice(layout, f"output:{vm}:{name}", f"{where}: not written: {exc}")
        except (Unsafe, OSError) as exc:
            self.notice(layout, f"output:{vm}:{name}", f"{where}: cannot be written: "
                        f"{_why(exc)}; remove or rename what is in the way")

    # -- recovery of commands a killed pass left in flight ----------------
    def recover(self) -> None:
        items = []
        for entry in self.job.recover:
            layout = LAYOUTS[entry["layout"]]
            claimed = False
            try:
                with userfs.opened(self.home, layout.history, self.uid) as fd:
                    st = os.stat(entry["hist"], dir_fd=fd, follow_symlinks=False)
                    claimed = st.st_ino == entry["ino"]
            except (Unsafe, OSError):
                pass
            else:
                # an empty file at a name journaled before it was made, the command never
                # claimed: most likely our placeholder, but it is in the user's home: kept
                # (nothing of the user's is deleted), and the user is told once
                if not claimed and entry.get("stage") == "intent" \
                        and stat.S_ISREG(st.st_mode) and st.st_size == 0:
                    self.left_placeholder(layout, entry)
            logged = self.logged_already(layout, entry)
            items.append({"id": entry["id"], "claimed": claimed, "logged": logged})
        reply = self.ask(protocol.RECOVERED, items=items)
        for entry in reply["write"]:
            layout = LAYOUTS[entry["layout"]]
            self.record(layout, entry)

    def left_placeholder(self, layout: Layout, entry: dict[str, Any]) -> None:
        hist = layout.shown(*layout.history, entry["hist"])
        pending = layout.shown(*layout.spool, layout.folder_of(entry["vm"]), entry["file"])
        self.notice(layout, f"placeholder:{entry['hist']}",
                    f"{hist} is an empty file left from an interrupted pass (made for "
                    f"{pending}, which was not run and stays pending); wirt keeps it, you "
                    "may remove it")

    # -- one pass over one layout ------------------------------------------
    def record(self, layout: Layout, entry: dict[str, Any]) -> None:
        """The user-visible end of a command: its log line, and status's last command."""
        params = " ".join(entry.get("tokens") or [])
        action = entry.get("action") or printable(entry["file"])
        message = entry.get("message") or ""
        stamp = logline.now_text()
        # the settings file is not moved (and not journaled): no history name
        hist = None if entry["hist"] is None else layout.shown(*layout.history, entry["hist"])
        line = logline.render(stamp=stamp, vm=entry["vm"], action=action, params=params,
                              outcome=entry["outcome"], message=message, file=entry["file"],
                              history=hist, cid=entry["id"])
        if layout.info is None and entry.get("status"):
            line += logline.state_line(entry["status"])  # no status.xml in this layout: say it here
        self.log(layout, entry, line)
        if hist is None:
            return
        self.logged.append(entry["id"])
        self.last[(layout.name, entry["vm"])] = {
            "action": action, "params": params, "outcome": entry["outcome"],
            "message": message, "time": stamp,
        }

    def process(self, layout: Layout) -> None:
        self.parents(layout)
        if layout.info is not None:
            self.write_vms(layout)  # also for a member with no spool yet
        try:
            spool = userfs.walk(self.home, layout.spool, self.uid)
        except FileNotFoundError:
            return
        except (Unsafe, OSError) as exc:
            self.notice(layout, "spool", f"{exc}; nothing in it was read")
            return
        try:
            self._process(layout, spool)
        finally:
            os.close(spool)

    def parents(self, layout: Layout) -> None:
        """Strays in the folders above the spool (a VM folder one level too high), told once."""
        for parts, expected in layout.parents:
            try:
                with userfs.opened(self.home, parts, self.uid) as fd:
                    entries, _ = userfs.list_dir(fd, self.job.max_files * 10)
            except (Unsafe, OSError):
                continue  # missing or odd: the spool's own walk says what is wrong
            for name, st in sorted(entries):
                entry = spool_rules.in_parent(layout, parts, expected, name, st.st_mode)
                if entry.kind == spool_rules.ODD:
                    self.notice(layout, entry.key,
                                f"{layout.shown(*parts, name)}: ignored: {entry.problem}")

    def set_aside(self, layout: Layout, spool: int,
                  entries: list[tuple[str, os.stat_result]]) -> None:
        """Rename the old tool's root-owned output folders aside, as the user (nothing is
        lost: they stay readable), so that new ones can be the user's own."""
        for name, st in entries:
            if name not in layout.made_by_root or st.st_uid != 0 \
                    or not stat.S_ISDIR(st.st_mode) or self.job.dry_run:
                continue
            aside = name + SET_ASIDE
            old, new = layout.shown(*layout.spool, name), layout.shown(*layout.spool, aside)
            try:  # never over an existing entry
                userfs.move_noreplace(spool, name, spool, aside)
            except OSError as exc:
                self.notice(layout, f"aside:{name}", f"{old} belongs to root (the old "
                            f"virsh-wrapper made it) and cannot be renamed to {new}: "
                            f"{_why(exc)}; commands wait until {old} is yours")
                continue
            self.notice(layout, f"aside:{name}", f"{old} belonged to root (the old "
                        f"virsh-wrapper made it): it is now {new}, still readable; "
                        f"a new {old} is yours")

    def _process(self, layout: Layout, spool: int) -> None:
        try:
            entries, truncated = userfs.list_dir(spool, self.job.max_files * 10)
        except Unsafe as exc:
            self.notice(layout, "spool", f"{layout.shown(*layout.spool)} {exc}; "
                        "nothing in it was read")
            return
        if layout.made_by_root:
            self.set_aside(layout, spool, entries)
        where = layout.shown(*layout.spool)
        if truncated:
            self.notice(layout, "spool-size", f"{where} has too many entries; only some were "
                        "read: move away what is not a VM folder")
        vms: list[tuple[str, str]] = []
        for name, st in sorted(entries):
            entry = spool_rules.in_spool(layout, name, st.st_mode)
            if entry.kind == spool_rules.ODD:
                self.notice(layout, entry.key,
                            f"{layout.shown(*layout.spool, name)}: ignored: {entry.problem}")
            elif entry.kind == spool_rules.VM and entry.vm is not None:
                vms.append((entry.vm, name))
        reply = self.ask(protocol.INVENTORY, layout=layout.name, vms=[vm for vm, _ in vms])
        if reply.get("down"):
            return  # libvirt unreachable: leave everything as it is
        infos: dict[str, Any] = reply["status"]
        handled: dict[str, str] = reply.get("configs", {})
        self.inventory_read = float(reply.get("read_at") or time.time())
        current = bool(vms)  # every status.xml now shows the state root read
        if layout.info is not None:
            self.write_isos(layout)
        for vm, folder in vms:
            info = infos.get(vm)
            try:
                vm_fd = userfs.open_dir(spool, folder, self.uid)
            except (Unsafe, OSError) as exc:
                self.notice(layout, f"vm:{folder}", f"{where}/{folder} {exc}; skipped")
                continue
            try:
                info, config = self._vm_folder(layout, vm, folder, vm_fd, info, handled.get(vm))
            finally:
                os.close(vm_fd)
            status = self.write_status(layout, vm, info)
            current = current and status is not None
            if config is not PENDING and not self.job.dry_run \
                    and (status is not None or layout.info is None):
                # what the next pass's look compares (user.probe): None where there is none
                self.statuses.setdefault(layout.name, {})[vm] = [*(status or (None, None)),
                                                                 config]
            if self.stopped:
                return
        if current and layout.info is not None and not self.job.dry_run:
            self.mark_checked(layout)

    def mark_checked(self, layout: Layout) -> None:
        """~/wirt/info/status-checked: its time is when root read the states that every
        status.xml now shows (SPEC 2c), so `wirt status` can tell their age; idle passes
        set it through the prober (user.probe.mark)."""
        if layout.info is None:
            return
        try:
            userfs.set_mtime(self.folder(layout.info[:-1]), CHECKED_FILE, self.uid,
                             int(self.inventory_read * 1e9), create=CHECKED_TEXT)
        except (Unsafe, OSError) as exc:
            where = layout.shown(*layout.info[:-1], CHECKED_FILE)
            self.notice(layout, "checked", f"{where}: cannot be updated: {_why(exc)}; "
                        "remove or rename what is in the way (wirt status cannot tell how "
                        "old the state is without it)")
    def _vm_folder(self, layout: Layout, vm: str, folder: str, vm_fd: int,
                   info: dict[str, Any] | None,
                   handled: str | None) -> tuple[dict[str, Any] | None, Any]:
        """The settings file, then the commands; (info after them, the config's signature:
        None when there is no config, PENDING when it is still to be handled)."""
        try:
            entries, _ = userfs.list_dir(vm_fd, self.job.max_files * 10)
        except Unsafe as exc:
            self.notice(layout, f"vm:{folder}", f"{layout.shown(*layout.spool, folder)} {exc}; "
                        "its commands wait")
            return info, PENDING
        config = next((st for name, st in entries if name == settings_rules.FILE), None)
        seen, result = self.settings(layout, vm, folder, vm_fd, config, handled)
        if result is not None and result.get("status"):
            info = result["status"]
            self.read_at[(layout.name, vm)] = float(result.get("read_at") or time.time())
        return self._commands(layout, vm, folder, vm_fd, entries, info), seen

    def settings(self, layout: Layout, vm: str, folder: str, vm_fd: int,
                 st: os.stat_result | None,
                 handled: str | None) -> tuple[Any, dict[str, Any] | None]:
        """Hand a new or changed settings file to root (it parses it again and applies it);
        (its signature or None or PENDING, root's answer if it was asked)."""
        if st is None:
            return None, None
        path = layout.shown(*layout.spool, folder, settings_rules.FILE)
        seen = signature(st)
        request: dict[str, Any] = {"layout": layout.name, "vm": vm}
        try:
            data, fst = userfs.read_file(vm_fd, settings_rules.FILE, self.uid,
                                         self.job.max_bytes, SETTINGS_HINT)
        except FileNotFoundError:
            return None, None
        except (Unsafe, OSError) as exc:  # told once per version of the entry
            request["digest"] = settings_rules.digest(repr(seen).encode())
            request["rejected"] = f"{path} {_why(exc)}; the settings were not applied"
        else:
            seen = signature(fst)
            request["digest"] = settings_rules.digest(data)
            try:  # judged here first; root parses the same bytes again
                settings_rules.parse(data, self.job.max_bytes)
                request["content"] = data.decode("ascii")
            except Rejection as exc:
                request["rejected"] = f"{path}: {exc}"
        if request["digest"] == handled:
            return seen, None  # this very file was handled already
        if "rejected" in request:
            request["rejected"] = request["rejected"][:MESSAGE_LIMIT]
        reply = self.ask(protocol.SETTINGS, **request)
        if reply.get("pending"):
            return PENDING, None
        if not reply.get("unchanged"):
            self.record(layout, {"layout": layout.name, "vm": vm, "file": settings_rules.FILE,
                                 "hist": None, "stamp": layout.stamp(time.time_ns()), **reply})
            self.last_config[(layout.name, vm)] = {
                "outcome": reply["outcome"], "message": reply.get("message") or "",
                "time": logline.now_text()}
        return seen, reply

    def write_isos(self, layout: Layout) -> None:
        """~/wirt/info/isos.txt: the admin's ISO catalogue, when root's listing is new to this
        user (root tells the digest it last had written here)."""
        if self.job.dry_run or self.job.isos_digest == self.job.isos_known:
            self.isos_written = self.job.isos_digest
            return
        if layout.info is None:
            return
        try:
            fd = self.folder(layout.info[:-1])
            userfs.replace_file(fd, ISOS_FILE, self.job.isos_text.encode("ascii"), 0o644)
            self.isos_written = self.job.isos_digest
        except (Unsafe, OSError) as exc:
            where = layout.shown(*layout.info[:-1], ISOS_FILE)
            self.notice(layout, "isos", f"{where}: cannot write the ISO list: {_why(exc)}; "
                        "remove or rename what is in the way")

    def write_vms(self, layout: Layout) -> None:
        """~/wirt/info/vms.json: the domains root says the user owns, when its text is new
        to this user (written whole, atomically).  An empty list makes no folder in a home
        that has none."""
        digest = self.job.vms_digest
        if not digest or self.job.dry_run or self.vms_written == digest:
            return
        if digest == self.job.vms_known:
            self.vms_written = digest
            return
        if layout.info is None:
            return
        parts = layout.info[:-1]
        empty = self.job.vms_text == vms_rules.render([])
        try:
            fd = self.folder(parts, create=not empty)
        except FileNotFoundError:
            self.vms_written = digest  # nothing to list, nowhere it is expected
            return
        except (Unsafe, OSError) as exc:
            self.notice(layout, "vms", f"{layout.shown(*parts)}: cannot write the list of "
                        f"your VMs: {_why(exc)}; remove or rename what is in the way")
            return
        try:
            userfs.replace_file(fd, vms_rules.FILE, self.job.vms_text.encode(), 0o644)
            self.vms_written = digest
        except (Unsafe, OSError) as exc:
            where = layout.shown(*parts, vms_rules.FILE)
            self.notice(layout, "vms", f"{where}: cannot write the list of your VMs: "
                        f"{_why(exc)}; remove or rename what is in the way")

    def _commands(self, layout: Layout, vm: str, folder: str, vm_fd: int,
                  entries: list[tuple[str, os.stat_result]],
                  info: dict[str, Any] | None) -> dict[str, Any] | None:
        files = []
        for name, st in entries:
            entry = spool_rules.in_vm_folder(folder, name, st.st_mode)
            if entry.kind == spool_rules.ODD:
                self.notice(layout, entry.key, f"{layout.shown(*layout.spool, folder, name)}: "
                            f"ignored: {entry.problem}")
            elif entry.kind == spool_rules.COMMAND:
                files.append((st.st_mtime_ns, name, st))
        files.sort()
        for _, name, st in files:
            if self.stopped or (layout.name, vm) in self.held:
                break
            if self.budget <= 0:
                self.notice(layout, "budget", f"more than {self.job.max_files} command files: "
                            "the rest wait for the next pass")
                self.stopped = True
                break
            self.budget -= 1
            result = self._one(layout, vm, folder, vm_fd, name, st)
            if result is not None and result.get("status"):
                info = result["status"]
                self.read_at[(layout.name, vm)] = float(result.get("read_at") or time.time())
        return info

    def _one(self, layout: Layout, vm: str, folder: str, vm_fd: int, name: str,
             st: os.stat_result) -> dict[str, Any] | None:
        path = layout.shown(*layout.spool, folder, name)
        request: dict[str, Any] = {"layout": layout.name, "vm": vm, "file": name,
                                   "ino": st.st_ino}
        try:
            data, fst = userfs.read_file(vm_fd, name, self.uid, self.job.max_bytes)
            # the inode that was judged (the listing may be seconds old): recovery
            # recognises the claimed file by it
            request["ino"] = fst.st_ino
            command = parse_command(name, data, self.job.max_bytes)
            request.update(action=command.action.name, tokens=command.tokens())
        except FileNotFoundError:
            return None  # removed by the user meanwhile
        except Unsafe as exc:
            request["rejected"] = f"{path} {exc}"
        except Rejection as exc:
            request["rejected"] = f"{path}: {exc}"
        except OSError as exc:
            request["rejected"] = f"{path}: cannot be read: {exc.strerror}"
        if "rejected" in request:
            request["rejected"] = request["rejected"][:MESSAGE_LIMIT]
        if self.job.dry_run:
            self.ask(protocol.INTEND, **request)  # root says what it would do
            return None
        try:
            hist_fd = self.folder(layout.history)
        except (Unsafe, OSError) as exc:
            self.notice(layout, "history", f"{layout.shown(*layout.history)} {exc}; "
                        "commands wait until it is usable")
            self.stopped = True
            return None
        return self._claim_and_run(layout, vm_fd, hist_fd, name, request)

    def _claim_and_run(self, layout: Layout, vm_fd: int, hist_fd: int, name: str,
                       request: dict[str, Any]) -> dict[str, Any] | None:
        stamp = layout.stamp(time.time_ns())
        # the user side's own rejections go where the legacy script put them (ERRORFILE-)
        naming = layout.rejected_base if "rejected" in request else layout.history_base
        hist = userfs.free_name(hist_fd, naming(stamp, request["vm"], name, self.job.user))
        # Root journals the name before the placeholder exists, so a pass killed at any
        # point leaves nothing in history that the next pass cannot account for.
        reply = self.ask(protocol.INTEND, hist=hist, **request)
        if reply.get("pending"):
            if reply.get("scope") == "vm":  # only this VM's host is down (SPEC 13)
                self.held.add((layout.name, request["vm"]))
            else:
                self.stopped = True
            return None
        placed: os.stat_result | None = None
        try:
            userfs.place(hist_fd, hist)
            placed = os.stat(hist, dir_fd=hist_fd, follow_symlinks=False)
            userfs.claim(vm_fd, name, hist_fd, hist)
        except OSError as exc:
            if placed is not None:
                self.remove_placeholder(hist_fd, hist, placed)
            self.ask(protocol.UNCLAIMED, id=reply["id"])
            if exc.errno != errno.ENOENT:
                where = layout.shown(*layout.spool, layout.folder_of(request["vm"]), name)
                self.notice(layout, f"claim:{request['vm']}:{name}",
                            f"{where}: cannot be moved to history ({exc.strerror}); "
                            "it stays where it is")
            return None
        result = self.ask(protocol.RUN, id=reply["id"])
        if result.get("output") is not None:  # before the log line: the CLI waits for that
            self.write_output(layout, request["vm"], result.pop("output"))
        self.record(layout, {**request, **result, "hist": hist, "id": reply["id"],
                             "stamp": stamp})
        return result

    @staticmethod
    def remove_placeholder(hist_fd: int, hist: str, placed: os.stat_result) -> None:
        """Undo this turn's own placeholder after a failed claim (the command stays pending).

        The empty file was made (O_EXCL) a moment ago by this turn: it is wirt's, not the
        user's, and keeping one per failed claim would add a file to history every pass
        for as long as the claim keeps failing.  Removed only while the name still holds
        that very file, empty: never a command file that did arrive, never a file put there.
        """
        with suppress(OSError):
            now = os.stat(hist, dir_fd=hist_fd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (placed.st_dev, placed.st_ino) \
                    and stat.S_ISREG(now.st_mode) and now.st_size == 0:
                os.unlink(hist, dir_fd=hist_fd)

    def finish(self) -> None:
        if self.unlisted:
            self.notices[-1] = {"layout": self.notices[-1]["layout"], "key": "unlisted",
                                "message": f"and {self.unlisted + 1} more things in your spool "
                                "that wirt ignores are not listed: tidy it up"}
        if self.notices and not self.job.dry_run:
            reply = self.ask(protocol.NOTICES, items=self.notices)
            by_layout: dict[str, list[str]] = {}
            for item in reply["new"]:
                by_layout.setdefault(item["layout"], []).append(
                    f"{logline.now_text()} {item['message']}\n"
                )
            for name, lines in by_layout.items():
                self.general(LAYOUTS[name], lines)
        elif self.notices:
            self.ask(protocol.NOTICES, items=self.notices)
        bye: dict[str, Any] = {"op": protocol.BYE, "logged": self.logged,
                               "statuses": self.statuses}
        if self.isos_written:
            bye["isos"] = self.isos_written
        if self.vms_written:
            bye["vms"] = self.vms_written
        self.chan.send(bye)


def _why(exc: BaseException) -> str:
    """An Unsafe's reason as is; an OSError in words (a link is named as such)."""
    if isinstance(exc, OSError):
        if exc.errno == errno.ELOOP:
            return "it is a symbolic link (wirt never follows links)"
        name = f"{exc.filename}: " if isinstance(exc.filename, str) else ""
        return f"{name}{exc.strerror or exc}"
    return str(exc)


def user_main(fields: dict[str, Any], chan: Channel) -> None:
    """Entry point of the child, after the privilege drop; *fields* make a UserJob."""
    job = UserJob(**fields)
    job.layouts = tuple(job.layouts)
    side = UserSide(chan, job)
    if job.recover:
        side.recover()
    for name in job.layouts:
        if side.stopped:
            break
        side.process(LAYOUTS[name])
    side.finish()
