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
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
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
    assert " wirt[" in rejected and f"rejected: user={alice.name} vm=web action=start" in rejected
    assert "token '--domain' is not accepted" in rejected
    assert f"failed: user={alice.name} vm=gone action=autostart" in failed
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
