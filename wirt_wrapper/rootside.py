"""The privileged side of a pass (runs as root; distrusts every user side).

For each member of the group it checks the account with PAM, forks a child
that becomes the user (:mod:`privsep`), and answers that child's requests
through one table, :data:`HANDLERS`.  Every request is re-validated here
against the action table and the layouts before anything reaches libvirt;
ownership is decided here from root-owned data (libvirt metadata and the
group's member list), never from anything the user wrote.
"""

from __future__ import annotations

import json
import os
import pwd
import select
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import libvirt

from . import notify, privsep
from .accounts import AccountChecker, group_lists, members
from .actions import (
    Claimants,
    Rejection,
    canonical,
    check_vm_name,
    domain_for,
    lookup_action,
    no_domain,
    owner_problem,
    parse_params,
    printable,
)
from .audit import AuditLog, Journal, load_state, save_state
from .config import Config
from .errors import ProtocolError
from .hypervisor import Hypervisor, Interrupted, Unreachable
from .layouts import LAYOUTS
from .status import info_digest
from .userside import UserJob

__all__ = ["Options", "Pass", "Summary"]

OUTCOMES = ("done", "failed", "rejected", "interrupted")


@dataclass(frozen=True)
class Options:
    layouts: tuple[str, ...]
    user: str | None = None
    dry_run: bool = False
    verbose: bool = False


@dataclass
class Summary:
    users: int = 0
    skipped: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    libvirt_down: str | None = None
    seconds: float = 0.0

    def line(self) -> str:
        counts = ", ".join(f"{v} {k}" for k, v in self.counts.items())
        down = f"; libvirt unreachable: {self.libvirt_down}" if self.libvirt_down else ""
        return (f"{self.users} users served, {self.skipped} skipped; commands: {counts}; "
                f"{self.seconds:.2f} s{down}")


# Users served at the same time: their children read homes while root answers.
PARALLEL_USERS = 16
# Questions the prober may owe at once (answers are read as they come).
LOOK_AHEAD = 32


@dataclass
class UserContext:
    """One user's turn: their child, its deadline, and the command ids it may use."""

    user: pwd.struct_passwd
    child: privsep.Child
    ids: set[str] = field(default_factory=set)
    problem: str | None = None


