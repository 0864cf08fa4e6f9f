"""Reaching a VM (SPEC 10) on real QEMU guests: serial log, screenshot, console, console lock.

The tiny guest has a VNC console on 127.0.0.1 (defined without a password), a
VGA screen and its serial console in a file (tests/guest).  A real RFB 3.8
client (tests/guest/rfb.py) knocks on the console; the PNG is decoded with
Pillow; the password is searched for in everything wirt wrote.
"""

from __future__ import annotations

import io
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest
from conftest import Host, SyslogSink
from guest import realvm, rfb
from guest.fixtures import Guest, Guests, WirtPass
from lxml import etree
from PIL import Image
from test_notify import SmtpServer, mail_config, smtp  # noqa: F401 - the fixture

pytestmark = pytest.mark.realvm

RUNNING = libvirt.VIR_DOMAIN_RUNNING


def info_file(guest: Guest, name: str) -> Path:
    return guest.user.home / "wirt/info/vm" / guest.vm / name


def last_line(guest: Guest) -> str:
    return guest.log_lines()[-1]


def graphics(guest: Guest) -> dict[str, str]:
    node = etree.fromstring(guest.status().encode()).find("graphics")
    return dict(node.attrib) if node is not None else {}


def held_passwd(guest: Guest) -> str | None:
    """The persistent definition's console password attribute (None: it has none)."""
    xml = guest.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
    node = etree.fromstring(xml.encode()).find("devices/graphics")
    return None if node is None else node.get("passwd")


def live_port(guest: Guest) -> int:
    node = etree.fromstring(guest.dom.XMLDesc(0).encode()).find("devices/graphics")
    return int(node.get("port"))


def start(guest: Guest, wirt_pass: WirtPass) -> None:
    guest.command("start")
    wirt_pass()
    assert guest.state() == RUNNING, guest.log_lines()
    guest.wait_boots(1)


def test_serial_log_running_and_off(realhost: Host, guests: Guests,
                                    wirt_pass: WirtPass) -> None:
    """serial.log holds what the guest printed at boot, also after it is off."""
    alice = realhost.add_user("alice")
    guest = guests.define(alice, "web")
    start(guest, wirt_pass)
    guest.command("serial")
    wirt_pass()
    log = info_file(guest, "serial.log")
    assert realvm.BOOTED in log.read_text(errors="replace"), guest.log_lines()
    st = log.lstat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (alice.uid, 0o600)
    assert "serial: done" in last_line(guest)
    assert "~/wirt/info/vm/web/serial.log" in last_line(guest)

    guest.dom.destroy()
    log.unlink()
    guest.command("serial")
    wirt_pass()
    assert realvm.BOOTED in log.read_text(errors="replace")  # the last boot's log


def test_serial_log_is_the_last_64_kib(realhost: Host, guests: Guests,
                                       wirt_pass: WirtPass) -> None:
    alice = realhost.add_user("alice")
    guest = guests.define(alice, "big")
    guest.console.write_bytes(b"A" * 100_000 + b"THE END\n")  # root's, as libvirt leaves it
    guest.console.chmod(0o600)
    guest.command("serial")
    wirt_pass()
    data = info_file(guest, "serial.log").read_bytes()
    assert len(data) == 64 * 1024 and data.endswith(b"THE END\n")


def test_screenshot_and_console_need_a_running_vm(realhost: Host, guests: Guests,
                                                   wirt_pass: WirtPass) -> None:
    alice = realhost.add_user("alice")
    guest = guests.define(alice, "off")
    guest.command("screenshot")
    wirt_pass()
    assert "screenshot: failed: the VM is not running (shut off): its screen" in last_line(guest)
    guest.command("console")
    wirt_pass()
    assert "console: failed: the VM is not running (shut off): its console" in last_line(guest)
    assert not info_file(guest, "screen.png").exists()
    assert not info_file(guest, "console.json").exists()


def without(*tags: str) -> Callable[[str], str]:
    """An edit of the guest's XML that drops these devices."""
    def edit(xml: str) -> str:
        root = etree.fromstring(xml.encode())
        for tag in tags:
            for node in root.findall(f"devices/{tag}"):
                node.getparent().remove(node)
        return etree.tostring(root, encoding="unicode")
    return edit


