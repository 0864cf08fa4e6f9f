"""The scheduler of a pass (runs as root; distrusts every user side).

For each member of the group it checks the account with PAM, asks the
prober for a quick look, and where there is work forks a child that becomes
the user (:mod:`wirt_wrapper.boundary.privsep`); every request of that child
is answered by :class:`wirt_wrapper.root.monitor.Monitor`.  A few users are
served at once; a user side that breaks the protocol, stalls or dies ends
its own turn and nobody else's.
"""

from __future__ import annotations

import os
import pwd
import select
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from wirt_wrapper.boundary import privsep
from wirt_wrapper.boundary.channel import Timeout
from wirt_wrapper.root import notify
from wirt_wrapper.root.accounts import AccountChecker, group_lists, members
from wirt_wrapper.root.audit import AuditLog, Journal
from wirt_wrapper.root.hosts import Hosts
from wirt_wrapper.root.hypervisor import Unreachable
from wirt_wrapper.root.monitor import Deferred, Monitor, Options, Summary, UserContext
from wirt_wrapper.root.owners import OwnerIndex
from wirt_wrapper.root.records import Records, notice_key
from wirt_wrapper.root.state import prepare_state
from wirt_wrapper.rules.actions import Claimants, Rejection, check_vm_name
from wirt_wrapper.rules.config import Config
from wirt_wrapper.rules.errors import ProtocolError
from wirt_wrapper.rules.layouts import LAYOUTS
from wirt_wrapper.rules.protocol import UserJob
from wirt_wrapper.rules.status import info_digest

__all__ = ["Options", "Pass", "Summary"]

# Users served at the same time: their children read homes while root answers.
PARALLEL_USERS = 16
# Questions the prober may owe at once (answers are read as they come).
LOOK_AHEAD = 32


