"""``virsh_wrapper --watch``: serve a user as soon as their spool changes (runs as root).

SPEC section 12, SECURITY.md row 18.  The service holds the pass lock (taken
by :mod:`wirt_wrapper.root.main`) for as long as it runs, so cron passes
beside it exit at once.  It starts with a full pass (which settles the
journal, as every pass does), runs one every ``watch.full_pass_seconds``,
and in between a *mini pass* (:class:`wirt_wrapper.root.scheduler.Pass`
restricted to some users: the same PAM, group, prober and user-side path)
for the users it was hinted about.

Hints come from inotify instances that each user's own process creates and
fills (:mod:`wirt_wrapper.user.watch`, forked by the spawner and dropped for
good): root never resolves a path in a home.  Root receives the descriptor
over the placer's channel, checks that it is an inotify instance, and waits
on all of them with :mod:`selectors` (no 1024-descriptor limit).  A readable
descriptor is drained and its user is hinted; root reads only each event's
mask (never its name): a folder created, moved or gone, a watch dropped or
a queue overflow means the user's watches are placed again after the
user's turn (a fresh placer; the old descriptor is closed once the new one
is in, and one more turn covers the moment between them).

A burst (a file in every member's VM folders at once) lands while the
first mini pass, started by its first hint, runs: members hinted meanwhile
*join* that pass (:meth:`Service.join`, polled by the pass between its
steps: the same account checks, look and user side) instead of waiting for
it to end and a second pass; the last ones hinted would otherwise wait
for a whole pass of the others.  A member joins a pass once; their next
hint waits for the next mini pass.  Once more only when their look found
nothing to do: the hint came a moment before the file it was for (a dot
file written, then renamed into place), and that file joins the pass too
(:meth:`Service.look_again`).

A turn's own claims (each command file renamed from its VM folder into
history) queue ``IN_MOVED_FROM`` events on the member's descriptor.  Root
knows how many (one per ``run`` request) and does not count that many as a
hint when it next reads the descriptor (:func:`not_own`): without that,
every served member was hinted by their own turn and had one more (idle)
look, a mini pass of everyone after a burst.  Only plain files moved out
are discounted; anything else the user did meanwhile is still a hint.

Fairness: each user has a token bucket of ``watch.user_turns_per_second``;
hints beyond it wait (the user's descriptor is not read meanwhile, so a
flood costs root nothing) and are never dropped.  A user whose watches
cannot be placed (no watches left: ENOSPC, or anything else) is served by
the periodic full pass only, and the admin is told once (syslog and the
next pass's digest); placing is tried again at each full pass.

Killed at any point, nothing is lost or run twice: every command goes
through the journal exactly as in a pass, and the next start (or cron pass)
settles what it holds.
"""

from __future__ import annotations

import os
import pwd
import resource
import selectors
import signal
import struct
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from wirt_wrapper.boundary import privsep
from wirt_wrapper.boundary.channel import Timeout
from wirt_wrapper.root import notify
from wirt_wrapper.root.accounts import AccountChecker, group_lists, members
from wirt_wrapper.root.audit import AuditLog
from wirt_wrapper.root.monitor import Options, Summary
from wirt_wrapper.root.owners import OwnerIndex
from wirt_wrapper.root.scheduler import Pass
from wirt_wrapper.rules import protocol
from wirt_wrapper.rules.actions import Claimants, printable
from wirt_wrapper.rules.config import Config
from wirt_wrapper.rules.errors import ProtocolError
from wirt_wrapper.rules.inotify import (
    IN_CREATE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_ISDIR,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
)

__all__ = ["Service", "TurnBucket", "needs_rearm", "not_own", "read_masks"]

_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
READ_SIZE = 1 << 16
PLACER_SECONDS = 10.0  # a placer that has not answered by then is given up (fallback)
JOIN_POLL = 0.005  # seconds between a mini pass's looks for members hinted meanwhile


def read_masks(fd: int) -> list[int] | None:
    """Drain inotify descriptor *fd*: the masks of its events (names skipped, never read).

    None: the descriptor is broken (closed by the kernel, an odd read).
    """
    masks: list[int] = []
    while True:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return masks
        except OSError:
            return None
        if not data:
            return None
        offset = 0
        while offset + _EVENT.size <= len(data):
            _, mask, _, size = _EVENT.unpack_from(data, offset)
            masks.append(mask)
            offset += _EVENT.size + size
        if offset != len(data):
            return None
        if len(masks) > 1 << 20:  # the kernel's queue is far smaller: something is odd
            return None