def test_screenshot_and_console_say_which_device_is_missing(
        realhost: Host, guests: Guests, wirt_pass: WirtPass) -> None:
    alice = realhost.add_user("alice")
    blind = guests.define(alice, "blind", edit=without("graphics", "video"))
    start(blind, wirt_pass)
    blind.command("console")
    wirt_pass()
    assert ("console: failed: the VM has no graphics device (a VNC or SPICE console); ask "
            "the admin to add one") in last_line(blind)
    blind.command("screenshot")
    wirt_pass()
    assert "screenshot: failed: the VM has no video device" in last_line(blind)
    assert not info_file(blind, "screen.png").exists()
    assert "protected" not in graphics(blind)


def test_screenshot_decodes_at_the_screens_size(realhost: Host, guests: Guests,
                                                wirt_pass: WirtPass) -> None:
    alice = realhost.add_user("alice")
    guest = guests.define(alice, "web")
    start(guest, wirt_pass)
    guest.command("screenshot")
    wirt_pass()
    png = info_file(guest, "screen.png")
    assert "screenshot: done" in last_line(guest), guest.log_lines()
    st = png.lstat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (alice.uid, 0o600)
    with Image.open(png) as image:
        assert image.format == "PNG"
        size = image.size
    # the screen's size, as libvirt hands it to the test itself
    stream = guest.lv.conn.newStream(0)
    guest.dom.screenshot(stream, 0, 0)
    data = bytearray()
    while chunk := stream.recv(1 << 16):
        data += chunk
    stream.finish()
    with Image.open(io.BytesIO(bytes(data))) as direct:
        assert size == direct.size and size[0] > 0


def every_file(*tops: Path) -> list[Path]:
    found = []
    for top in tops:
        if top.is_file():
            found.append(top)
        for folder, _, names in os.walk(top):
            found += [Path(folder, n) for n in names]
    return found


def test_console_password_opens_it_and_is_nowhere_else(
        realhost: Host, guests: Guests, wirt_pass: WirtPass, smtp: SmtpServer,  # noqa: F811
        syslog_sink: SyslogSink) -> None:
    """start applies the lock (audited), so the console asks for a password; console sets
    one: no password and a wrong one are refused, console.json's opens it; the password
    is in console.json alone."""
    alice = realhost.add_user("alice")
    realhost.extra_config = syslog_sink.config + mail_config(smtp)
    realhost.write_config()
    guest = guests.define(alice, "web")
    assert held_passwd(guest) is None
    start(guest, wirt_pass)
    assert held_passwd(guest) == ""  # the lock, before the boot
    locks = [r for r in realhost.audit_records() if r["event"] == "console-lock"]
    assert [(r["user"], r["domain"]) for r in locks] == [(alice.name, guest.name)]
    assert graphics(guest)["protected"] == "yes"
    port = live_port(guest)
    assert rfb.connect(port, None).startswith("refused")
    assert rfb.connect(port, "").startswith("refused")  # passwd='': nobody gets in yet

    guest.command("console", "--minutes 5\n")
    outputs = [wirt_pass()]
    console = info_file(guest, "console.json")
    assert "console --minutes 5: done" in last_line(guest), guest.log_lines()
    st = console.lstat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (alice.uid, 0o600)
    found = json.loads(console.read_text())
    assert sorted(found) == ["host", "password", "port", "type", "valid_until"]
    assert (found["type"], found["host"], found["port"]) == ("vnc", "127.0.0.1", port)
    password = found["password"]
    assert len(password) == 8 and password.isalnum()
    assert found["valid_until"].endswith("Z")
    assert rfb.connect(port, None).startswith("refused")
    wrong = "x" + password[1:] if password[0] != "x" else "y" + password[1:]
    assert rfb.connect(port, wrong).startswith("refused")
    assert rfb.connect(port, password) == "ok"

    # a failing command too, so that mail and the digest have something to say
    guest.command("console", "--minutes 7\n")
    outputs.append(wirt_pass())
    assert smtp.mails, "no mail was sent"
    assert graphics(guest)["protected"] == "yes"

    places = every_file(alice.home / "wirt", alice.home / "virsh", realhost.root / "state",
                        realhost.audit)
    holding = [p for p in places if password.encode() in p.read_bytes()]
    assert holding == [console], holding
    assert len(places) > 5
    for proc in outputs:
        assert password not in proc.stdout + proc.stderr
    for mail in smtp.mails:
        assert password not in mail.message.as_string()
    lines = syslog_sink.lines()
    assert any("rejected" in line for line in lines), lines
    assert not any(password in line for line in lines)


