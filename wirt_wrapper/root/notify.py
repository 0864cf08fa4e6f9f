r"""Telling people what went wrong in a pass: syslog lines and mail (runs as root, at the end).

Trusts: the root-owned config (transport, the admin's address) and the
passwd database (each recipient is a member's user name, looked up again).
Distrusts: everything that came from a user's files -- file names, tokens,
reasons that quote them.  That text only ever reaches a mail *body* or a
syslog message, escaped to printable ASCII; headers are built from fixed
words, counts, the host name and passwd names (and the ``email`` package
refuses a line break in any header on top of that).

Nothing here can fail the pass or lose a command: every outcome is in the
audit log and the user's own log before this runs.  A mail that cannot be
sent becomes a ``mail-failed`` audit event and a line on stderr; a missing
syslog socket is skipped silently (hosts without a syslog daemon).

Syslog lines are ``TAG: key="value" key="value" ...``.  The quoting rule,
for every value that is not one of root's own numbers: the text is first
made printable (``printable``: one line of printable ASCII, anything else as
``\xNN``/``\uNNNN``, cut with ``...``), then ``\`` becomes ``\\`` and ``"``
becomes ``\"``, and the result is put in double quotes.  So a value never
contains a bare ``"`` or a space outside its quotes, and a key=value reader
(``shlex.split`` of the text after ``wirt[pid]: ``, or the regex
``(\w+)="((?:[^"\\]|\\.)*)"``) gets each value back whole: a file named
``x user=rt1 action=destroy`` stays inside ``file="..."``.  The summary line
(``pass: users=3 ... seconds=0.52``) carries only root's counts, unquoted.

``/dev/log`` is written without blocking.  When it is full (``EAGAIN``: the
daemon reads slower than a pass writes), a line waits up to ``SYSLOG_WAIT``
for room, all such waits of one pass together at most ``SYSLOG_BUDGET``;
after that a full socket drops the line, and the summary counts the drops
(``syslog_dropped=N``).  Any other error (no daemon, ``ECONNREFUSED``,
``ENOENT``) turns syslog off for the rest of the pass.  So that one user's
flood cannot crowd out the others, every user's first ``SYSLOG_FAIR`` lines
go out first (in pass order), then root's notes, then the rest; the pass
summary is always tried last, after the mail, with a wait of its own.

Root's digest lists at most ``DIGEST_PER_USER`` problems of one user and
counts the rest (``and N more of alice's like these``), so one member's
hundred rejected files cannot make the mail big; every one is in the audit
log.

Repeats are throttled: a problem (user, VM, file, outcome, reason) is mailed
to a recipient at most once per ``mail.repeat_hours``; the state lives in
``state_dir/mailed.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from wirt_wrapper.root.audit import AuditLog
from wirt_wrapper.root.auditquery import action_of
from wirt_wrapper.root.state import load_state, save_state
from wirt_wrapper.rules.actions import printable
from wirt_wrapper.rules.config import Config, MailConfig, check_root_owned
from wirt_wrapper.rules.errors import ConfigError
from wirt_wrapper.rules.layouts import LAYOUTS

if TYPE_CHECKING:  # the mail modules are loaded when there is mail (not on an idle pass)
    import smtplib
    from email.message import EmailMessage

__all__ = ["Mailer", "Problem", "Report", "Syslog", "Throttle", "after_pass", "quoted"]

IDENT = "wirt"
LOG_DAEMON = 3 << 3
LOG_WARNING, LOG_NOTICE, LOG_INFO = 4, 5, 6
SYSLOG_LIMIT = 2000
SYSLOG_WAIT = 0.2  # longest wait for room on a full syslog socket, per line
SYSLOG_BUDGET = 2.0  # all those waits of one pass together
SYSLOG_FAIR = 20  # every user's first lines go out before anyone's further ones
DIGEST_PER_USER = 20  # root's digest lists this many problems of one user, counts the rest
TIMEOUT = 30.0  # one SMTP conversation step or one sendmail run
# sendmail runs with this environment only (no shell, nothing of the caller's).
MAIL_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
MAILED = ("rejected", "failed", "interrupted")


class PassSummary(Protocol):
    users: int
    skipped: int
    counts: dict[str, int]
    seconds: float
    libvirt_down: str | None

    def line(self) -> str: ...


@dataclass(frozen=True)
class Problem:
    """A command that did not end ``done`` (fields from root's own records)."""

    user: str
    uid: int
    layout: str
    vm: str
    file: str
    action: str | None
    outcome: str
    reason: str
    hist: str | None

    def key(self, recipient: str) -> str:
        raw = json.dumps([recipient, self.user, self.vm, self.file, self.outcome, self.reason])
        return hashlib.sha256(raw.encode()).hexdigest()[:32]


@dataclass
class Report:
    """What the pass collects for syslog and mail."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # pass-level problems, for root
    # for the admin's digest only, not syslog: standing conditions (an open console) that
    # a pass sees again each time; the mail's throttle sends each once per repeat_hours
    digest_notes: list[str] = field(default_factory=list)

    def command(self, entry: dict[str, Any], outcome: str, reason: str) -> None:
        if outcome in MAILED:
            action = action_of(entry)  # also for files rejected before parsing
            self.problems.append(Problem(
                user=entry["user"], uid=entry["uid"], layout=entry["layout"], vm=entry["vm"],
                file=entry["file"], action=action, outcome=outcome,
                reason=reason, hist=entry.get("hist"),
            ))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def digest(self, text: str) -> None:
        self.digest_notes.append(text)


# -- syslog --------------------------------------------------------------------
def quoted(text: str, limit: int) -> str:
    """*text* as one syslog value: printable, then ``\\`` and ``"`` escaped, in double quotes."""
    safe = printable(text, limit).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{safe}"'


class Syslog:
    """RFC 3164 lines to a Unix datagram socket (``/dev/log``); never raises.

    Waits for room on a full socket at most ``wait`` per line and ``budget`` per
    pass (the last line, the summary, has a wait of its own); ``dropped`` counts
    the lines that found no room.
    """

    def __init__(self, path: str, *, wait: float = SYSLOG_WAIT,
                 budget: float = SYSLOG_BUDGET) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.broken = not path
        self.wait = wait
        self.budget = budget
        self.dropped = 0

    def send(self, severity: int, text: str, *, last: bool = False) -> bool:
        """Hand over one line; False if it was dropped (full) or syslog is off."""
        if self.broken:
            return False
        now = time.localtime(time.time())  # not C's coarse time(): see logline.now_text
        stamp = f"{time.strftime('%b', now)} {now.tm_mday:2d} {time.strftime('%H:%M:%S', now)}"
        line = f"<{LOG_DAEMON | severity}>{stamp} {IDENT}[{os.getpid()}]: {printable(text, 1800)}"
        data = line.encode("ascii")[:SYSLOG_LIMIT]
        try:
            if self.sock is None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self.sock.setblocking(False)
                self.sock.connect(self.path)
            return self._send(self.sock, data, last)
        except OSError:
            self.broken = True  # no syslog daemon here: the audit log has everything
            self.close()
            return False

    def _send(self, sock: socket.socket, data: bytes, last: bool) -> bool:
        deadline: float | None = None
        while True:
            try:
                sock.send(data)
                return True
            except BlockingIOError:  # the daemon's queue is full: wait a little for room
                started = time.monotonic()
                if deadline is None:
                    deadline = started + (self.wait if last else min(self.wait, self.budget))
                left = deadline - started
                if left <= 0:
                    self.dropped += 1
                    return False
                poller = select.poll()
                poller.register(sock, select.POLLOUT)
                poller.poll(max(1, round(left * 1000)))
                if not last:
                    self.budget -= time.monotonic() - started

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _problem_line(p: Problem) -> str:
    return (f"{p.outcome}: user={quoted(p.user, 64)} vm={quoted(p.vm, 80)} "
            f"action={quoted(p.action or '-', 40)} file={quoted(p.file, 80)} "
            f"reason={quoted(p.reason, 400)}")


def syslog_lines(report: Report) -> Iterable[tuple[int, str]]:
    """The pass's lines but the summary: each user's first ``SYSLOG_FAIR`` problems in
    pass order, root's notes, then the problems beyond a user's share."""
    first, rest = _per_user(report.problems, SYSLOG_FAIR)
    for p in first:
        yield LOG_NOTICE, _problem_line(p)
    for note in report.notes:
        yield LOG_WARNING, f"problem: message={quoted(note, 600)}"
    for more in rest.values():
        for p in more:
            yield LOG_NOTICE, _problem_line(p)


def summary_line(summary: PassSummary, dropped: int = 0) -> str:
    counts = " ".join(f"{k}={v}" for k, v in summary.counts.items())
    down = " libvirt=unreachable" if summary.libvirt_down else ""
    lost = f" syslog_dropped={dropped}" if dropped else ""
    return (f"pass: users={summary.users} skipped={summary.skipped} {counts} "
            f"seconds={summary.seconds:.2f}{down}{lost}")


# -- throttling ------------------------------------------------------------------
class Throttle:
    """When each (recipient, problem) was last mailed; root-only JSON in state_dir."""

    def __init__(self, state_dir: str, hours: float, now: float) -> None:
        self.path = os.path.join(state_dir, "mailed.json")
        self.window = hours * 3600
        self.now = now
        self.sent: dict[str, float] = {
            k: v for k, v in load_state(self.path).items()
            if isinstance(v, (int, float)) and now - v < self.window}

    def due(self, key: str) -> bool:
        return key not in self.sent

    def mark(self, keys: Iterable[str]) -> None:
        self.sent.update(dict.fromkeys(keys, self.now))

    def save(self) -> None:
        save_state(self.path, self.sent)


# -- sending ---------------------------------------------------------------------
class MailError(Exception):
    """A mail could not be handed over; the message says why."""

    def __init__(self, reason: str, *, transport: bool = True) -> None:
        super().__init__(reason)
        self.transport = transport  # the transport itself is down: skip the other mails


class Mailer:
    """Hands messages to sendmail (``-t -oi``, no shell, clean env) or to an SMTP host."""

    def __init__(self, mail: MailConfig) -> None:
        self.mail = mail
        self.smtp: smtplib.SMTP | None = None
        self.dead: str | None = None  # the transport failed: do not wait on it again

    def address(self, name: str) -> str:
        return f"{name}@{self.mail.domain}" if self.mail.domain and "@" not in name else name

    def send(self, message: EmailMessage, recipients: list[str]) -> None:
        if self.dead:
            raise MailError(f"not tried: {self.dead}")
        try:
            if self.mail.smtp_host:
                self._smtp(message, recipients)
            else:
                self._sendmail(message)
        except MailError as exc:
            if exc.transport:
                self.dead = str(exc)
            raise

    def _sendmail(self, message: EmailMessage) -> None:
        argv = self.mail.sendmail_argv()
        try:
            check_root_owned(argv[0], "mail.sendmail")
        except ConfigError as exc:
            raise MailError(str(exc)) from None
        try:
            proc = subprocess.run(
                [*argv, "-t", "-oi"], input=message.as_bytes(), capture_output=True,
                env=MAIL_ENV, cwd="/", timeout=TIMEOUT, check=False,
            )
        except subprocess.TimeoutExpired:
            raise MailError(f"{argv[0]} did not finish within {TIMEOUT:g} s") from None
        except OSError as exc:
            raise MailError(f"{argv[0]}: {exc.strerror}") from None
        if proc.returncode != 0:
            said = printable(proc.stderr.decode("utf-8", "replace").strip(), 300)
            raise MailError(f"{argv[0]} exited with status {proc.returncode}: {said}",
                            transport=False)

    def _smtp(self, message: EmailMessage, recipients: list[str]) -> None:
        import smtplib

        where = f"SMTP {self.mail.smtp_host}:{self.mail.smtp_port}"
        try:
            if self.smtp is None:
                self.smtp = smtplib.SMTP(self.mail.smtp_host, self.mail.smtp_port,
                                         timeout=TIMEOUT)
            self.smtp.send_message(message, from_addr=self.address(self.mail.admin),
                                   to_addrs=recipients)
        except smtplib.SMTPRecipientsRefused as exc:
            raise MailError(f"{where} refused the recipient: {exc.recipients}",
                            transport=False) from None
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise MailError(f"{where}: {reason}") from None

    def close(self) -> None:
        if self.smtp is not None:
            import smtplib

            try:
                self.smtp.quit()
            except (OSError, smtplib.SMTPException):
                self.smtp.close()
            self.smtp = None


# -- composing -------------------------------------------------------------------
def _paths(p: Problem) -> dict[str, str]:
    """Where the user reads more, in the layout's own words (``~/...``)."""
    layout = LAYOUTS.get(p.layout)
    if layout is None:
        return {}
    if layout.per_command_log:  # legacy: one file per command, its name unique per pass
        paths = {"log": layout.shown(*layout.logs) + "/"}
    else:
        paths = {"log": layout.shown(*layout.logs, layout.log_name("", p.vm, "", p.user))}
    if p.hist:
        paths["kept"] = layout.shown(*layout.history, p.hist)
    if layout.info is not None:
        paths["status"] = layout.shown(*layout.info, p.vm, "status.xml")
    return paths


ADVICE = {
    "rejected": "Nothing was run. Fix what the message names, then write the command file "
                "again.",
    "failed": "libvirt did not carry it out. Check the VM's state{status}; if the message "
              "does not tell you what to change, reply to this mail.",
    "interrupted": "The pass stopped during this command and did not repeat it. Check the "
                   "VM's state{status} and send the command again if it is still needed.",
}


def _user_item(number: int, p: Problem) -> str:
    paths = _paths(p)
    what = p.action or f'file "{printable(p.file, 80)}"'
    status = f" in {paths['status']}" if "status" in paths else ""
    lines = [
        f"{number}. VM {p.vm}, {what}: {p.outcome.upper()}",
        f"   Why: {printable(p.reason, 600)}",
        f"   What to do: {ADVICE[p.outcome].format(status=status)}",
    ]
    if "kept" in paths:
        lines.append(f"   Your command file is kept as {paths['kept']}")
    if "log" in paths:
        lines.append(f"   Read more: {paths['log']}")
    return "\n".join(lines)


def _message(mail: MailConfig, mailer: Mailer, to: str, subject: str,
             body: str) -> EmailMessage:
    from email.headerregistry import Address
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid

    message = EmailMessage()
    sender, _, domain = mailer.address(mail.admin).partition("@")
    message["From"] = Address("wirt", sender, domain)
    message["To"] = mailer.address(to)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid("wirt")
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    message.set_content(body, charset="us-ascii", cte="7bit")  # readable raw, by mail(1)
    return message


def user_mail(mail: MailConfig, mailer: Mailer, user: str, problems: list[Problem],
              host: str, stamp: str) -> EmailMessage:
    count = len(problems)
    which = "one of your VM commands" if count == 1 else f"{count} of your VM commands"
    items = "\n\n".join(_user_item(n, p) for n, p in enumerate(problems, 1))
    body = (
        f"Hello {printable(user, 64)},\n\n"
        f"wirt on {host} could not carry out {which} in its pass at {stamp}:\n\n"
        f"{items}\n\n"
        f"You get this mail at most once every {mail.repeat_hours:g} hours for the same "
        "problem; your log records every one.\n"
        f"Replies to this mail go to the admin ({mail.admin}).\n"
    )
    subject = f"wirt on {host}: {count} VM command{'s' if count > 1 else ''} not carried out"
    return _message(mail, mailer, user, subject, body)


def digest_mail(mail: MailConfig, mailer: Mailer, problems: list[Problem], notes: list[str],
                repeated: int, summary: PassSummary, host: str, stamp: str) -> EmailMessage:
    parts = [f"wirt pass on {host} at {stamp}: {summary.line()}"]
    if notes:
        lines = [f"  - {printable(n, 600)}" for n in notes]
        parts.append("Problems of the pass:\n" + "\n".join(lines))
    if problems:
        listed, more = _per_user(problems, DIGEST_PER_USER)
        rows = [("USER", "VM", "ACTION", "OUTCOME", "REASON")] + [
            (printable(p.user, 40), p.vm, p.action or printable(p.file, 40), p.outcome,
             printable(p.reason, 600)) for p in listed]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        table = "\n".join(
            "  " + "".join(cell.ljust(w + 2) for cell, w in zip(row, widths, strict=False))
            + row[4] for row in rows)
        for user, rest in more.items():
            outcomes = ", ".join(f"{n} {o}" for o, n in sorted(_count(rest).items()))
            table += (f"\n  ... and {len(rest)} more of {printable(user, 40)}'s like these "
                      f"({outcomes}), not listed: wirt-audit --user {printable(user, 40)} "
                      "--since 1d")
        users = len({p.user for p in problems})
        parts.append(f"Commands not carried out: {len(problems)}, from {users} "
                     f"user{'s' if users > 1 else ''}\n{table}")
    if repeated:
        what = "problem repeats one" if repeated == 1 else "problems repeat ones"
        parts.append(f"{repeated} more {what} already mailed in the last "
                     f"{mail.repeat_hours:g} hours, not listed again.")
    parts.append("Every record: wirt-audit --since 1d --outcome rejected --outcome failed "
                 "--outcome interrupted")
    subject = f"wirt on {host}: {len(problems)} commands not carried out"
    if notes:
        subject += f", {len(notes)} pass problems"
    return _message(mail, mailer, mail.admin, subject, "\n\n".join(parts) + "\n")


def _per_user(problems: list[Problem], share: int) -> tuple[list[Problem],
                                                             dict[str, list[Problem]]]:
    """The first *share* problems of each user (in order), and each user's rest."""
    listed: list[Problem] = []
    more: dict[str, list[Problem]] = {}
    seen: dict[str, int] = {}
    for p in problems:
        seen[p.user] = seen.get(p.user, 0) + 1
        if seen[p.user] > share:
            more.setdefault(p.user, []).append(p)
        else:
            listed.append(p)
    return listed, more


def _count(problems: list[Problem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in problems:
        counts[p.outcome] = counts.get(p.outcome, 0) + 1
    return counts


def _member(name: str, uid: int) -> bool:
    """The recipient is the passwd account the command came from (never a file's word)."""
    try:
        return pwd.getpwnam(name).pw_uid == uid
    except KeyError:
        return False


# -- the end of a pass -------------------------------------------------------------
def after_pass(config: Config, summary: PassSummary, report: Report, audit: AuditLog) -> None:
    """Syslog, then mail; records its own failures and never raises."""
    log = Syslog(config.syslog_socket)
    try:
        for severity, text in syslog_lines(report):
            log.send(severity, text)
        if config.mail.enabled and (report.problems or report.notes or report.digest_notes):
            _mail_all(config, summary, report, audit, log)
    except Exception as exc:  # noqa: BLE001 - telling people must never fail the pass
        _failed(audit, log, "(all)", f"{type(exc).__name__}: {exc}")
    finally:
        try:  # the summary goes last, after the mail's lines, with a wait of its own
            log.send(LOG_INFO, summary_line(summary, log.dropped), last=True)
        except Exception as exc:  # noqa: BLE001 - as above
            print(f"wirt: syslog summary: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            log.close()


def _mail_all(config: Config, summary: PassSummary, report: Report, audit: AuditLog,
              log: Syslog) -> None:
    mail = config.mail
    throttle = Throttle(config.state_dir, mail.repeat_hours, time.time())
    mailer = Mailer(mail)
    host = printable(socket.gethostname(), 64)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(time.time()))
    by_user: dict[str, list[Problem]] = {}
    for p in report.problems:
        if throttle.due(p.key(p.user)):
            by_user.setdefault(p.user, []).append(p)
    try:
        for user, problems in by_user.items():
            if not _member(user, problems[0].uid):
                _failed(audit, log, user, "not a user in the passwd database any more")
                continue
            message = user_mail(mail, mailer, user, problems, host, stamp)
            if _send(mailer, message, user, audit, log):
                throttle.mark(p.key(user) for p in problems)
        admin = mail.admin
        fresh = [p for p in report.problems if throttle.due(p.key(admin))]
        notes = [n for n in (*report.notes, *report.digest_notes)
                 if throttle.due(_note_key(admin, n))]
        if fresh or notes:
            repeated = len(report.problems) - len(fresh)
            message = digest_mail(mail, mailer, fresh, notes, repeated, summary, host, stamp)
            if _send(mailer, message, admin, audit, log):
                throttle.mark([*(p.key(admin) for p in fresh),
                               *(_note_key(admin, n) for n in notes)])
    finally:
        mailer.close()
        throttle.save()


def _note_key(recipient: str, note: str) -> str:
    return hashlib.sha256(json.dumps([recipient, "note", note]).encode()).hexdigest()[:32]


def _send(mailer: Mailer, message: EmailMessage, to: str, audit: AuditLog, log: Syslog) -> bool:
    try:
        mailer.send(message, [mailer.address(to)])
    except MailError as exc:
        _failed(audit, log, to, str(exc))
        return False
    audit.write("mail-sent", to=to, subject=str(message["Subject"]))
    return True


def _failed(audit: AuditLog, log: Syslog, to: str, reason: str) -> None:
    audit.write("mail-failed", to=to, reason=reason)
    log.send(LOG_WARNING, f"mail-failed: to={quoted(to, 64)} reason={quoted(reason, 600)}")
    print(f"wirt: mail to {to} failed: {reason}", file=sys.stderr)
