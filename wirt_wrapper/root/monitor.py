"""The monitor: root's answers to a user side's requests (runs as root; distrusts the user side).

One table, :data:`HANDLERS`, lists every request; :mod:`wirt_wrapper.rules.protocol`
says each request's shape and when it may come, and :meth:`Monitor.answer`
checks both before a handler runs (OpenSSH ``monitor.c``).  The user side
reads hostile files, so it is treated as possibly subverted: every request
is re-validated against the action table and the layouts before anything
reaches libvirt; ownership is decided here from root-owned data (libvirt
metadata and the group's member list); dry run, command ids and order come
from root's own state; and what one turn may write into root's records is
capped (SECURITY.md rows 10 and 19).
"""

from __future__ import annotations

import pwd
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import libvirt

from wirt_wrapper.root import catalogue
from wirt_wrapper.root.audit import AuditLog, Journal
from wirt_wrapper.root.hosts import Hosts
from wirt_wrapper.root.hypervisor import (
    ADMIN,
    Decide,
    DomainInfo,
    Interrupted,
    Trip,
    Unreachable,
)
from wirt_wrapper.root.notify import Report
from wirt_wrapper.root.owners import Claim, OwnerIndex
from wirt_wrapper.root.records import Records, notice_key
from wirt_wrapper.rules import protocol
from wirt_wrapper.rules import settings as settings_rules
from wirt_wrapper.rules import vms as vms_rules
from wirt_wrapper.rules.actions import (
    Action,
    Claimants,
    Rejection,
    SnapshotCall,
    asked,
    canonical,
    check_vm_name,
    domain_for,
    folder_domain,
    lookup_action,
    no_domain,
    owner_problem,
    owns,
    parse_params,
    printable,
    with_defaults,
)
from wirt_wrapper.rules.config import Config
from wirt_wrapper.rules.errors import ProtocolError, WirtError
from wirt_wrapper.rules.layouts import LAYOUTS
from wirt_wrapper.rules.spool import OUTCOMES

__all__ = ["HANDLERS", "Deferred", "Monitor", "Options", "Summary", "UserContext"]

# What one user's turn may write into root's audit log: notices beyond this many
# are one record with a count, and long user-chosen texts are cut.
NOTICE_RECORDS = 20
TEXT_LIMIT = 500  # characters of a reason or notice, made printable ASCII by root itself
FILE_LIMIT = 80  # characters of a file name in a record


@dataclass(frozen=True)
class Options:
    layouts: tuple[str, ...]
    users: frozenset[str] | None = None  # serve only these members (--user, a watch's hints)
    dry_run: bool = False
    verbose: bool = False
    # a watch's mini pass: when it had nothing to do or tell, no 'pass' audit record and
    # no syslog summary (a member's events would otherwise grow both at their turn rate)
    quiet_idle: bool = False


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


@dataclass
class UserContext:
    """One user's turn: their child, where the turn is, and the command ids it may use."""

    user: pwd.struct_passwd
    child: Any  # privsep.Child; the monitor never touches it
    turn: protocol.Turn
    ids: set[str] = field(default_factory=set)
    problem: str | None = None


@dataclass
class Deferred:
    """An answer that waits for a trip to libvirt (:class:`Trip`): the pass answers other
    users meanwhile, and sends :attr:`finish`'s reply once the trip is done (or past its
    deadline: then libvirt counts as not answering)."""

    trip: Trip
    finish: Callable[[], dict[str, Any]]  # called before the trip is done, it waits for it