def not_own(masks: list[int], own: int) -> list[int]:
    """*masks* without *own* plain-file ``IN_MOVED_FROM`` events: those of the command files
    the member's last turn moved out of their VM folders into history (one per claim,
    :attr:`Monitor.claimed`).  A file leaving a folder is never new work, and anything the
    user did besides (a file made, moved in, changed; a folder's event; one file more moved
    out than the turn claimed) stays a hint."""
    if own <= 0:
        return masks
    kept = []
    for mask in masks:
        if own and mask == IN_MOVED_FROM:
            own -= 1
        else:
            kept.append(mask)
    return kept


def needs_rearm(mask: int) -> bool:
    """Whether an event says the user's watches no longer cover their spool."""
    if mask & (IN_IGNORED | IN_Q_OVERFLOW | IN_DELETE_SELF | IN_MOVE_SELF):
        return True
    return bool(mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM))


def is_inotify(fd: int) -> bool:
    """Whether *fd* (received from a user's process) is an inotify instance."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
    except OSError:
        return False


@dataclass
class TurnBucket:
    """A token bucket: *rate* turns a second, at most *capacity* saved up."""

    rate: float
    capacity: float
    tokens: float = 0.0
    last: float = 0.0

    def __post_init__(self) -> None:
        self.tokens = self.capacity

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now

    def ready_at(self, now: float) -> float:
        self._refill(now)
        return now if self.tokens >= 1 else now + (1 - self.tokens) / self.rate

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1


@dataclass
class Watched:
    """One user's inotify instance (the descriptor a placer handed over)."""

    uid: int
    fd: int
    watches: int


@dataclass
class Placing:
    """A placer at work: its channel, and when it is given up."""

    name: str
    child: privsep.Child
    deadline: float


@dataclass
class _Stats:
    passes: int = 0
    mini: int = 0
    turns: dict[str, int] = field(default_factory=dict)