class Pass:
    """One pass over every member (or one, with --user)."""

    def __init__(self, config: Config, options: Options, spawner: privsep.Spawner,
                 prober: privsep.Prober | None = None) -> None:
        self.spawner = spawner
        self.prober = prober
        self.to_look: deque[pwd.struct_passwd] = deque()  # for the prober, not asked yet
        self.looking: deque[pwd.struct_passwd] = deque()  # asked the prober, in order
        self.look_deadline = 0.0
        self.full: deque[pwd.struct_passwd] = deque()  # waiting for a full turn
        self.config = config
        self.options = options
        self.summary = Summary()
        self.hv = Hypervisor(config.uri, config.limits.libvirt_timeout)
        self.audit = AuditLog(config.audit_log, dry_run=options.dry_run)
        self.journal = Journal(config.state_dir, dry_run=options.dry_run)
        self.reported_path = os.path.join(config.state_dir, "reported.json")
        self.reported: dict[str, Any] = load_state(self.reported_path)
        # per uid, layout, VM: [digest of the info behind status.xml, its lstat signature]
        self.idle_path = os.path.join(config.state_dir, "idle.json")
        self.idle: dict[str, dict[str, dict[str, Any]]] = load_state(self.idle_path)
        self.idle_loaded = json.dumps(self.idle, sort_keys=True)
        self.seen: dict[str, set[str]] = {}
        self.counter = 0
        self.claimants = Claimants(config.domain_name, [])
        self.groups: dict[str, tuple[int, ...]] = {}
        self.pass_id = f"{time.time_ns():x}"
        self.report = notify.Report()  # for syslog and mail at the end
        self.deferred: list[tuple[pwd.struct_passwd, dict[str, Any]]] = []

    # -- helpers -----------------------------------------------------------
    def say(self, text: str) -> None:
        if self.options.verbose or self.options.dry_run:
            print(text, flush=True)

    def _save_state(self) -> None:
        if self.options.dry_run:
            return
        merged = dict(self.reported)
        for uid, keys in self.seen.items():
            merged[uid] = sorted(keys)
        if merged != self.reported:
            save_state(self.reported_path, merged)
        if json.dumps(self.idle, sort_keys=True) != self.idle_loaded:
            save_state(self.idle_path, self.idle)

    # -- the pass ------------------------------------------------------------
    def run(self) -> Summary:
        started = time.monotonic()
        os.makedirs(self.config.state_dir, mode=0o700, exist_ok=True)
        try:
            self.hv.connect()
        except Unreachable as exc:
            self.summary.libvirt_down = str(exc)
            self.audit.write("libvirt-unreachable", reason=str(exc))
            print(f"wirt: libvirt unreachable, commands stay pending: {exc}", file=sys.stderr)
        try:
            group = members(self.config.group)
        except KeyError:
            print(f"wirt: group '{self.config.group}' does not exist", file=sys.stderr)
            group = []
        names = [u.pw_name for u in group]
        self.claimants = Claimants(self.config.domain_name, names)
        self.groups = group_lists(group)
        if self.options.user:
            if self.options.user not in names:
                print(f"wirt: {self.options.user} is not a member of {self.config.group}",
                      file=sys.stderr)
            group = [u for u in group if u.pw_name == self.options.user]
        with AccountChecker(self.config.pam_service) as accounts:
            self.serve_all(group, accounts)
        self.journal.compact()
        self._save_state()
        self.hv.close()
        self.summary.seconds = time.monotonic() - started
        if self.hv.down and not self.summary.libvirt_down:  # lost during the pass
            self.summary.libvirt_down = self.hv.down
            self.audit.write("libvirt-unreachable", reason=self.hv.down)
            print(f"wirt: libvirt went away during the pass, the remaining commands stay "
                  f"pending: {self.hv.down}", file=sys.stderr)
        self.audit.write("pass", summary=self.summary.line(), **self.summary.counts)
        if self.summary.libvirt_down:
            self.report.note(f"libvirt unreachable, commands stay pending: "
                             f"{self.summary.libvirt_down}")
        if not self.options.dry_run:
            notify.after_pass(self.config, self.summary, self.report, self.audit)
        self.audit.close()
        return self.summary

    def serve_all(self, users: list[pwd.struct_passwd], accounts: AccountChecker) -> None:
        """Serve every user: a quick look first (the prober), a full turn if there is work.

        Full turns run a few at a time; each ends by 'bye', error or deadline.
        """
        for user in users:
            self.start(user, accounts)
        active: dict[int, UserContext] = {}
        while self.full or active or self.looking or self.to_look or self.deferred:
            while self.to_look and len(self.looking) < LOOK_AHEAD:
                self.ask_prober(self.to_look.popleft())
            while self.full and len(active) < PARALLEL_USERS:
                ctx = self.start_full(self.full.popleft())
                active[ctx.child.fileno()] = ctx
            if self.deferred and (self.hv.details_ready() or not (active or self.looking)):
                for user, report in self.deferred:
                    if self.needs_turn(user, report):
                        self.full.append(user)
                self.deferred = []
                continue
            waits = [c.child.channel.deadline or 0.0 for c in active.values()]
            if self.deferred:  # the details may arrive any moment: look again soon
                waits.append(time.monotonic() + 0.02)
            fds: list[int] = list(active)
            if self.looking and self.prober is not None:
                waits.append(self.look_deadline)
                fds.append(self.prober.fileno())
            if not fds:
                continue
            ready, _, _ = select.select(fds, [], [], max(0.0, min(waits) - time.monotonic()))
            now = time.monotonic()
            if self.prober is not None and self.prober.fileno() in ready:
                self.take_look()
            elif self.looking and now >= self.look_deadline:
                self.prober_failed("no answer within the time limit")
            expired = [fd for fd, c in active.items() if now >= (c.child.channel.deadline or 0.0)]
            for fd in (set(ready) | set(expired)) & set(active):
                ctx = active[fd]
                if self.step(ctx):
                    del active[fd]
                    self.end(ctx)

    def start(self, user: pwd.struct_passwd, accounts: AccountChecker) -> None:
        """Check the account; then ask for a look, or queue a full turn straight away."""
        problem = accounts.problem(user.pw_name)
        if problem:
            self.summary.skipped += 1
            self.audit.write("user-skipped", user=user.pw_name, uid=user.pw_uid, reason=problem)
            self.say(f"{user.pw_name}: skipped: {problem}")
            return
        self.summary.users += 1
        if self.prober is None or self.options.dry_run or self.journal.open_for(user.pw_uid):
            self.full.append(user)
        else:
            self.to_look.append(user)

    def ask_prober(self, user: pwd.struct_passwd) -> None:
        if self.prober is None:
            self.full.append(user)
            return
        job = {"home": user.pw_dir, "uid": user.pw_uid, "layouts": self.options.layouts,
               "limit": self.config.limits.max_files_per_user * 10}
        if not self.looking:
            self.look_deadline = time.monotonic() + self.config.limits.seconds_per_user
        self.looking.append(user)
        try:
            self.prober.ask(self._identity(user), job)
        except OSError as exc:  # the prober died: everyone it owes gets a full turn
            self.prober_failed(f"cannot ask the prober: {exc}")

    def take_look(self) -> None:
        """The prober's answer for the oldest user it was asked about."""
        if self.prober is None:
            return
        try:
            report = self.prober.answer()
        except (EOFError, OSError, ProtocolError, ValueError) as exc:
            self.prober_failed(str(exc))
            return
        user = self.looking.popleft()
        self.look_deadline = time.monotonic() + self.config.limits.seconds_per_user
        if not isinstance(report, dict) or set(report) != set(self.options.layouts):
            self.full.append(user)  # not a look we understand: have a full look
        elif self.hv.details_ready():
            if self.needs_turn(user, report):
                self.full.append(user)
        else:  # deciding needs the domains' details, still on their way from libvirt
            self.deferred.append((user, report))

    def prober_failed(self, why: str) -> None:
        """Stop asking the prober (a hung home, say); everyone it owes gets a full turn."""
        self.audit.write("prober-failed", reason=why, users=[u.pw_name for u in self.looking])
        if self.prober is not None:
            self.prober.close()
            self.prober = None
        self.full.extend(self.looking)
        self.full.extend(self.to_look)
        self.looking.clear()
        self.to_look.clear()

    def start_full(self, user: pwd.struct_passwd) -> UserContext:
        job = UserJob(
            user=user.pw_name, uid=user.pw_uid, home=user.pw_dir,
            layouts=self.options.layouts, max_files=self.config.limits.max_files_per_user,
            max_bytes=self.config.limits.max_file_bytes, dry_run=self.options.dry_run,
            log_max_bytes=self.config.limits.log_max_bytes,
            log_keep=self.config.limits.log_keep,
            recover=[] if self.options.dry_run else self.journal.open_for(user.pw_uid),
        )
        child = self.spawner.spawn(self._identity(user), vars(job))
        child.channel.deadline = time.monotonic() + self.config.limits.seconds_per_user
        return UserContext(user, child)

    def _identity(self, user: pwd.struct_passwd) -> privsep.Identity:
        return privsep.Identity(user.pw_name, user.pw_uid, user.pw_gid, self.groups[user.pw_name])

    def step(self, ctx: UserContext) -> bool:
        """Answer one request of *ctx*'s child; True when its turn is over."""
        try:
            message = ctx.child.channel.recv()
            for cid in _strings(message.get("logged", [])):
                if cid in ctx.ids:
                    self.journal.record(cid, "closed")
            op = message.get("op")
            handler = HANDLERS.get(op) if isinstance(op, str) else None
            if handler is None:
                raise ProtocolError(f"unknown request {op!r}")
            reply = handler(self, ctx, message)
            if op == "bye":
                return True  # the one request with no answer: the child is done
            ctx.child.channel.send(reply)
            return False
        except privsep.Timeout:
            ctx.problem = (f"time limit of {self.config.limits.seconds_per_user:g} s reached; "
                           "the remaining commands wait for the next pass")
        except (EOFError, OSError, ProtocolError, Rejection, ValueError, KeyError, TypeError,
                AttributeError) as exc:  # a user side outside the protocol ends its own turn
            ctx.problem = f"user side ended early: {exc}"
        return True

    def end(self, ctx: UserContext) -> None:
        ctx.child.end(kill=ctx.problem is not None)
        if ctx.problem:
            user = ctx.user
            self.audit.write("user-incomplete", user=user.pw_name, uid=user.pw_uid,
                             reason=ctx.problem)
            self.report.note(f"{user.pw_name}: {ctx.problem}")
            self.say(f"{user.pw_name}: {ctx.problem}")

    # -- request handlers (one row each in HANDLERS) -----------------------
    def on_inventory(self, ctx: UserContext, msg: dict[str, Any]) -> dict[str, Any]:
        _layout(msg.get("layout"), self.options.layouts)  # a layout this pass serves
        if self.hv.down:
            return {"down": self.hv.down}
        vms = [check_vm_name(vm) for vm in _strings(msg.get("vms", []))]
        name = ctx.user.pw_name
        try:
            self.hv.prefetch([domain_for(self.config.domain_name, name, vm) for vm in vms])
            status = {vm: self._status_for(ctx.user, vm) for vm in vms}
        except Unreachable as exc:  # libvirt went away during the pass
            return {"down": str(exc)}
        return {"status": status}

    def _status_for(self, user: pwd.struct_passwd, vm: str) -> dict[str, Any]:
        domain = domain_for(self.config.domain_name, user.pw_name, vm)
        info = self.hv.info(domain)
        if info is None:
            return {"domain": domain, "problem_kind": "missing",
                    "problem": no_domain(domain)}
        problem = owner_problem(user.pw_name, domain, info.owner,
                                self.claimants.find(domain, besides=user.pw_name))
        if problem:
            return {"domain": domain, "problem_kind": "not-yours", "problem": problem}
        return info.as_status()

    def on_intend(self, ctx: UserContext, msg: dict[str, Any]) -> dict[str, Any]:
        layout = _layout(msg.get("layout"), self.options.layouts)
        vm = check_vm_name(_string(msg, "vm"))
        file_name = _string(msg, "file")
        if "/" in file_name or "\0" in file_name or len(file_name) > 255:
            raise ProtocolError("bad file name")
        ino = msg.get("ino")
        if not isinstance(ino, int):
            raise ProtocolError("bad inode")
        entry: dict[str, Any] = {
            "uid": ctx.user.pw_uid, "user": ctx.user.pw_name, "layout": layout, "vm": vm,
            "file": file_name, "ino": ino, "action": None, "tokens": [],
            "domain": domain_for(self.config.domain_name, ctx.user.pw_name, vm),
        }
        rejected = msg.get("rejected")
        if rejected is not None:
            entry["rejected"] = _string(msg, "rejected")[:2000]
        else:
            try:  # re-validate: the user side's word is not enough
                action = lookup_action(file_name)
                params = parse_params(action, _strings(msg.get("tokens", [])))
                entry["action"] = action.name
                entry["tokens"] = canonical(params)
            except Rejection as exc:
                entry["rejected"] = f"{printable(file_name)}: {exc}"
        if msg.get("dry"):
            verdict = f"reject: {entry['rejected']}" if "rejected" in entry else (
                f"run {entry['action']} {' '.join(entry['tokens'])} on {entry['domain']}")
            self.say(f"{ctx.user.pw_name} {vm} {printable(file_name)}: would {verdict}")
            return {}
        if self.hv.down and "rejected" not in entry:
            return {"pending": self.hv.down}
        hist = _string(msg, "hist")
        if not LAYOUTS[layout].fits_history(hist):
            raise ProtocolError("bad history name")
        self.counter += 1
        cid = f"{self.pass_id}-{self.counter}"
        entry["hist"] = hist
        ctx.ids.add(cid)
        self.journal.record(cid, "intent", **entry)
        return {"id": cid}

    def _entry(self, ctx: UserContext, msg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        cid = _string(msg, "id")
        entry = self.journal.entries.get(cid)
        if cid not in ctx.ids or entry is None or entry.get("stage") != "intent":
            raise ProtocolError(f"unknown or used command id {cid!r}")
        return cid, entry

    def on_unclaimed(self, ctx: UserContext, msg: dict[str, Any]) -> dict[str, Any]:
        cid, _ = self._entry(ctx, msg)
        self.journal.record(cid, "closed")
        return {}

    def on_run(self, ctx: UserContext, msg: dict[str, Any]) -> dict[str, Any]:
        cid, entry = self._entry(ctx, msg)
        started = time.monotonic()
        status: dict[str, Any] | None = None
        if "rejected" in entry:
            outcome, message = "rejected", entry["rejected"]
        else:
            self.journal.record(cid, "begin")
            outcome, message, status = self._execute(ctx, entry)
        return self._finish(cid, entry, outcome, message, started, status)

    def _execute(self, ctx: UserContext,
                 entry: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
        domain = entry["domain"]
        action = lookup_action(entry["action"])
        params = parse_params(action, entry["tokens"])
        user = ctx.user.pw_name

        def decide(owner: str | None) -> str | None:
            return owner_problem(user, domain, owner, self.claimants.find(domain, besides=user))

        try:
            outcome, message, info = self.hv.act(domain, action, params, decide)
        except Interrupted as exc:  # the request may have reached the VM: not "failed"
            return "interrupted", (
                f"libvirt: {exc} while this command ran; it may or may not have taken "
                "effect and was not repeated: check the VM's state and send it again if "
                "needed"), None
        except Unreachable as exc:
            return "failed", f"libvirt: {exc}; the command was not run: send it again", None
        except libvirt.libvirtError as exc:
            return "failed", f"libvirt: {exc.get_error_message()}", None
        return outcome, message, info.as_status() if info is not None else None

    def _finish(self, cid: str, entry: dict[str, Any], outcome: str, message: str,
                started: float, status: dict[str, Any] | None) -> dict[str, Any]:
        offset = os.lseek(self.audit.fd, 0, os.SEEK_END) if self.audit.fd >= 0 else 0
        self.journal.record(cid, "outcome", outcome=outcome, message=message,
                            audit_offset=offset)
        self._audit_command(cid, entry, outcome, message, time.monotonic() - started)
        return {"outcome": outcome, "message": message, "status": status,
                "action": entry.get("action"), "tokens": entry.get("tokens")}

    def _audit_command(self, cid: str, entry: dict[str, Any], outcome: str, message: str,
                       seconds: float) -> None:
        self.summary.counts[outcome] += 1
        self.audit.write(
            "command", id=cid, user=entry["user"], uid=entry["uid"], layout=entry["layout"],
            vm=entry["vm"], domain=entry["domain"], file=entry["file"],
            action=entry.get("action"), params=entry.get("tokens", []), outcome=outcome,
            reason=message, duration=round(seconds, 4),
        )
        self.report.command(entry, outcome, message)
        what = entry.get("action") or printable(entry["file"])
        self.say(f"{entry['user']} {entry['vm']} {what}: "
                 f"{outcome}{': ' + message if message else ''}")

    def on_recovered(self, ctx: UserContext, msg: dict[str, Any]) -> dict[str, Any]:
        write = []
        for item in msg.get("items", []):
            cid = _string(item, "id")
            entry = self.journal.entries.get(cid)
            if entry is None or entry.get("uid") != ctx.user.pw_uid:
                raise ProtocolError(f"unknown command id {cid!r}")
            ctx.ids.add(cid)
            stage = entry.get("stage")
            if stage == "outcome":
                outcome, message = entry["outcome"], entry["message"]
                if not self.audit.contains(cid, entry.get("audit_offset", 0)):
                    self._audit_command(cid, entry, outcome, message, 0.0)
            elif stage == "begin" or item.get("claimed") is True:
                outcome = "interrupted"
                message = ("the pass was stopped while handling this command; it was not "
                           "repeated: check the VM's state and send it again if needed")
                self.journal.record(cid, "outcome", outcome=outcome, message=message,
                                    audit_offset=os.lseek(self.audit.fd, 0, os.SEEK_END))
                self._audit_command(cid, entry, outcome, message, 0.0)
            else:
                self.journal.record(cid, "closed")  # never claimed: the file is still pending
                continue
            if item.get("logged") is True:
                self.journal.record(cid, "closed")
            else:
                write.append({**entry, "outcome": outcome, "message": message, "id": cid})
        return {"write": write}

    def on_notices(self, ctx: UserContext, msg: dict[str, Any]) -> dict[str, Any]:
        uid = str(ctx.user.pw_uid)
        known = set(self.reported.get(uid, []))
        seen = self.seen.setdefault(uid, set())
        new = []
        for item in msg.get("items", [])[:1000]:
            layout = _layout(item.get("layout"), self.options.layouts)
            key = f"{layout}:{_string(item, 'key')[:300]}"
            text = _string(item, "message")[:2000]
            seen.add(key)
            if key not in known:
                new.append({"layout": layout, "message": text})
                self.audit.write("notice", user=ctx.user.pw_name, uid=ctx.user.pw_uid,
                                 layout=layout, message=text)
            if self.options.dry_run:
                self.say(f"{ctx.user.pw_name}: {text}")
        return {"new": new}

    def on_bye(self, ctx: UserContext, msg: dict[str, Any]) -> dict[str, Any]:
        statuses = msg.get("statuses", {})
        if not isinstance(statuses, dict):
            raise ProtocolError("statuses must be an object")
        self.seen.setdefault(str(ctx.user.pw_uid), set())  # notices gone: report them anew
        mine = self.idle.setdefault(str(ctx.user.pw_uid), {})
        for layout, vms in statuses.items():
            _layout(layout, self.options.layouts)
            if not isinstance(vms, dict):
                raise ProtocolError("statuses must map VMs")
            for vm, seen in vms.items():
                check_vm_name(vm)
                digest, signature = seen if isinstance(seen, list) and len(seen) == 2 \
                    else (None, None)
                if not isinstance(digest, str) or len(digest) > 64 \
                        or not isinstance(signature, list) or len(signature) > 8 \
                        or not all(isinstance(n, int) for n in signature):
                    raise ProtocolError("a status is [digest, lstat signature]")
                mine.setdefault(layout, {})[vm] = [digest, signature]
        return {}

    def needs_turn(self, user: pwd.struct_passwd, report: dict[str, Any]) -> bool:
        """Whether the prober's look shows anything for a full user side to do."""
        cached = self.idle.get(str(user.pw_uid), {})
        reported = set(self.reported.get(str(user.pw_uid), []))
        for layout, look in report.items():
            if not isinstance(look, dict) or look.get("spool") == "absent":
                continue
            vms, odd = look.get("vms"), look.get("odd", [])
            if look.get("spool") != "ok" or not isinstance(vms, dict):
                return True  # a command, or something the full side must look at
            if not isinstance(odd, list) or any(f"{layout}:{key}" not in reported
                                                for key in odd):
                return True  # a stray entry the user has not been told about yet
            if LAYOUTS[layout].info is None or self.hv.down:
                continue  # nothing to refresh (or nothing to refresh it from)
            for vm, seen in vms.items():
                try:
                    status = self._status_for(user, check_vm_name(vm))
                except Unreachable:
                    return True
                if cached.get(layout, {}).get(vm) != [info_digest(status), seen]:
                    return True  # a new VM, a changed state, or a status.xml someone touched
        return False


Handler = Callable[[Pass, UserContext, dict[str, Any]], dict[str, Any]]

# Every request a user side may make.  Anything else ends that user's turn.
HANDLERS: dict[str, Handler] = {
    "recovered": Pass.on_recovered,
    "inventory": Pass.on_inventory,
    "intend": Pass.on_intend,
    "unclaimed": Pass.on_unclaimed,
    "run": Pass.on_run,
    "notices": Pass.on_notices,
    "bye": Pass.on_bye,
}


def _string(msg: dict[str, Any], key: str) -> str:
    value = msg.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"{key} must be a string")
    return value


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError("expected a list of strings")
    return value


def _layout(value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed or value not in LAYOUTS:
        raise ProtocolError(f"layout {value!r} is not served in this pass")
    return str(value)