class Monitor:
    """Answers one request at a time; raises ProtocolError to end that user's turn only."""

    def __init__(self, config: Config, options: Options, hv: Hosts, audit: AuditLog,
                 journal: Journal, records: Records, report: Report, summary: Summary) -> None:
        self.config = config
        self.options = options
        self.hv = hv
        self.audit = audit
        self.journal = journal
        self.records = records
        self.report = report
        self.summary = summary
        self.claimants = Claimants(config.domain_name, [])
        self.owners = OwnerIndex(None)  # the pass gives it root's file (learn_owners)
        self._uuid_of: dict[str, str] = {}  # domain name -> UUID, from the snapshot
        self._by_folder: dict[Claim, list[str]] = {}  # (owner, folder) -> domains
        self._mapped: dict[tuple[str, str], tuple[str, str | None]] = {}
        self._named: dict[str, list[tuple[str, str]]] = {}  # user -> named_for(user)
        self._by_owner: dict[str, list[tuple[str, str | None]]] = {}  # owner -> domains
        self._vms: dict[str, tuple[str, str]] = {}  # user -> vms.json text and digest
        self.pass_id = f"{time.time_ns():x}"
        self.counter = 0
        # per member: the command files this pass moved out of their VM folders (each
        # 'run' follows its file's claim): the watch service's own-move count
        self.claimed: dict[str, int] = {}
        self._catalogue: catalogue.Catalogue | None = None
        self._catalogue_read = False
        self._isos: tuple[str, str] | None = None

    def say(self, text: str) -> None:
        if self.options.verbose or self.options.dry_run:
            print(text, flush=True)

    def turn(self, user: pwd.struct_passwd, child: Any, recovering: bool) -> UserContext:
        turn = protocol.Turn(self.options.layouts, recovering,
                             self.config.limits.max_files_per_user)
        return UserContext(user, child, turn)

    def answer(self, ctx: UserContext, message: dict[str, Any]
               ) -> dict[str, Any] | Deferred | None:
        """The reply to *message* (Deferred: once a trip to libvirt is done); None for
        'bye', which ends the turn."""
        op = protocol.check_request(message)
        layout = message.get("layout") if op in (protocol.INVENTORY, protocol.INTEND,
                                                 protocol.SETTINGS) else None
        ctx.turn.allow(op, layout, message.get("vm") if op == protocol.SETTINGS else None)
        for cid in message.get("logged", []):
            if cid in ctx.ids:
                self.journal.record(cid, "closed")
        reply = HANDLERS[op](self, ctx, message)
        return None if op == protocol.BYE else reply

    # -- request handlers (one row each in HANDLERS) -----------------------
    def on_inventory(self, ctx: UserContext, msg: dict[str, Any]) -> dict[str, Any]:
        _layout(msg["layout"], self.options.layouts)
        if self.hv.down:
            return {"down": self.hv.down}
        vms = [check_vm_name(vm) for vm in msg["vms"]]
        try:
            self.hv.prefetch([self.domain_of(ctx.user, vm) for vm in vms])
            status = {vm: self.status_for(ctx.user, vm) for vm in vms}
        except Unreachable as exc:  # libvirt went away during the pass
            return {"down": str(exc)}
        # the settings file each VM had when root last handled it: the same one is not sent
        handled = self.records.configs_of(ctx.user.pw_uid).get(msg["layout"], {})
        return {"status": status, "configs": {vm: handled[vm] for vm in vms if vm in handled},
                "read_at": self.hv.read_at}

    def learn_owners(self, index: OwnerIndex) -> None:
        """Bring the owner index up to date with the snapshot: forget domains that are
        gone, read the owner metadata of the new ones (all, once a day), and keep the
        mapping (owner, folder) -> domains for this pass.  libvirt unreachable: names
        decide alone (nothing acts then anyway)."""
        self.owners = index
        if self.hv.down:
            return
        names = self.hv.uuids()
        complete = self.hv.all_listed()  # else a host that is down keeps its domains
        if complete:
            index.keep_only(names)
        for uuid, claim in self.hv.owner_claims(index.to_read(names, complete=complete)).items():
            index.learn(uuid, claim)
        self._uuid_of = {name: uuid for uuid, name in names.items()}
        self._by_folder = index.by_folder(names)
        self._by_owner = index.by_owner(names)

    def mapping(self, user: str, vm: str) -> tuple[str, str | None]:
        """The domain *user*'s VM folder *vm* drives (SPEC 4: the one the owner metadata
        assigns to it, else the one named for it), and why it cannot, if it cannot
        (ambiguous).  A hint from the owner index: acting checks the metadata fresh."""
        key = (user, vm)
        if key not in self._mapped:
            named = domain_for(self.config.domain_name, user, vm)
            uuid = self._uuid_of.get(named)
            self._mapped[key] = folder_domain(
                user, vm, self.config.domain_name, self._by_folder.get(key, ()),
                self.hv.exists(named), self.owners.claim_of(uuid) if uuid else None)
        return self._mapped[key]

    def named_for(self, user: str) -> list[tuple[str, str]]:
        """(domain, folder) of the domains named per domain_name for *user* and for no
        other member (the listing's names from the template's prefix: no XML)."""
        if user in self._named:  # the listing and the members are the pass's: once each
            return self._named[user]
        prefix = self.config.domain_name.format(user=user, vm="\0").partition("\0")[0]
        if not prefix or self.hv.down:
            return []
        found = []
        for domain in self.hv.names_from(prefix):
            claims = self.claimants.find(domain)
            mine = [vm for member, vm in claims if member == user]
            if len(mine) == 1 and len(claims) == 1:
                found.append((domain, mine[0]))
        self._named[user] = found
        return found

    def owned_candidates(self, user: str) -> list[str]:
        """The domains whose details deciding *user*'s vms.json needs (few: the user's)."""
        return ([domain for domain, _ in self._by_owner.get(user, ())]
                + [domain for domain, _ in self.named_for(user)])

    def owned(self, user: str) -> list[dict[str, Any]]:
        """Every domain *user* owns, with the VM folder that drives it and its state
        (~/wirt/info/vms.json): those whose owner metadata names the user (the owner
        index), and those named for one of the user's folders whose metadata (read
        now, for those names only) names no other owner, unless that folder means
        another domain (one assigned to it)."""
        found: dict[str, str | None] = {}
        for domain, vm in self._by_owner.get(user, ()):
            if vm is None:  # by its name, if it is named for one of the user's folders
                vm = next((v for m, v in self.claimants.find(domain) if m == user), None)
            found[domain] = vm
        named = self.named_for(user)
        self.hv.prefetch(self.owned_candidates(user))
        for domain, vm in named:
            info = self.hv.info(domain)
            if domain in found or info is None or info.owner not in (None, user):
                continue
            if self.mapping(user, vm)[0] == domain:
                found[domain] = info.owner_vm or vm
        return [{"vm": vm, "domain": domain, "state": self.hv.state_of(domain)}
                for domain, vm in found.items()]

    def vms_listing(self, user: str) -> tuple[str, str]:
        """The text of *user*'s vms.json this pass, and its digest; ("", "") when libvirt
        is unreachable (then nothing is written)."""
        if self.hv.down:
            return "", ""
        if user not in self._vms:
            text = vms_rules.render(self.owned(user))
            self._vms[user] = text, vms_rules.digest(text)
        return self._vms[user]

    def domain_of(self, user: pwd.struct_passwd, vm: str) -> str:
        """The domain *user*'s VM folder *vm* drives (SPEC 4)."""
        return self.mapping(user.pw_name, vm)[0]

    def status_for(self, user: pwd.struct_passwd, vm: str) -> dict[str, Any]:
        domain, ambiguous = self.mapping(user.pw_name, vm)
        if ambiguous:
            return {"domain": domain, "problem_kind": "ambiguous", "problem": ambiguous}
        refusal = self.hv.ambiguous(domain)
        if refusal:
            return {"domain": domain, "problem_kind": "ambiguous", "problem": refusal}
        waits = self.hv.pending(domain)
        if waits and not self.hv.named:
            raise Unreachable(waits)  # the one host: nothing is written (on_inventory)
        if waits:  # its host is down (or may be: it is on none of the others)
            return {"domain": domain, "problem_kind": "unreachable", "problem": waits}
        try:
            info = self.hv.info(domain)
        except Unreachable as exc:  # its host went down just now
            if not self.hv.named:
                raise
            return {"domain": domain, "problem_kind": "unreachable", "problem": str(exc)}
        if info is None:
            return {"domain": domain, "problem_kind": "missing",
                    "problem": no_domain(domain)}
        problem = owner_problem(
            user.pw_name, domain, info.owner, self.claimants.find(domain, besides=user.pw_name),
            vm=vm, meta_vm=info.owner_vm,
            by_name=domain == domain_for(self.config.domain_name, user.pw_name, vm))
        if problem:
            return {"domain": domain, "problem_kind": "not-yours", "problem": problem}
        return info.as_status()

    def on_intend(self, ctx: UserContext, msg: dict[str, Any]) -> dict[str, Any]:
        layout = _layout(msg["layout"], self.options.layouts)
        vm = check_vm_name(msg["vm"])
        file_name = msg["file"]
        if "/" in file_name or "\0" in file_name or not file_name:
            raise ProtocolError("bad file name")
        entry: dict[str, Any] = {
            "uid": ctx.user.pw_uid, "user": ctx.user.pw_name, "layout": layout, "vm": vm,
            "file": file_name, "ino": msg["ino"], "action": None, "tokens": [],
            "domain": self.domain_of(ctx.user, vm),
        }
        ambiguous = self.mapping(ctx.user.pw_name, vm)[1]
        if "rejected" in msg:
            # escaped here, not trusted to be: a non-ASCII character is 6 bytes in JSON
            entry["rejected"] = printable(msg["rejected"], TEXT_LIMIT)
        elif ambiguous:
            entry["rejected"] = f"{printable(file_name)}: {ambiguous}"
        else:
            try:  # re-validate: the user side's word is not enough
                action = lookup_action(file_name)
                params = parse_params(action, msg.get("tokens", []))
                # a default (snapshot's name) is fixed here, once: the journal keeps it
                params = with_defaults(action, params, datetime.now(UTC))
                entry["action"] = action.name
                entry["tokens"] = canonical(params)
            except Rejection as exc:
                entry["rejected"] = f"{printable(file_name)}: {exc}"
        if self.options.dry_run:  # root's own flag: a dry pass never journals or acts
            verdict = f"reject: {entry['rejected']}" if "rejected" in entry else (
                f"run {entry['action']} {' '.join(entry['tokens'])} on {entry['domain']}")
            self.say(f"{ctx.user.pw_name} {vm} {printable(file_name)}: would {verdict}")
            return {}
        waits = None if "rejected" in entry else self.hv.pending(entry["domain"])
        if waits:  # only this VM's commands wait: its host is down, or may be
            return {"pending": waits, **({"scope": "vm"} if self.hv.named else {})}
        hist = msg.get("hist")
        if not isinstance(hist, str) or not LAYOUTS[layout].fits_history(hist):
            raise ProtocolError("bad history name")
        self.counter += 1
        cid = f"{self.pass_id}-{self.counter}"
        entry["hist"] = hist
        ctx.ids.add(cid)
        self.journal.record(cid, "intent", **entry)
        return {"id": cid}

    def _entry(self, ctx: UserContext, msg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        cid = msg["id"]
        entry = self.journal.entries.get(cid)
        if cid not in ctx.ids or entry is None or entry.get("stage") != "intent":
            raise ProtocolError(f"unknown or used command id {cid!r}")
        return cid, entry

    def on_unclaimed(self, ctx: UserContext, msg: dict[str, Any]) -> dict[str, Any]:
        cid, _ = self._entry(ctx, msg)
        self.journal.record(cid, "closed")
        return {}

    def on_run(self, ctx: UserContext, msg: dict[str, Any]) -> dict[str, Any] | Deferred:
        """Run a claimed command.  A table action's trip to libvirt is started and the
        answer deferred (the pass serves other users' requests while it runs, and sends
        this one when it is done); console, screenshot, serial and snapshots are answered
        at once."""
        cid, entry = self._entry(ctx, msg)
        self.claimed[ctx.user.pw_name] = self.claimed.get(ctx.user.pw_name, 0) + 1
        started = time.monotonic()
        if "rejected" in entry:
            return self._ran(ctx, cid, entry, started, "rejected", entry["rejected"], None)
        self.journal.record(cid, "begin")
        action = lookup_action(entry["action"])
        if action.output:
            outcome, message, status, output = self.reach(ctx, entry)
            return self._ran(ctx, cid, entry, started, outcome, message, status, output)
        params = parse_params(action, entry["tokens"])
        user, vm, domain = ctx.user.pw_name, entry["vm"], entry["domain"]
        if isinstance(action.call, SnapshotCall):
            return self._ran(ctx, cid, entry, started,
                             *self.snapshot(user, vm, domain, action, action.call, params))
        trip = self.hv.act_start(domain, action, params, self._decider(user, vm, domain))
        return Deferred(trip, lambda: self._ran(ctx, cid, entry, started,
                                                *self.acted(action, trip)))

    def acted(self, action: Action, trip: Trip) -> tuple[str, str, dict[str, Any] | None]:
        """A table action's outcome, once its trip is done."""
        outcome, message, status = self._outcome(
            trip.wait,
            interrupted=("while this command ran; it may or may not have taken effect and "
                         "was not repeated: check the VM's state and send it again if needed"),
            not_run="the command was not run: send it again")
        if outcome == "done" and action.asks:  # done = delivered, not obeyed (SPEC 3)
            message = asked(action, (status or {}).get("state"))
        return outcome, message, status

    def _ran(self, ctx: UserContext, cid: str, entry: dict[str, Any], started: float,
             outcome: str, message: str, status: dict[str, Any] | None,
             output: dict[str, Any] | None = None) -> dict[str, Any]:
        """The answer to 'run': the outcome journaled and audited."""
        self.audit_locks(ctx, entry["domain"])
        reply = self._finish(cid, entry, outcome, message, started, status)
        if output is not None:  # console.json's password: in this answer alone
            reply["output"] = output
        return reply

    def reach(self, ctx: UserContext, entry: dict[str, Any]
              ) -> tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]:
        """console, screenshot, serial (SPEC 10): what they produce goes to the user side,
        which writes it into the VM's info folder; a layout without one cannot have it."""
        action = lookup_action(entry["action"])
        params = parse_params(action, entry["tokens"])
        layout = LAYOUTS[entry["layout"]]
        vm = entry["vm"]
        if layout.info is None:
            return "rejected", (
                f"'{action.name}' writes {action.output} into ~/wirt/info/vm/{vm}/, which "
                f"this layout does not have; write the command as "
                f"~/wirt/service/vm/{vm}/{action.name} instead (the same VM)"), None, None
        out: list[dict[str, Any] | None] = [None]

        def trip() -> tuple[str, str, DomainInfo | None]:
            outcome, message, info, out[0] = self.hv.reach(
                entry["domain"], action, params,
                self._decider(ctx.user.pw_name, entry["vm"], entry["domain"]))
            return outcome, message, info

        outcome, message, status = self._outcome(
            trip, interrupted=("while this command ran; it was not repeated: send it again"),
            not_run="the command was not run: send it again")
        if outcome == "done" and out[0] is not None:
            where = "/".join(("~", *layout.info, vm, action.output))
            message = f"{message}; in {where}" if message else f"in {where}"
        return outcome, message, status, out[0] if outcome == "done" else None

    def audit_locks(self, ctx: UserContext, domain: str) -> None:
        """The console lock's change to *domain*'s definition, in the audit log (SPEC 10)."""
        for locked in self.hv.take_locked(domain):
            self.audit.write("console-lock", user=ctx.user.pw_name, uid=ctx.user.pw_uid,
                             domain=locked, change="graphics passwd='' in the persistent "
                             "definition (closed from its next start)")

    def snapshot(self, user: str, vm: str, domain: str, action: Action, call: SnapshotCall,
                 params: dict[str, str]) -> tuple[str, str, dict[str, Any] | None]:
        """snapshot, revert, snapshot-delete (SPEC 11), within [snapshots] quotas."""
        limits = self.config.snapshots
        if not limits.enabled and call.op != "delete":
            return "rejected", ("the admin has turned snapshots off here ([snapshots] per_vm "
                                f"= {limits.per_vm}, per_user = {limits.per_user}); "
                                "deleting your own still works"), None
        others: dict[str, list[dict[str, Any]]] = {}
        if call.op == "create":
            # per_user sums over the domains the user's VM folders could name (from the
            # pass's listing: no call per host domain), read fresh, this one apart
            prefix = self.config.domain_name.format(user=user, vm="\0").partition("\0")[0]
            names = self.hv.names_from(prefix) if prefix else sorted(self.hv.names())
            theirs = [name for name in names if name != domain and
                      any(member == user for member, _ in self.claimants.find(name))]
            try:
                others = self.hv.snapshots_of(theirs) if theirs else {}
            except Unreachable as exc:
                return "failed", f"libvirt: {exc}; no snapshot was taken: send it again", None

        def check(existing: list[dict[str, Any]]) -> None:
            made = [s["name"] for s in existing if s["by"] != ADMIN]
            if len(made) >= limits.per_vm:
                raise Rejection(
                    f"the quota snapshots.per_vm = {limits.per_vm} is reached: {domain} has "
                    f"{len(made)} made through wirt ({', '.join(made)}); delete one first "
                    "(snapshot-delete --name NAME)")
            mine = [f"{name}/{s['name']}" for name, listed in sorted(others.items())
                    for s in listed if s["by"] == user]
            mine += [f"{domain}/{s['name']}" for s in existing if s["by"] == user]
            if len(mine) >= limits.per_user:
                raise Rejection(
                    f"the quota snapshots.per_user = {limits.per_user} is reached: you have "
                    f"{len(mine)} ({', '.join(mine)}); delete one first "
                    "(snapshot-delete --name NAME)")

        return self._outcome(
            lambda: self.hv.snapshot(domain, call.op, params["--name"], user,
                                     self._decider(user, vm, domain), check),
            interrupted=("while this command ran; it may or may not have taken effect and "
                         "was not repeated: 'wirt snapshots' shows what is there now"),
            not_run="the command was not run: send it again")

    def _decider(self, user: str, vm: str, domain: str) -> Decide:
        """Why *user*'s VM folder *vm* may not drive *domain*, given its owner metadata
        (owner, folder) read fresh: never the owner index's word alone."""
        by_name = domain == domain_for(self.config.domain_name, user, vm)

        def decide(owner: str | None, owner_vm: str | None) -> str | None:
            return owner_problem(user, domain, owner, self.claimants.find(domain, besides=user),
                                 vm=vm, meta_vm=owner_vm, by_name=by_name)
        return decide

    @staticmethod
    def _outcome(trip: Callable[[], tuple[str, str, DomainInfo | None]], *, interrupted: str,
                 not_run: str) -> tuple[str, str, dict[str, Any] | None]:
        """A trip to libvirt as an outcome: libvirt gone mid-call is ``interrupted`` (the
        request may have reached the VM), before it, or libvirt saying no, ``failed``."""
        try:
            outcome, message, info = trip()
        except Interrupted as exc:
            return "interrupted", f"libvirt: {exc} {interrupted}", None
        except Unreachable as exc:
            return "failed", f"libvirt: {exc}; {not_run}", None
        except libvirt.libvirtError as exc:
            return "failed", f"libvirt: {exc.get_error_message()}", None
        return outcome, message, info.as_status() if info is not None else None

    def _finish(self, cid: str, entry: dict[str, Any], outcome: str, message: str,
                started: float, status: dict[str, Any] | None) -> dict[str, Any]:
        self.journal.record(cid, "outcome", outcome=outcome, message=message,
                            audit_offset=self.audit.end())
        self.audit_command(cid, entry, outcome, message, time.monotonic() - started)
        return {"outcome": outcome, "message": message, "status": status,
                "action": entry.get("action"), "tokens": entry.get("tokens"),
                "read_at": time.time()}  # the state was read back just now

    def audit_command(self, cid: str, entry: dict[str, Any], outcome: str, message: str,
                      seconds: float) -> None:
        self.summary.counts[outcome] += 1
        self.audit.write(
            "command", id=cid, user=entry["user"], uid=entry["uid"], layout=entry["layout"],
            vm=entry["vm"], domain=entry["domain"], host=self.hv.host_of(entry["domain"]),
            file=printable(entry["file"], FILE_LIMIT),
            action=entry.get("action"), params=entry.get("tokens", []), outcome=outcome,
            reason=message[:TEXT_LIMIT], duration=round(seconds, 4),
        )
        self.report.command(entry, outcome, message)
        what = entry.get("action") or printable(entry["file"])
        self.say(f"{entry['user']} {entry['vm']} {what}: "
                 f"{outcome}{': ' + message if message else ''}")

    def on_recovered(self, ctx: UserContext, msg: dict[str, Any]) -> dict[str, Any]:
        write = []
        for item in msg["items"]:
            cid = item["id"]
            entry = self.journal.entries.get(cid)
            if entry is None or entry.get("uid") != ctx.user.pw_uid or cid in ctx.ids:
                raise ProtocolError(f"unknown command id {cid!r}")
            ctx.ids.add(cid)
            stage = entry.get("stage")
            if stage == "outcome":
                outcome, message = entry["outcome"], entry["message"]
                if not self.audit.contains(cid, entry.get("audit_offset", 0)):
                    self.audit_command(cid, entry, outcome, message, 0.0)
            elif stage == "begin" or item["claimed"]:
                outcome = "interrupted"
                message = ("the pass was stopped while handling this command; it was not "
                           "repeated: check the VM's state and send it again if needed")
                self.journal.record(cid, "outcome", outcome=outcome, message=message,
                                    audit_offset=self.audit.end())
                self.audit_command(cid, entry, outcome, message, 0.0)
            else:
                self.journal.record(cid, "closed")  # never claimed: the file is still pending
                continue
            if item["logged"]:
                self.journal.record(cid, "closed")
            else:
                write.append({**entry, "outcome": outcome, "message": message, "id": cid})
        return {"write": write}

    def on_settings(self, ctx: UserContext, msg: dict[str, Any]) -> dict[str, Any]:
        """The VM's settings file, new or changed: parsed again here, checked, applied once."""
        layout = _layout(msg["layout"], self.options.layouts)
        vm = check_vm_name(msg["vm"])
        uid = ctx.user.pw_uid
        if self.records.configs_of(uid).get(layout, {}).get(vm) == msg["digest"]:
            return {"unchanged": True}
        domain = self.domain_of(ctx.user, vm)
        entry: dict[str, Any] = {
            "uid": uid, "user": ctx.user.pw_name, "layout": layout, "vm": vm,
            "file": settings_rules.FILE, "domain": domain, "action": "config", "tokens": [],
        }
        started = time.monotonic()
        status: dict[str, Any] | None = None
        try:
            ambiguous = self.mapping(ctx.user.pw_name, vm)[1]
            if ambiguous:
                raise Rejection(f"config: {ambiguous}")
            wanted = self._wanted(msg)
            entry["tokens"] = [f"{k}={_shown_value(v)}" for k, v in sorted(wanted.items())]
        except Rejection as exc:
            outcome, message = "rejected", printable(str(exc), TEXT_LIMIT)
            if self.options.dry_run:
                self.say(f"{ctx.user.pw_name} {vm} config: would reject: {message}")
                return {"unchanged": True}
        else:
            if self.options.dry_run:
                self.say(f"{ctx.user.pw_name} {vm} config: would apply "
                         f"{' '.join(entry['tokens']) or 'nothing'} to {domain}")
                return {"unchanged": True}
            waits = self.hv.pending(domain)
            if not waits and self._quota_counted(wanted):
                down = self.hv.problems()  # a quota sums over every host (SPEC 13)
                waits = ("the quota sums over every host, and "
                         f"{'; '.join(down.values())}") if down else None
            if waits:
                return {"pending": waits}
            outcome, message, status = self.configure(ctx, vm, domain, wanted)
        if outcome != "interrupted":  # not known to be applied: the next pass tries again
            self.records.set_config(uid, layout, vm, msg["digest"])
        cid = f"{self.pass_id}-config-{vm}"
        self.audit_command(cid, entry, outcome, message, time.monotonic() - started)
        return {"outcome": outcome, "message": message, "status": status, "id": cid,
                "action": "config", "tokens": entry["tokens"], "read_at": time.time()}

    def _wanted(self, msg: dict[str, Any]) -> dict[str, Any]:
        if "rejected" in msg:  # the user side could not read it (a link, too big, ...)
            raise Rejection(msg["rejected"])
        if not self.config.settings.enabled:
            raise Rejection("config: the admin has turned settings off here "
                            "([settings] enabled = false); nothing of the file was applied")
        try:
            content = msg.get("content", "").encode("latin-1")
        except UnicodeEncodeError:
            raise ProtocolError("settings content is not bytes") from None
        return settings_rules.parse(content, self.config.limits.max_file_bytes)

    def _quota_counted(self, wanted: dict[str, Any]) -> bool:
        quota = self.config.quota
        return bool(quota.memory_mib and "memory_mib" in wanted
                    or quota.vcpus and "vcpus" in wanted)

    def configure(self, ctx: UserContext, vm: str, domain: str,
                  wanted: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
        user = ctx.user.pw_name
        limits, quota = self.config.settings, self.config.quota
        listing = self.catalogue()
        iso_path = None
        if wanted.get("cdrom") and listing is not None and wanted["cdrom"] in listing.names:
            iso_path = listing.path(wanted["cdrom"])  # the catalogue's own name, joined

        # the user's other domains, read before: the check below runs on libvirt's thread
        usage: dict[str, tuple[int, int]] = {}
        counted = [(key, index, limit) for key, index, limit in
                   (("memory_mib", 0, quota.memory_mib), ("vcpus", 1, quota.vcpus))
                   if limit and key in wanted]
        if counted:
            try:
                usage = self.hv.usage(user, lambda name, owner: owns(user, name, owner,
                                                                     self.claimants))
            except Unreachable as exc:
                return "failed", f"libvirt: {exc}; the settings were not applied", None

        def check(current: dict[str, Any]) -> None:
            settings_rules.check_limits(
                wanted, max_memory_mib=limits.max_memory_mib, max_vcpus=limits.max_vcpus,
                isos=None if listing is None else listing.names, has_cdrom=current["has_cdrom"])
            others = [use for name, use in usage.items() if name != domain]
            for key, index, limit in counted:
                settings_rules.check_quota(key, limit, sum(u[index] for u in others),
                                           wanted[key])

        return self._outcome(
            lambda: self.hv.configure(domain, wanted, iso_path,
                                      self._decider(user, vm, domain),
                                      check),
            interrupted=("while the settings were applied; they may or may not have taken "
                         "effect: the next pass tries again"),
            not_run="the settings were not applied")

    def isos_listing(self) -> tuple[str, str]:
        """What ~/wirt/info/isos.txt holds this pass, and its digest (made once a pass: the
        idle path asks for every member)."""
        if self._isos is None:
            found = self.catalogue()
            names = found.names if found is not None else ()
            self._isos = catalogue.listing_text(names), catalogue.listing_digest(names)
        return self._isos

    def isos_digest(self) -> str:
        return self.isos_listing()[1]

    def catalogue(self) -> catalogue.Catalogue | None:
        """The ISO catalogue, read (and checked) once per pass; None if off or unusable."""
        if not self._catalogue_read:
            self._catalogue_read = True
            folder = self.config.settings.iso_dir
            if folder:
                try:
                    self._catalogue = catalogue.read_catalogue(folder)
                except WirtError as exc:
                    self.report.note(f"ISO catalogue: {exc}")
                    self.audit.write("catalogue-unusable", reason=str(exc))
        return self._catalogue

    def on_notices(self, ctx: UserContext, msg: dict[str, Any]) -> dict[str, Any]:
        uid = ctx.user.pw_uid
        new = []
        recorded = 0
        for item in msg["items"]:
            layout = _layout(item["layout"], self.options.layouts)
            key = notice_key(layout, item["key"])
            text = printable(item["message"], TEXT_LIMIT)
            if self.records.notice_seen(uid, key):
                new.append({"layout": layout, "message": text})
                recorded += 1
                if recorded <= NOTICE_RECORDS:
                    self.audit.write("notice", user=ctx.user.pw_name, uid=uid,
                                     layout=layout, message=text)
            if self.options.dry_run:
                self.say(f"{ctx.user.pw_name}: {text}")
        if recorded > NOTICE_RECORDS:
            self.audit.write("notice", user=ctx.user.pw_name, uid=uid, layout=None,
                             count=recorded - NOTICE_RECORDS,
                             message=f"and {recorded - NOTICE_RECORDS} more new notices "
                             "like these (told to the user in their own log)")
        return {"new": new}

    def on_bye(self, ctx: UserContext, msg: dict[str, Any]) -> dict[str, Any]:
        self.records.served(ctx.user.pw_uid)  # notices gone now are reported anew
        statuses: dict[str, dict[str, list[Any]]] = {}
        for layout, vms in msg["statuses"].items():
            _layout(layout, self.options.layouts)
            statuses[layout] = {check_vm_name(vm): seen for vm, seen in vms.items()}
        self.records.set_idle(ctx.user.pw_uid, statuses)
        if msg.get("isos") == self.isos_digest():
            self.records.set_isos(ctx.user.pw_uid, msg["isos"])
        if msg.get("vms") and msg["vms"] == self.vms_listing(ctx.user.pw_name)[1]:
            self.records.set_vms(ctx.user.pw_uid, msg["vms"])
        return {}


Handler = Callable[[Monitor, UserContext, dict[str, Any]], dict[str, Any] | Deferred]

# Every request a user side may make (its shape and order: rules.protocol).
HANDLERS: dict[str, Handler] = {
    protocol.RECOVERED: Monitor.on_recovered,
    protocol.INVENTORY: Monitor.on_inventory,
    protocol.INTEND: Monitor.on_intend,
    protocol.UNCLAIMED: Monitor.on_unclaimed,
    protocol.RUN: Monitor.on_run,
    protocol.SETTINGS: Monitor.on_settings,
    protocol.NOTICES: Monitor.on_notices,
    protocol.BYE: Monitor.on_bye,
}
if set(HANDLERS) != set(protocol.REQUESTS):  # not an assert: python -O keeps this
    raise ImportError("monitor: HANDLERS and protocol.REQUESTS disagree")


def _shown_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _layout(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed or value not in LAYOUTS:
        raise ProtocolError(f"layout {value!r} is not served in this pass")
    return value