def drain(fd: int) -> None:
    """Read a non-blocking pipe empty."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


class Pass:
    """One pass over every member (or some: --user, or the users a watch was hinted)."""

    def __init__(self, config: Config, options: Options, spawner: privsep.Spawner,
                 prober: privsep.Prober | None = None) -> None:
        prepare_state(config)
        iso_dir = os.path.realpath(config.settings.iso_dir) if config.settings.iso_dir else ""
        self.hv = Hosts.from_config(config, iso_dir)
        self.hv.start_connect()  # listed meanwhile; run() waits for it
        self.spawner = spawner
        self.prober = prober
        self.to_look: deque[pwd.struct_passwd] = deque()  # for the prober, not asked yet
        self.looking: deque[pwd.struct_passwd] = deque()  # asked the prober, in order
        self.look_deadline = 0.0
        self.full: deque[pwd.struct_passwd] = deque()  # waiting for a full turn
        self.config = config
        self.options = options
        self.summary = Summary()
        self.told_down: set[str] = set()  # the hosts whose being down is audited
        self.audit = AuditLog(config.audit_log, dry_run=options.dry_run)
        self.journal = Journal(config.state_dir, dry_run=options.dry_run)
        self.records = Records(None if options.dry_run else config.state_dir)
        self.hv.snapshot_cache = self.records.snapshots  # the same dict: saved with the records
        self.hv.details_cache = self.records.details  # likewise
        self.owners = OwnerIndex(None if options.dry_run else config.state_dir)
        self.groups: dict[str, tuple[int, ...]] = {}
        self.report = notify.Report()  # for syslog and mail at the end
        self.monitor = Monitor(config, options, self.hv, self.audit, self.journal,
                               self.records, self.report, self.summary)
        # looks waiting for their domains' details: (user, look, domain names)
        self.deferred: deque[tuple[pwd.struct_passwd, dict[str, Any], list[str]]] = deque()
        # users whose look found every status.xml current: their status-checked gets
        # the snapshot's time at the end (one batch to the prober)
        self.checked: list[tuple[pwd.struct_passwd, str]] = []
        # members whose turn may have left work (the file limit reached, or cut short):
        # the watch service serves them again, as no change will hint them
        self.unfinished: set[str] = set()
        # the watch service's mini pass: joining(in_pass) names members hinted while the
        # pass runs, served in it too (the same checks and path) instead of after it
        self.joining: Callable[[set[str]], list[str]] | None = None
        # asked at most every join_every s, and when join_fd (the service's selector) is
        # readable: a pass whose user sides are all quiet (one stalled, say) still asks
        self.join_fd: int | None = None
        self.join_every = 0.0
        self.asked_join = 0.0
        # ... and looked_idle(name) is told when a member's look found nothing to do: the
        # service may let them join once more (their hint came before the file it was for)
        self.looked_idle: Callable[[str], bool] | None = None
        self.everyone: dict[str, pwd.struct_passwd] = {}  # the members, by name
        self.in_pass: set[str] = set()  # the members this pass serves (joined ones too)
        self.counted: set[str] = set()  # the members counted in summary.users
        # user sides (by channel descriptor) whose answer waits for a trip to libvirt
        self.parked: dict[int, Deferred] = {}

    def say(self, text: str) -> None:
        self.monitor.say(text)

    # -- the pass ------------------------------------------------------------
    def run(self) -> Summary:
        started = time.monotonic()
        try:
            self.hv.connect()
        except Unreachable as exc:
            self.summary.libvirt_down = str(exc)
            if not self.hv.named:
                self.told_down = set(self.hv.problems())
                self.audit.write("libvirt-unreachable", reason=str(exc))
                print(f"wirt: libvirt unreachable, commands stay pending: {exc}",
                      file=sys.stderr)
        self.tell_hosts_down("its commands stay pending")
        try:
            group = members(self.config.group)
        except KeyError:
            print(f"wirt: group '{self.config.group}' does not exist", file=sys.stderr)
            group = []
        names = [u.pw_name for u in group]
        self.monitor.claimants = Claimants(self.config.domain_name, names)
        try:
            self.monitor.learn_owners(self.owners)
        except Unreachable as exc:  # lost meanwhile: the pass goes on as for libvirt down
            print(f"wirt: libvirt went away while reading owner metadata: {exc}",
                  file=sys.stderr)
        self.groups = group_lists(group)
        self.records.prune({u.pw_uid for u in group})
        self.everyone = {u.pw_name: u for u in group}
        if self.options.users is not None:
            for name in sorted(self.options.users - set(names)):
                print(f"wirt: {name} is not a member of {self.config.group}", file=sys.stderr)
            group = [u for u in group if u.pw_name in self.options.users]
        self.in_pass = {u.pw_name for u in group}
        with AccountChecker(self.config.pam_service) as accounts:
            self.serve_all(group, accounts)
        if self.config.console.lock and not self.hv.down:
            self.open_consoles(names)
        self.journal.compact()
        if self.hv.all_listed():  # else a host that is down keeps its domains' lists
            self.records.keep_snapshots(set(self.hv.names()))
        self.records.save()
        self.owners.save()
        self.hv.close()
        self.summary.seconds = time.monotonic() - started
        self.tell_hosts_down("lost during the pass; its remaining commands stay pending")
        if self.hv.down and not self.summary.libvirt_down:  # lost during the pass
            self.summary.libvirt_down = self.hv.down
            self.audit.write("libvirt-unreachable", reason=self.hv.down)
            print(f"wirt: libvirt went away during the pass, the remaining commands stay "
                  f"pending: {self.hv.down}", file=sys.stderr)
        if self.summary.libvirt_down:
            self.report.note(f"libvirt unreachable, commands stay pending: "
                             f"{self.summary.libvirt_down}")
        if self.options.quiet_idle and not any(self.summary.counts.values()) \
                and not self.report.problems and not self.report.notes:
            self.audit.close()
            return self.summary
        self.audit.write("pass", summary=self.summary.line(), **self.summary.counts)
        if not self.options.dry_run:
            notify.after_pass(self.config, self.summary, self.report, self.audit)
        self.audit.close()
        return self.summary

    def tell_hosts_down(self, what: str) -> None:
        """With [[hosts]]: one audit record (and stderr line) for each host newly down;
        the pass summary names them all."""
        if not self.hv.named:
            return
        problems = self.hv.problems()
        for host, why in problems.items():
            if host not in self.told_down:
                self.told_down.add(host)
                self.audit.write("libvirt-unreachable", host=host, reason=why)
                print(f"wirt: {why} ({what})", file=sys.stderr)
        if problems:
            self.summary.libvirt_down = "; ".join(problems.values())

    def open_consoles(self, members: list[str]) -> None:
        """Members' running domains whose console has no password (started before the
        console lock closed it): in the admin's digest until they restart (SPEC 10)."""
        for domain, owner, graphics in self.hv.open_consoles():
            found = self.monitor.claimants.find(domain)
            user = owner if owner is not None else (found[0][0] if found else None)
            if user is None or user not in members:
                continue
            where = f"{graphics.get('listen') or '?'} port {graphics.get('port') or '?'}"
            self.report.digest(
                f"open console: {domain} (user {user}) runs with a console without a "
                f"password ({graphics.get('type')} {where}), open to every local user; "
                "the console lock closes it when the VM is shut down and started again")

    def serve_all(self, users: list[pwd.struct_passwd], accounts: AccountChecker) -> None:
        """Serve every user: a quick look first (the prober), a full turn if there is work.

        Full turns run a few at a time; each ends by 'bye', error or deadline.
        """
        wake, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.hv.wake_fd = wake_w
        try:
            self._serve_all(users, accounts, wake)
        finally:
            self.hv.wake_fd = None  # before the close: a late callback must not write there
            os.close(wake)
            os.close(wake_w)
        self.mark_checked()

    def _serve_all(self, users: list[pwd.struct_passwd], accounts: AccountChecker,
                   wake: int) -> None:
        """serve_all's loop; *wake* is readable when a read of domain details, or a parked
        answer's trip, is done."""
        for user in users:
            self.start(user, accounts)
        active: dict[int, UserContext] = {}
        while self.full or active or self.looking or self.to_look or self.deferred:
            if self.joining is not None and time.monotonic() >= self.asked_join + self.join_every:
                self.asked_join = time.monotonic()
                for name in self.joining(self.in_pass):
                    if name in self.everyone and name not in self.in_pass:
                        self.in_pass.add(name)
                        self.start(self.everyone[name], accounts)
            while self.to_look and len(self.looking) < LOOK_AHEAD:
                self.ask_prober(self.to_look.popleft())
            while self.full and len(active) < PARALLEL_USERS:
                ctx = self.start_full(self.full.popleft())
                active[ctx.child.fileno()] = ctx
            if self.deferred:
                # the details come in the order asked (one libvirt thread per host): the
                # ready ones are at the front; with nothing else to do, wait for the next
                waiting = bool(active or self.looking)
                decided = 0
                while self.deferred and (decided == 0 and not waiting
                                         or self.hv.details_ready(self.deferred[0][2])):
                    user, report, _ = self.deferred.popleft()
                    self.decide(user, report)
                    decided += 1
                if decided:
                    continue
            # a user side whose answer waits for libvirt sends nothing meanwhile: its turn's
            # time limit is checked again when the answer goes out (as when root waited for
            # the call), the trip's own deadline (libvirt_timeout) is the one to wake for
            waits = [c.child.channel.deadline or 0.0 for fd, c in active.items()
                     if fd not in self.parked]
            waits += [answer.trip.deadline for answer in self.parked.values()]
            fds: list[int] = [fd for fd in active if fd not in self.parked]
            if self.deferred or self.parked:  # libvirt's answers: woken when they come
                fds.append(wake)
            if self.deferred:
                waits.append(time.monotonic() + self.config.limits.seconds_per_user)
            if self.looking and self.prober is not None:
                waits.append(self.look_deadline)
                fds.append(self.prober.fileno())
            if self.join_fd is not None:  # hints meanwhile: woken for them, not more often
                if time.monotonic() >= self.asked_join + self.join_every:
                    fds.append(self.join_fd)
                else:
                    waits.append(self.asked_join + self.join_every)
            if not fds and not waits:
                continue
            timeout = max(0.0, min(waits) - time.monotonic()) if waits else None  # join_fd alone
            ready, _, _ = select.select(fds, [], [], timeout)
            now = time.monotonic()
            if wake in ready:
                drain(wake)
            if self.prober is not None and self.prober.fileno() in ready:
                self.take_look()
            elif self.looking and now >= self.look_deadline:
                self.prober_failed("no answer within the time limit")
            for fd, answer in list(self.parked.items()):  # in the order they were started
                if answer.trip.done() or now >= answer.trip.deadline:
                    del self.parked[fd]
                    if self.resume(active[fd], answer):
                        self.end(active.pop(fd))
            expired = [fd for fd, c in active.items() if now >= (c.child.channel.deadline or 0.0)
                       and fd not in self.parked]
            for fd in (set(ready) | set(expired)) & set(active) - set(self.parked):
                ctx = active[fd]
                if self.step(ctx):
                    del active[fd]
                    self.end(ctx)

    def decide(self, user: pwd.struct_passwd, report: dict[str, Any]) -> None:
        """After a look: a full turn, or (nothing to do) a note that its status is current."""
        if self.needs_turn(user, report):
            self.full.append(user)
            return
        if self.looked_idle is not None and self.looked_idle(user.pw_name):
            self.in_pass.discard(user.pw_name)  # may join again, once
        if self.hv.down:
            return  # nothing was read: nothing is confirmed
        for layout, look in report.items():
            if LAYOUTS[layout].info is not None and isinstance(look, dict) \
                    and look.get("spool") == "ok" and look.get("vms"):
                self.checked.append((user, layout))

    def mark_checked(self, batch: int = 1000) -> None:
        """Idle users' status-checked file gets the time libvirt was read (SPEC 2c): the
        look and the snapshot showed every status.xml current, so none was rewritten."""
        if not self.checked or self.prober is None or self.options.dry_run:
            return
        ns = int(self.hv.read_at * 1e9)
        checked, self.checked = self.checked, []
        items = [(self._identity(user), {"home": user.pw_dir, "uid": user.pw_uid,
                                         "layout": layout, "ns": ns})
                 for user, layout in checked]
        try:
            for start in range(0, len(items), batch):
                for index in self.prober.mark(items[start:start + batch],
                                              self.config.limits.seconds_per_user):
                    if 0 <= index < batch and start + index < len(checked):
                        # missing or not a plain file of theirs: the next pass gives the
                        # user a full turn, which makes it again or tells them why not
                        self.records.forget_idle(checked[start + index][0].pw_uid)
        except (EOFError, OSError, ProtocolError, Timeout) as exc:
            self.prober_failed(f"cannot mark checked status: {exc}")

    def start(self, user: pwd.struct_passwd, accounts: AccountChecker) -> None:
        """Check the account; then ask for a look, or queue a full turn straight away."""
        problem = accounts.problem(user.pw_name)
        if problem:
            self.summary.skipped += 1
            self.audit.write("user-skipped", user=user.pw_name, uid=user.pw_uid, reason=problem)
            self.say(f"{user.pw_name}: skipped: {problem}")
            return
        if user.pw_name not in self.counted:  # a member who joins a pass again: once
            self.counted.add(user.pw_name)
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
        except (OSError, Timeout) as exc:  # the prober died: a full turn for all
            self.prober_failed(f"cannot ask the prober: {exc}")

    def take_look(self) -> None:
        """The prober's answer for the oldest user it was asked about."""
        if self.prober is None:
            return
        try:
            report = self.prober.answer(self.config.limits.seconds_per_user)
        except (EOFError, OSError, ProtocolError, Timeout) as exc:
            self.prober_failed(str(exc))
            return
        user = self.looking.popleft()
        self.look_deadline = time.monotonic() + self.config.limits.seconds_per_user
        if set(report) != set(self.options.layouts):
            self.full.append(user)  # not a look we understand: have a full look
            return
        names = self.domains_looked(user, report)
        self.hv.request(names)  # read on the libvirt thread while other looks come in
        if self.hv.details_ready(names):
            self.decide(user, report)
        else:  # deciding needs the domains' details, still on their way from libvirt
            self.deferred.append((user, report, names))

    def domains_looked(self, user: pwd.struct_passwd, report: dict[str, Any]) -> list[str]:
        """The domains whose details deciding on *report* needs: those of the VM folders
        of the layouts with a status.xml (the only ones needs_turn compares)."""
        names = []
        for layout, look in report.items():
            vms = look.get("vms") if isinstance(look, dict) else None
            if LAYOUTS[layout].info is None or not isinstance(vms, dict):
                continue
            for vm in vms:
                try:
                    names.append(self.monitor.domain_of(user, check_vm_name(vm)))
                except (Rejection, TypeError):
                    continue  # needs_turn sees it
        if any(LAYOUTS[layout].info is not None for layout in report):  # vms.json's
            names += self.monitor.owned_candidates(user.pw_name)
        return names

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
        recover = [] if self.options.dry_run else self.journal.open_for(user.pw_uid)
        job = UserJob(
            user=user.pw_name, uid=user.pw_uid, home=user.pw_dir,
            layouts=self.options.layouts, max_files=self.config.limits.max_files_per_user,
            max_bytes=self.config.limits.max_file_bytes, dry_run=self.options.dry_run,
            log_max_bytes=self.config.limits.log_max_bytes,
            log_keep=self.config.limits.log_keep, recover=recover,
        )
        job.isos_text, job.isos_digest = self.monitor.isos_listing()
        job.isos_known = self.records.isos_of(user.pw_uid)
        try:
            job.vms_text, job.vms_digest = self.monitor.vms_listing(user.pw_name)
        except Unreachable:
            pass  # lost meanwhile: not written this turn
        job.vms_known = self.records.vms_of(user.pw_uid)
        child = self.spawner.spawn(self._identity(user), vars(job))
        child.channel.deadline = time.monotonic() + self.config.limits.seconds_per_user
        return self.monitor.turn(user, child, recovering=bool(recover))

    def _identity(self, user: pwd.struct_passwd) -> privsep.Identity:
        return privsep.Identity(user.pw_name, user.pw_uid, user.pw_gid, self.groups[user.pw_name])

    def step(self, ctx: UserContext) -> bool:
        """Answer one request of *ctx*'s child (or start to: a Deferred answer is parked
        until its trip to libvirt is done, see :meth:`resume`); True when its turn is over."""
        return self._answering(ctx, lambda: self.monitor.answer(ctx, ctx.child.channel.recv()))

    def resume(self, ctx: UserContext, answer: Deferred) -> bool:
        """Send *ctx*'s parked answer, its trip done (or past its deadline)."""
        return self._answering(ctx, answer.finish)

    def _answering(self, ctx: UserContext,
                   reply_of: Callable[[], dict[str, Any] | Deferred | None]) -> bool:
        try:
            reply = reply_of()
            if reply is None:
                return True  # 'bye': the child is done
            if isinstance(reply, Deferred):
                self.parked[ctx.child.fileno()] = reply
                return False
            ctx.child.channel.send(reply)
            return False
        except Timeout:
            ctx.problem = (f"time limit of {self.config.limits.seconds_per_user:g} s reached; "
                           "the remaining commands wait for the next pass")
        except (EOFError, OSError, ProtocolError, Rejection, ValueError, KeyError,
                TypeError) as exc:  # a subverted user side ends its own turn, nobody else's
            ctx.problem = f"user side ended early: {exc}"
        return True

    def end(self, ctx: UserContext) -> None:
        ctx.child.end(kill=ctx.problem is not None)
        if ctx.problem or ctx.turn.commands >= self.config.limits.max_files_per_user:
            self.unfinished.add(ctx.user.pw_name)
        if ctx.problem:
            user = ctx.user
            self.audit.write("user-incomplete", user=user.pw_name, uid=user.pw_uid,
                             reason=ctx.problem[:500])
            self.report.note(f"{user.pw_name}: {ctx.problem[:500]}")
            self.say(f"{user.pw_name}: {ctx.problem}")

    def needs_turn(self, user: pwd.struct_passwd, report: dict[str, Any]) -> bool:
        """Whether the prober's look shows anything for a full user side to do."""
        cached = self.records.idle_of(user.pw_uid)
        reported = self.records.reported_keys(user.pw_uid)
        if not self.hv.down and any(LAYOUTS[layout].info is not None for layout in report):
            try:
                if self.monitor.vms_listing(user.pw_name)[1] != \
                        self.records.vms_of(user.pw_uid):
                    return True  # ~/wirt/info/vms.json is to be written (or rewritten)
            except Unreachable:
                return True
        for layout, look in report.items():
            if not isinstance(look, dict):
                continue
            vms, odd = look.get("vms"), look.get("odd", [])
            if not isinstance(odd, list) or any(
                    not isinstance(key, str) or notice_key(layout, key) not in reported
                    for key in odd):
                return True  # a stray entry the user has not been told about yet
            if look.get("spool") == "absent":
                continue
            if look.get("spool") != "ok" or not isinstance(vms, dict):
                return True  # a command, or something the full side must look at
            if self.hv.down:
                continue  # nothing to refresh (or apply) it from
            for vm, seen in vms.items():
                if not isinstance(seen, list) or len(seen) != 2:
                    return True
                expected: list[Any] = [None, None, seen[1]]  # no status.xml in this layout
                if LAYOUTS[layout].info is not None:
                    try:
                        status = self.monitor.status_for(user, check_vm_name(vm))
                    except (Unreachable, Rejection):
                        return True
                    expected = [info_digest(status), seen[0], seen[1]]
                if cached.get(layout, {}).get(vm) != expected:
                    return True  # a new VM or state, a status.xml someone touched, a new config
            if LAYOUTS[layout].info is not None and \
                    self.monitor.isos_digest() != self.records.isos_of(user.pw_uid):
                return True  # the ISO catalogue changed: isos.txt is to be written
        return False