def test_lock_on_a_console_started_open(realhost: Host, guests: Guests,
                                        wirt_pass: WirtPass, smtp: SmtpServer,  # noqa: F811
                                        ) -> None:
    """A console started without a password is protected="no" and in the digest; console
    says what to do and the lock closes the definition; after a restart another member
    cannot get in without the password."""
    alice, bob = realhost.add_user("alice"), realhost.add_user("bob")
    realhost.extra_config = mail_config(smtp)
    realhost.write_config()
    guest = guests.define(alice, "web")
    guest.dom.create()  # by the admin, not wirt: no lock applied
    guest.wait_boots(1)
    port = live_port(guest)
    assert rfb.connect(port, None) == "ok"  # open to anyone on the host
    guest.command("status")
    wirt_pass()
    assert graphics(guest)["protected"] == "no"
    digest = [m for m in smtp.mails if "root" in m.recipients]
    assert digest and f"open console: {guest.name} (user {alice.name})" in \
        digest[0].message.get_content()

    guest.command("console")
    wirt_pass()
    assert ("console: failed: its console was started without a password, and QEMU cannot "
            "add one") in last_line(guest)
    assert "shut the VM down, start it again" in last_line(guest)
    assert held_passwd(guest) == ""
    assert not info_file(guest, "console.json").exists()

    guest.dom.destroy()
    start(guest, wirt_pass)
    port = live_port(guest)
    assert graphics(guest)["protected"] == "yes"
    # VNC on loopback knows no local users: bob's knock is this one
    bob_knocks = [rfb.connect(port, None), rfb.connect(port, "")]
    assert all(k.startswith("refused") for k in bob_knocks), bob_knocks
    bob.write("wirt/service/vm/web/console")  # bob's own 'web' is bob-web, not alice's
    wirt_pass()
    assert "console: failed: there is no domain named" in bob.vm_log("web")
    guest.command("console")
    wirt_pass()
    password = json.loads(info_file(guest, "console.json").read_text())["password"]
    assert rfb.connect(port, password) == "ok"


def test_reach_needs_the_wirt_layout(realhost: Host, guests: Guests,
                                     wirt_pass: WirtPass) -> None:
    alice = realhost.add_user("alice")
    guest = guests.define(alice, "web")
    alice.write("virsh/dom-web/serial")
    wirt_pass()
    logs = alice.home / "virsh/log"
    text = "".join(p.read_text() for p in logs.iterdir()) if logs.exists() else ""
    assert "serial: rejected: 'serial' writes serial.log into ~/wirt/info/vm/web/" in text
    assert not (alice.home / "wirt/info/vm/web/serial.log").exists()
    assert guest.state() != RUNNING


def test_without_the_lock_start_leaves_the_console_as_defined(
        realhost: Host, guests: Guests, wirt_pass: WirtPass) -> None:
    alice = realhost.add_user("alice")
    realhost.extra_config = "[console]\nlock = false\n"
    realhost.write_config()
    guest = guests.define(alice, "open")
    start(guest, wirt_pass)
    assert held_passwd(guest) is None
    assert not [r for r in realhost.audit_records() if r["event"] == "console-lock"]
    assert graphics(guest)["protected"] == "no"
    guest.command("console")
    wirt_pass()
    assert ("its console was started without a password, and QEMU cannot add one to a "
            "running console; ask the admin to give its console a password") in last_line(guest)
    assert held_passwd(guest) is None
