"""Users are told, admins audit: syslog lines, the user's mail and root's digest.

Real parts: the real ``virsh_wrapper`` as root, real users, a real SMTP
server on loopback (aiosmtpd) that receives what the tool sends, a real
sendmail-compatible program (msmtp, installed by tests/setup-host.sh)
relaying to it, and a real Unix datagram socket standing in for /dev/log
(this host runs no syslog daemon; the bytes are the ones a daemon would get).
"""

from __future__ import annotations

import email
import email.policy
import re
import shlex
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from conftest import Host


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage

    @property
    def body(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None
        return str(part.get_content())


@dataclass
class SmtpServer:
    port: int
    mails: list[Received] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.mails.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 OK"

    def to(self, rcpt: str) -> list[Received]:
        return [m for m in self.mails if rcpt in m.recipients]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(free_port())
    controller = Controller(server, hostname="127.0.0.1", port=server.port)
    controller.start()
    try:
        yield server
    finally:
        controller.stop()


def mail_config(smtp: SmtpServer, admin: str = "root", extra: str = "") -> str:
    return (f'[mail]\nenabled = true\nsmtp_host = "127.0.0.1"\nsmtp_port = {smtp.port}\n'
            f'admin = "{admin}"\n{extra}')


def has_row(body: str, *cells: str) -> bool:
    """A line of the digest's table that starts with these cells."""
    return any(line.split()[: len(cells)] == list(cells) for line in body.splitlines())


def events(host: Host, name: str) -> list[dict[str, object]]:
    return [r for r in host.audit_records() if r["event"] == name]


def test_user_and_root_get_one_mail_each_over_smtp(host: Host, smtp: SmtpServer) -> None:
    alice, bob, carol = host.add_user("alice"), host.add_user("bob"), host.add_user("carol")
    host.extra_config = mail_config(smtp)
    host.write_config({f"{alice.name}-web": None, f"{carol.name}-db": None})

    # nothing went wrong: no mail at all, not even a digest
    carol.write("wirt/service/vm/db/autostart")
    host.run()
    assert [r["outcome"] for r in host.commands()] == ["done"]
    assert smtp.mails == []

    alice.write("wirt/service/vm/web/start", "--domain bob-web")  # rejected
    alice.write("wirt/service/vm/web/resume")  # libvirt: not paused -> failed
    alice.write("wirt/service/vm/web/autostart")  # done: not mailed
    bob.write("wirt/service/vm/gone/start")  # no such domain -> failed
    carol.write("wirt/service/vm/db/autostart", "--disable")  # done
    host.run()

    assert sorted(r for m in smtp.mails for r in m.recipients) == sorted(
        [alice.name, bob.name, "root"])
    (to_alice,) = smtp.to(alice.name)
    assert to_alice.recipients == [alice.name] and to_alice.message["To"] == alice.name
    assert to_alice.message["From"] == "wirt <root>"
    assert to_alice.message["Auto-Submitted"] == "auto-generated"
    assert "2 VM commands not carried out" in to_alice.message["Subject"]
    body = to_alice.body
    assert f"Hello {alice.name}," in body
    assert "VM web, start: REJECTED" in body
    assert "token '--domain' is not accepted by 'start'" in body
    assert "VM web, resume: FAILED" in body and "libvirt:" in body
    assert "What to do: Nothing was run." in body
    assert "~/wirt/info/vm/web/status.xml" in body
    assert "Read more: ~/wirt/logs/vm/web.log" in body
    assert "Your command file is kept as ~/wirt/logs/history/" in body
    assert "autostart" not in body  # the command that worked is not news
    assert bob.name not in body

    (to_bob,) = smtp.to(bob.name)
    assert "VM gone, start: FAILED" in to_bob.body
    assert f"no domain named '{bob.name}-gone'" in to_bob.body

    (digest,) = smtp.to("root")
    assert digest.recipients == ["root"]
    assert "3 commands not carried out" in digest.message["Subject"]
    assert has_row(digest.body, "USER", "VM", "ACTION", "OUTCOME", "REASON")
    assert has_row(digest.body, alice.name, "web", "start", "rejected",
                   "~/wirt/service/vm/web/start:")
    assert has_row(digest.body, alice.name, "web", "resume", "failed", "libvirt:")
    assert has_row(digest.body, bob.name, "gone", "start", "failed", "there")
    assert "3 users served" in digest.body and carol.name not in digest.body
    assert len(events(host, "mail-sent")) == 3 and events(host, "mail-failed") == []

    # the same broken file again: not mailed again (throttled), but logged again
    alice.write("wirt/service/vm/web/start", "--domain bob-web")
    host.run()
    assert len(smtp.mails) == 3
    assert alice.vm_log("web").count("token '--domain' is not accepted") == 2
    assert [r["outcome"] for r in host.commands()].count("rejected") == 2

    # a different problem is news; the repeat beside it is not listed again
    alice.write("wirt/service/vm/web/start", "--paused --paused")
    alice.write("wirt/service/vm/web/resume")
    host.run()
    assert len(smtp.to(alice.name)) == 2 and len(smtp.to("root")) == 2
    news = smtp.to(alice.name)[1].body
    assert "'--paused' is given twice" in news and "resume" not in news
    digest = smtp.to("root")[1]
    assert has_row(digest.body, alice.name, "web", "start", "rejected")
    assert "1 more problem repeats one already mailed in the last 24 hours" in digest.body


def test_header_injection_from_file_names_is_impossible(host: Host, smtp: SmtpServer) -> None:
    alice = host.add_user("alice")
    host.extra_config = mail_config(smtp)
    host.write_config({f"{alice.name}-web": None})
    alice.run("mkdir -p ~/wirt/service/vm/web")
    spool = "wirt/service/vm/web/"
    for name in ["start\nBcc: evil@example.test", "x\r\nTo: victim\r\n\r\nforged body",
                 "Subject: pwned"]:
        alice.run('touch "$1"', spool + name)
    alice.write(spool + "shutdown", "--mode acpi\rBcc: evil2@example.test")
    host.run()

    assert {r["outcome"] for r in host.commands()} == {"rejected"}
    assert len(host.commands()) == 4
    assert sorted(r for m in smtp.mails for r in m.recipients) == sorted([alice.name, "root"])
    for mail in smtp.mails:
        headers = {k.lower() for k in mail.message}
        assert headers == {"from", "to", "subject", "date", "message-id", "auto-submitted",
                           "content-type", "content-transfer-encoding", "mime-version"}
        assert all("evil" not in str(v) and "victim" not in str(v)
                   for v in mail.message.values())
        assert "forged body" not in mail.body.split("\n")  # never on a line of its own
    body = smtp.to(alice.name)[0].body
    assert "start\\x0aBcc: evil@example.test" in body  # shown, escaped, in the body only
    assert "x\\x0d\\x0aTo: victim" in body


def test_smtp_down_the_pass_completes_and_says_so(host: Host) -> None:
    alice, bob = host.add_user("alice"), host.add_user("bob")
    port = free_port()  # nothing listens here
    host.extra_config = (f'[mail]\nsmtp_host = "127.0.0.1"\nsmtp_port = {port}\n')
    host.write_config({f"{alice.name}-web": None})
    alice.write("wirt/service/vm/web/start", "--domain x")
    alice.write("wirt/service/vm/web/autostart")
    bob.write("wirt/service/vm/gone/start")
    started = time.monotonic()
    proc = host.run()  # exit status 0
    assert time.monotonic() - started < 20
    assert sorted((r["vm"], r["outcome"]) for r in host.commands()) == [
        ("gone", "failed"), ("web", "done"), ("web", "rejected")]
    assert "token '--domain' is not accepted" in alice.vm_log("web")
    failed = events(host, "mail-failed")
    assert sorted(str(r["to"]) for r in failed) == sorted([alice.name, bob.name, "root"])
    assert "Connection refused" in str(failed[0]["reason"])
    assert all("not tried" in str(r["reason"]) for r in failed[1:])
    assert f"mail to {alice.name} failed" in proc.stderr or \
        f"mail to {bob.name} failed" in proc.stderr
    assert events(host, "pass")  # the pass record is there too


def test_mail_turned_off(host: Host, smtp: SmtpServer) -> None:
    alice = host.add_user("alice")
    host.extra_config = mail_config(smtp).replace("enabled = true", "enabled = false")
    host.write_config({})
    alice.write("wirt/service/vm/web/start")
    host.run()
    assert [r["outcome"] for r in host.commands()] == ["failed"]
    assert smtp.mails == [] and events(host, "mail-failed") == []


def test_sendmail_path_through_msmtp(host: Host, smtp: SmtpServer) -> None:
    msmtp = shutil.which("msmtp", path="/usr/bin")
    if msmtp is None:
        pytest.skip("msmtp is not installed: run tests/setup-host.sh")
    alice = host.add_user("alice")
    admin = host.add_user("admin")
    rc = host.root / "etc" / "msmtprc"
    (host.root / "etc").mkdir(mode=0o755, exist_ok=True)
    rc.write_text(f"account default\nhost 127.0.0.1\nport {smtp.port}\nfrom root\n"
                  "auth off\ntls off\n")
    rc.chmod(0o600)
    host.extra_config = (f'[mail]\nsendmail = "{msmtp} -C {rc}"\nadmin = "{admin.name}"\n')
    host.write_config({f"{alice.name}-web": None})
    alice.write("wirt/service/vm/web/start", "--force-boot --mode acpi")
    host.run()
    assert sorted(r for m in smtp.mails for r in m.recipients) == sorted(
        [alice.name, admin.name])
    (to_alice,) = smtp.to(alice.name)
    assert "token '--mode' is not accepted by 'start'" in to_alice.body
    assert to_alice.message["To"] == alice.name
    (digest,) = smtp.to(admin.name)
    assert has_row(digest.body, alice.name, "web", "start", "rejected")
    assert [r["to"] for r in events(host, "mail-sent")] == [alice.name, admin.name]


def test_sendmail_failure_is_recorded(host: Host) -> None:
    alice = host.add_user("alice")
    host.extra_config = '[mail]\nsendmail = "/usr/bin/false"\n'
    host.write_config({})
    alice.write("wirt/service/vm/web/start")
    proc = host.run()
    assert [r["outcome"] for r in host.commands()] == ["failed"]
    failed = events(host, "mail-failed")
    assert [r["to"] for r in failed] == [alice.name, "root"]  # exit status 1: try the next
    assert "/usr/bin/false exited with status 1" in str(failed[0]["reason"])
    assert "mail to" in proc.stderr


def receive_all(sock: socket.socket) -> list[str]:
    lines = []
    while True:
        try:
            lines.append(sock.recv(4096).decode("ascii"))
        except BlockingIOError:
            return lines


def test_syslog_lines(host: Host, tmp_path: Path) -> None:
    alice = host.add_user("alice")
    path = tmp_path / "log.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    host.extra_config = f'syslog_socket = "{path}"\n'
    host.write_config({f"{alice.name}-web": None})
    alice.write("wirt/service/vm/web/start", "--domain\tbob-web")
    alice.write("wirt/service/vm/gone/autostart")
    alice.write("wirt/service/vm/web/autostart")
    host.run()
    lines = receive_all(sock)
    sock.close()
    assert len(lines) == 3, lines
    rejected, failed, summary = sorted(lines, key=lambda s: ("pass:" in s, "failed" in s))
    assert rejected.startswith("<29>")  # daemon.notice
    assert " wirt[" in rejected
    assert f'rejected: user="{alice.name}" vm="web" action="start" file="start"' in rejected
    assert "token '--domain' is not accepted" in rejected
    assert f'failed: user="{alice.name}" vm="gone" action="autostart"' in failed
    assert summary.startswith("<30>")  # daemon.info
    assert ": pass: users=1 skipped=0 done=1 failed=1 rejected=1 interrupted=0 seconds=" \
        in summary


def test_no_syslog_socket_never_fails_the_pass(host: Host, tmp_path: Path) -> None:
    alice = host.add_user("alice")
    host.extra_config = f'syslog_socket = "{tmp_path}/missing.sock"\n'
    host.write_config({f"{alice.name}-web": None})
    alice.write("wirt/service/vm/web/start", "--nope")
    proc = host.run()
    assert proc.stderr == ""
    assert [r["outcome"] for r in host.commands()] == ["rejected"]


def test_mail_config_errors_name_the_key(host: Host) -> None:
    host.add_user("alice")
    for extra, key in [('[mail]\nsmtp_port = 99999\n', "mail.smtp_port"),
                       ('[mail]\nsendmail = "sendmail -t"\n', "mail.sendmail"),
                       ('[mail]\nadmin = "root, evil@example.test"\n', "mail.admin"),
                       ('[mail]\nsmtp_hots = "x"\n', "mail.smtp_hots"),
                       ('[limits]\nlog_keep = 0\n', "limits.log_keep"),
                       ('syslog_socket = "dev/log"\n', "syslog_socket")]:
        host.extra_config = extra
        host.write_config({})
        proc = host.run(check=False)
        assert proc.returncode == 2, extra
        assert key in proc.stderr, (extra, proc.stderr)


# -- syslog: quoting, a slow daemon, the digest's size --------------------------------
FORGED = "x user=rt1 vm=web action=destroy file=destroy reason=ok"
FORGED_QUOTES = 'y" user="rt1" action="destroy\\" reason=\\'


def syslog_fields(line: str) -> tuple[str, dict[str, str], list[str]]:
    """Read a syslog line as a key=value tool would: shell-like words after
    ``wirt[pid]: ``; a word without ``=`` is skipped, a later key wins.
    Returns the tag, the values and the keys seen more than once."""
    _, _, text = line.partition("]: ")
    tag, *words = shlex.split(text)
    values: dict[str, str] = {}
    twice = []
    for word in words:
        key, eq, value = word.partition("=")
        if eq:
            if key in values:
                twice.append(key)
            values[key] = value
    return tag, values, twice


def test_syslog_values_are_quoted_a_file_name_cannot_forge_fields(
        host: Host, tmp_path: Path) -> None:
    alice = host.add_user("alice")
    path = tmp_path / "log.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    host.extra_config = f'syslog_socket = "{path}"\n'
    host.write_config({f"{alice.name}-web": None})
    alice.run("mkdir -p ~/wirt/service/vm/web")
    for name in (FORGED, FORGED_QUOTES):
        alice.run('touch "$1"', "wirt/service/vm/web/" + name)
    host.run()
    lines = receive_all(sock)
    sock.close()
    assert len(lines) == 3, lines
    parsed = [syslog_fields(line) for line in lines]
    problems = [(values, twice) for tag, values, twice in parsed if tag == "rejected:"]
    assert len(problems) == 2, lines
    for values, twice in problems:
        assert twice == [], (values, twice)  # one user=, one action=, ... per line
        assert values["user"] == alice.name and values["vm"] == "web", values
        assert values["action"] == "-", values  # not an action, certainly no destroy
        assert "rt1" not in values["user"] and "rt1" in values["reason"]
    assert {v["file"] for v, _ in problems} == {FORGED, FORGED_QUOTES}  # each whole
    (summary,) = [values for tag, values, _ in parsed if tag == "pass:"]
    assert summary["rejected"] == "2" and summary["users"] == "1"


class SlowSyslog:
    """A /dev/log stand-in that reads slowly: a small receive buffer, and a thread
    that takes one datagram every *delay* seconds."""

    def __init__(self, path: Path, delay: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.delay = delay
        self.lines: list[str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.done.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.lines.append(data.decode("ascii"))
            time.sleep(self.delay)

    def drain(self, quiet: float = 0.5) -> list[str]:
        """Everything, once nothing more arrived for *quiet* seconds."""
        count = -1
        while count != len(self.lines):
            count = len(self.lines)
            time.sleep(quiet)
        self.done.set()
        self.thread.join()
        self.sock.close()
        return self.lines


def test_slow_syslog_daemon_gets_every_line_and_the_summary(host: Host, tmp_path: Path) -> None:
    alice, bob = host.add_user("alice"), host.add_user("bob")
    host.extra_config = f'syslog_socket = "{tmp_path / "log.sock"}"\n'
    host.write_config({f"{alice.name}-web": None})
    alice.run('mkdir -p ~/wirt/service/vm/web && cd ~/wirt/service/vm/web && '
              'for i in $(seq 100 199); do : > "bad-$i"; done')
    bob.write("wirt/service/vm/gone/start")  # no such domain: failed
    daemon = SlowSyslog(tmp_path / "log.sock", delay=0.005)
    try:
        host.run()
    finally:
        lines = daemon.drain()
    outcomes = [r["outcome"] for r in host.commands()]
    assert outcomes.count("rejected") == 100 and outcomes.count("failed") == 1
    # read without relying on the quoting (so that this counts lines on any version)
    rejected = {m.group(1) for line in lines if f" rejected: user={alice.name}" in
                line.replace('"', "") for m in [re.search(r" file=\"?(bad-\d+)", line)] if m}
    assert rejected == {f"bad-{i}" for i in range(100, 200)}, (len(rejected), len(lines))
    failed = [n for n, line in enumerate(lines) if f" failed: user={bob.name} vm=gone "
              in line.replace('"', "")]
    assert len(failed) == 1 and len(lines) == 102, len(lines)
    assert ": pass: " in lines[-1] and " rejected=100 " in lines[-1], lines[-1]  # last
    assert "syslog_dropped" not in lines[-1]
    # bob's line is among the first: alice's flood beyond her share goes after it
    assert failed[0] <= 21


def test_syslog_waits_within_a_budget_counts_drops_and_stops_on_errors(tmp_path: Path) -> None:
    from wirt_wrapper.root.notify import LOG_INFO, LOG_NOTICE, Syslog, summary_line

    path = tmp_path / "log.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.setblocking(False)
    log = Syslog(str(path), wait=0.1, budget=0.3)
    started = time.monotonic()
    sent = [log.send(LOG_NOTICE, f"line {n}") for n in range(40)]  # nobody reads
    elapsed = time.monotonic() - started
    assert 0.25 < elapsed < 1.0  # waited, but within the budget (and one line's wait)
    assert sent.count(True) >= 1 and log.dropped == sent.count(False) > 0
    assert not log.broken
    # the budget is spent: a full socket now drops at once ...
    started = time.monotonic()
    assert not log.send(LOG_NOTICE, "again") and time.monotonic() - started < 0.05
    assert log.dropped == sent.count(False) + 1
    # ... but the last line (the summary) still waits for room: the daemon reads soon
    got: list[str] = []
    reader = threading.Timer(0.02, lambda: got.extend(receive_all(server)))
    reader.start()
    assert log.send(LOG_INFO, f"summary dropped={log.dropped}", last=True)
    reader.join()
    got += receive_all(server)
    assert len(got) == sent.count(True) + 1
    assert got[-1].endswith(f"summary dropped={log.dropped}")
    summary = SimpleNamespace(users=2, skipped=0, counts={"done": 1}, seconds=0.5,
                              libvirt_down=None)
    assert summary_line(summary, 7) == "pass: users=2 skipped=0 done=1 seconds=0.50 " \
        "syslog_dropped=7"
    assert "syslog_dropped" not in summary_line(summary, 0)
    # a real error (the daemon went away) turns syslog off: no waiting, no counting
    server.close()
    path.unlink()
    dropped = log.dropped
    started = time.monotonic()
    assert not log.send(LOG_NOTICE, "gone") and log.broken
    assert not log.send(LOG_INFO, "summary", last=True)
    assert time.monotonic() - started < 0.1 and log.dropped == dropped
    log.close()


def test_digest_lists_a_users_first_problems_and_counts_the_rest(
        host: Host, smtp: SmtpServer) -> None:
    alice, bob = host.add_user("alice"), host.add_user("bob")
    host.extra_config = mail_config(smtp)
    host.write_config({f"{alice.name}-web": None})
    long = "n" * 200
    alice.run(f'mkdir -p ~/wirt/service/vm/web && cd ~/wirt/service/vm/web && '
              f'for i in $(seq 100 199); do : > "bad-$i-{long}"; done')
    bob.write("wirt/service/vm/gone/start")
    host.run()
    (digest,) = smtp.to("root")
    body = digest.body
    assert "101 commands not carried out" in digest.message["Subject"]
    assert "Commands not carried out: 101, from 2 users" in body
    rows = [line for line in body.splitlines() if line.split()[:1] == [alice.name]]
    assert len(rows) == 20, len(rows)
    assert f"... and 80 more of {alice.name}'s like these (80 rejected), not listed: " \
        f"wirt-audit --user {alice.name} --since 1d" in body
    assert has_row(body, bob.name, "gone", "start", "failed")
    assert len(digest.message.as_bytes()) < 20_000, len(digest.message.as_bytes())
    # the ones only counted are throttled like the listed ones: the same files again
    # make no new digest
    alice.run(f'cd ~/wirt/service/vm/web && for i in $(seq 100 199); do : > "bad-$i-{long}"; '
              'done')
    host.run()
    assert len(smtp.to("root")) == 1