class Service:
    """The watch service's loop; one object per ``virsh_wrapper --watch``."""

    def __init__(self, config: Config, layouts: tuple[str, ...], spawner: privsep.Spawner,
                 prober: privsep.Prober | None, *, verbose: bool = False,
                 events: Any = None) -> None:
        self.config = config
        self.layouts = layouts
        self.spawner = spawner
        self.prober = prober
        self.verbose = verbose
        self.events = events  # root.events.LifecycleEvents, or None
        self.selector = selectors.DefaultSelector()
        self.watched: dict[str, Watched] = {}
        self.placing: dict[str, Placing] = {}
        self.pending: dict[str, float] = {}  # user -> when first hinted (not served yet)
        self.rearm: set[str] = set()
        # user -> command files their turn in the last pass moved out of watched folders:
        # those events are the turn's own, not hints (see not_own); for the next drain only
        self.own_moves: dict[str, int] = {}
        self.joined: list[str] = []  # members who joined the mini pass under way
        self.looked_again: set[str] = set()  # members listened to again during it (idle look)
        self.fallback: dict[str, str] = {}  # user -> why: served by the full pass only
        self.told: set[str] = set()  # users the admin was told about (until it works again)
        self.notes: list[str] = []  # for the next pass's digest
        self.buckets: dict[str, TurnBucket] = {}
        self.uids: dict[str, int] = {}
        self.stopping = False
        self.next_full = 0.0
        self.stats = _Stats()
        self.syslog = notify.Syslog(config.syslog_socket)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.selector.register(self.wake_r, selectors.EVENT_READ, ("wake", ""))
        if events is not None:
            self.selector.register(events.fileno(), selectors.EVENT_READ, ("events", ""))

    # -- life -------------------------------------------------------------------------
    def stop(self, *_: Any) -> None:
        """SIGTERM, SIGINT: finish the pass at hand, then exit (releasing the lock)."""
        self.stopping = True
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass

    def run(self) -> None:
        _raise_fd_limit()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.stop)
        # the first watches before the first full pass: it covers whatever came before they
        # were in (placed() hints each member for that; the pass takes those hints), so no
        # member needs a look of their own right after it
        self.sync_members()
        while self.placing and not self.stopping:
            self.wait(max(0.0, min(p.deadline for p in self.placing.values()) - time.monotonic()))
            self.expire_placers(time.monotonic())
        self.full_pass()
        self.tell(notify.LOG_INFO, f"watching the spools of {len(self.uids)} members of "
                  f"{self.config.group} ({len(self.watched)} with change hints); a full pass "
                  f"every {self.config.watch.full_pass_seconds:g} s")
        while not self.stopping:
            now = time.monotonic()
            self.wait(max(0.0, self.next_wake(now) - now))
            if self.stopping:
                break
            now = time.monotonic()
            self.expire_placers(now)
            if now >= self.next_full:
                self.full_pass()
                continue
            due = [name for name in self.pending if self.bucket(name).ready_at(now) <= now]
            if due:
                self.mini_pass(due)
        self.tell(notify.LOG_INFO, "watch stopped")
        self.close()

    def close(self) -> None:
        for watched in self.watched.values():
            os.close(watched.fd)
        self.watched.clear()
        for placing in self.placing.values():
            placing.child.end(kill=True)
        self.placing.clear()
        self.selector.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        self.syslog.close()

    def tell(self, severity: int, text: str) -> None:
        """stderr (the service's journal under systemd) and syslog."""
        print(f"virsh_wrapper: {text}", file=sys.stderr, flush=True)
        self.syslog.send(severity, f"watch: {text}")

    def bucket(self, name: str) -> TurnBucket:
        if name not in self.buckets:
            rate = self.config.watch.user_turns_per_second
            self.buckets[name] = TurnBucket(rate, max(1.0, rate))
        return self.buckets[name]

    def next_wake(self, now: float) -> float:
        wake = self.next_full
        for name in self.pending:
            wake = min(wake, self.bucket(name).ready_at(now))
        for placing in self.placing.values():
            wake = min(wake, placing.deadline)
        return wake

    # -- waiting ----------------------------------------------------------------------
    def wait(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            kind, name = key.data
            if kind == "wake":
                with suppress(OSError):
                    os.read(self.wake_r, 4096)
            elif kind == "events":
                self.take_events()
            elif kind == "inotify":
                self.drain(name)
            elif kind == "placer":
                self.placed(name)

    def drain(self, name: str) -> None:
        """Read a user's events: a hint, maybe a re-arm; the fd rests until their turn."""
        watched = self.watched.get(name)
        if watched is None:
            return
        masks = read_masks(watched.fd)
        if masks is None:
            masks = [IN_IGNORED]
        if any(needs_rearm(mask) for mask in masks):
            self.rearm.add(name)
        if not_own(masks, self.own_moves.pop(name, 0)):
            self.hint(name)

    def hint(self, name: str) -> None:
        if name not in self.uids:
            return
        self.pending.setdefault(name, time.monotonic())
        watched = self.watched.get(name)
        if watched is not None:  # waiting for the turn: the kernel queues the rest
            with suppress(KeyError, ValueError):
                self.selector.unregister(watched.fd)

    def take_events(self) -> None:
        """Domains libvirt told about (lifecycle events): hint every member who could own one:
        by its name, and the owner its metadata names (``wirt admin assign``, SPEC 4) as the
        owner index holds it.  Only a hint: their mini pass decides ownership afresh."""
        domains, reconnected = self.events.take()
        if reconnected:
            self.next_full = time.monotonic()
        if domains:
            claimants = Claimants(self.config.domain_name, list(self.uids))
            index = OwnerIndex(self.config.state_dir)  # assigned domains, whatever their name
            for domain, uuid in domains:
                for member, _ in claimants.find(domain):
                    self.hint(member)
                claim = index.claim_of(uuid)
                if claim is not None:
                    self.hint(claim[0])

    # -- passes -----------------------------------------------------------------------
    def run_pass(self, users: frozenset[str] | None) -> Summary:
        options = Options(layouts=self.layouts, users=users, verbose=self.verbose,
                          quiet_idle=users is not None)
        run = Pass(self.config, options, self.spawner, self.prober)
        if users is not None:  # a full pass serves everyone already
            run.joining = self.join
            run.join_fd, run.join_every = self.selector.fileno(), JOIN_POLL
            run.looked_idle = self.look_again
        for note in self.notes:
            run.report.note(note)
        self.notes = []
        summary = run.run()
        for name in run.in_pass:  # their turn's claims, still queued on their descriptor
            self.own_moves[name] = run.monitor.claimed.get(name, 0)
        for name in run.unfinished:  # work left that no change will hint
            self.hint(name)
        if run.prober is None:  # it failed during the pass: full user sides from now on
            self.prober = None
        if self.verbose:
            print(f"virsh_wrapper: {'full' if users is None else 'mini'} pass: "
                  f"{summary.line()}", flush=True)
        return summary

    def full_pass(self) -> None:
        for name in list(self.watched):  # what happened before this pass, it covers
            self.drain_quietly(name)
        for name in self.pending:  # not read while they waited for a turn (hint): again now
            self.listen(name)
        self.pending.clear()
        self.run_pass(None)
        self.stats.passes += 1
        self.next_full = time.monotonic() + self.config.watch.full_pass_seconds
        self.sync_members()

    def drain_quietly(self, name: str) -> None:
        self.own_moves.pop(name, None)  # read and dropped with the rest
        watched = self.watched.get(name)
        if watched is None:
            return
        masks = read_masks(watched.fd)
        if masks is None or any(needs_rearm(mask) for mask in masks):
            self.rearm.add(name)

    def mini_pass(self, due: list[str]) -> None:
        now = time.monotonic()
        for name in due:
            self.bucket(name).take(now)
            del self.pending[name]
            self.drain_quietly(name)  # served now: these hints are covered
        self.joined = []
        self.looked_again = set()
        self.run_pass(frozenset(due))
        self.stats.mini += 1
        served, self.joined = list(dict.fromkeys(due + self.joined)), []
        for name in served:
            self.stats.turns[name] = self.stats.turns.get(name, 0) + 1
            if name in self.rearm:
                self.rearm.discard(name)
                self.place(name)
            elif name in self.watched and name not in self.pending:
                self.listen(name)

    def join(self, in_pass: set[str]) -> list[str]:
        """Polled by the mini pass under way: the members hinted since it began whose turn
        is due (their bucket has a token, or their look came too early: :meth:`look_again`),
        taken as :meth:`mini_pass` takes its own.

        Only change hints and libvirt events are read here; a placer's answer and SIGTERM
        wait for the end of the pass (as during any pass).  The pass asks at most every
        JOIN_POLL s (Pass.join_every), and when its join_fd, this selector, is readable."""
        now = time.monotonic()
        for key, _ in self.selector.select(0):
            kind, name = key.data
            if kind == "inotify":
                self.drain(name)
            elif kind == "events":
                self.take_events()
        if self.stopping:
            return []
        # a member looked at again (look_again) rejoins without a token: the same turn, whose
        # look came too early; that happens once per pass
        joining = [name for name in self.pending if name not in in_pass and (
            name in self.looked_again or self.bucket(name).ready_at(now) <= now)]
        for name in joining:
            if name not in self.looked_again:
                self.bucket(name).take(now)
            elif self.verbose:
                print(f"virsh_wrapper: {name} joins the mini pass under way again (their "
                      "look came before the file it was hinted for)", flush=True)
            del self.pending[name]
            self.drain_quietly(name)  # served now: these hints are covered
        self.joined += joining
        return joining

    def look_again(self, name: str) -> bool:
        """Told by the mini pass under way that *name*'s look found nothing to do: their
        hint came a moment before the file it was for (an editor's or ``wirt``'s dot file,
        then the rename into place).  Their descriptor is read again during this pass, so
        that file joins it instead of waiting for the next; once per member and pass (a
        pass stays bounded: each member joins it at most twice).  True if so."""
        if name in self.looked_again or name not in self.watched or self.stopping:
            return False
        self.looked_again.add(name)
        self.listen(name)
        return True

    def listen(self, name: str) -> None:
        with suppress(KeyError, ValueError):
            self.selector.register(self.watched[name].fd, selectors.EVENT_READ,
                                   ("inotify", name))

    # -- watches ----------------------------------------------------------------------
    def sync_members(self) -> None:
        """After a full pass: watches for every member (new ones, failed ones, re-arms),
        none for those who left the group."""
        try:
            group = members(self.config.group)
        except KeyError:
            group = []
        self.uids = {u.pw_name: u.pw_uid for u in group}
        for name in list(self.watched):
            if self.uids.get(name) != self.watched[name].uid:
                self.forget(name)
        self.buckets = {n: b for n, b in self.buckets.items() if n in self.uids}
        self.fallback = {n: why for n, why in self.fallback.items() if n in self.uids}
        wanted = [u for u in group if u.pw_name not in self.placing
                  and (u.pw_name not in self.watched or u.pw_name in self.rearm)]
        if not wanted:
            return
        groups = group_lists(group)
        with AccountChecker(self.config.pam_service) as accounts:
            for user in wanted:
                if accounts.problem(user.pw_name) is None:
                    self.rearm.discard(user.pw_name)
                    self.place(user.pw_name, user, groups[user.pw_name])
                elif user.pw_name in self.watched:
                    self.forget(user.pw_name)  # the pass skips them: no hints either

    def forget(self, name: str) -> None:
        watched = self.watched.pop(name)
        with suppress(KeyError, ValueError):
            self.selector.unregister(watched.fd)
        os.close(watched.fd)

    def place(self, name: str, user: pwd.struct_passwd | None = None,
              groups: tuple[int, ...] | None = None) -> None:
        """Start a placer for *name*; its answer comes in :meth:`placed`."""
        if name in self.placing:
            return
        try:
            user = user or pwd.getpwnam(name)
            if groups is None:
                groups = group_lists([user])[name]
        except KeyError:
            return
        identity = privsep.Identity(name, user.pw_uid, user.pw_gid, groups)
        job = {"home": user.pw_dir, "uid": user.pw_uid, "layouts": list(self.layouts),
               "limit": self.config.limits.max_files_per_user * 10}
        child = self.spawner.spawn(identity, job, target="watch")
        deadline = time.monotonic() + PLACER_SECONDS
        child.channel.deadline = deadline
        self.placing[name] = Placing(name, child, deadline)
        self.selector.register(child.fileno(), selectors.EVENT_READ, ("placer", name))

    def placed(self, name: str) -> None:
        placing = self.placing.pop(name)
        self.selector.unregister(placing.child.fileno())
        fds: list[int] = []
        try:
            message, fds = placing.child.channel.recv_fds(1)
            problem = protocol.check_watching(message)
            if problem is None and (len(fds) != 1 or not is_inotify(fds[0])):
                problem = "the placer sent no inotify instance"
        except (EOFError, OSError, ProtocolError, Timeout) as exc:
            problem = f"the placer ended early: {exc}"
        placing.child.end(kill=problem is not None)
        if problem is not None:
            for fd in fds:
                os.close(fd)
            self.failed(name, problem)
            return
        old = self.watched.get(name)
        uid = self.uids.get(name, -1)
        self.watched[name] = Watched(uid, fds[0], int(message["watches"]))
        self.own_moves.pop(name, None)  # they were queued on the old descriptor
        if old is not None:
            with suppress(KeyError, ValueError):
                self.selector.unregister(old.fd)
            os.close(old.fd)
        self.hint(name)  # one more look: what changed before the watches were in
        if name in self.told:
            self.told.discard(name)
            self.tell(notify.LOG_INFO, f"{name}: change hints work again")
        self.fallback.pop(name, None)
        if name not in self.pending:
            self.listen(name)

    def expire_placers(self, now: float) -> None:
        for name, placing in list(self.placing.items()):
            if now >= placing.deadline:
                del self.placing[name]
                self.selector.unregister(placing.child.fileno())
                placing.child.end(kill=True)
                self.failed(name, f"no answer within {PLACER_SECONDS:g} s")

    def failed(self, name: str, problem: str) -> None:
        """No hints for *name*: the full pass serves them; the admin is told once."""
        if name in self.watched:
            self.forget(name)
        self.fallback[name] = problem
        if name in self.told:
            return
        self.told.add(name)
        text = (f"{name}: no change hints ({printable(problem, 300)}); served by the full pass "
                f"every {self.config.watch.full_pass_seconds:g} s")
        if "ENOSPC" in problem or "EMFILE" in problem:
            text += " (inotify limits: sysctl fs.inotify.max_user_watches / max_user_instances)"
        self.tell(notify.LOG_WARNING, text)
        self.notes.append(text)
        audit = AuditLog(self.config.audit_log)
        try:
            audit.write("watch-fallback", user=name, uid=self.uids.get(name, -1),
                        reason=printable(problem, 300))
        finally:
            audit.close()


def _raise_fd_limit() -> None:
    """One inotify descriptor per member: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
