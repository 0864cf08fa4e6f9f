"""SECURITY.md row 17: the serial log's path (admin-defined, in the domain XML) where a user
can write, swapped for a link to /etc/shadow; a link or a FIFO at the path itself.

Root reads the log only when every folder on its path is root's alone, opened
O_NOFOLLOW|O_NONBLOCK, a regular file (root/reach.py).  The domains are the real
guest's definition on qemu:///system with the serial path changed, never started
(a serial log is read also when the VM is off).  Each test checks that alice is
told to ask the admin, that no serial.log is written, that no line of /etc/shadow
is in any file of her home or the audit log, and that the pass does not hang.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Host, User
from guest.fixtures import Guest, Guests, WirtPass

pytestmark = [pytest.mark.attack, pytest.mark.realvm]

SHADOW = Path("/etc/shadow")


def serial_at(path: Path) -> Callable[[str], str]:
    def edit(xml: str) -> str:
        start = xml.index("<source path='")
        end = xml.index("'", start + len("<source path='"))
        return xml[:start] + f"<source path='{path}" + xml[end:]
    return edit


def leaked(user: User, host: Host) -> list[Path]:
    secret = SHADOW.read_bytes().splitlines()[0]
    found = []
    for folder, _, names in os.walk(user.home):
        for name in names:
            path = Path(folder, name)
            if path.is_file() and not path.is_symlink() and secret in path.read_bytes():
                found.append(path)
    if secret in host.audit.read_bytes():
        found.append(host.audit)
    return found


def ask_serial(guest: Guest, host: Host, wirt_pass: WirtPass) -> str:
    guest.command("serial")
    started = time.monotonic()
    wirt_pass()
    assert time.monotonic() - started < 30  # a FIFO never holds the pass
    line = guest.log_lines()[-1]
    assert "serial: failed:" in line, line
    assert not (guest.user.home / "wirt/info/vm" / guest.vm / "serial.log").exists()
    assert leaked(guest.user, host) == []
    return line


def test_folder_the_user_can_write_holding_a_link_to_shadow(
        realhost: Host, guests: Guests, wirt_pass: WirtPass, tmp_path: Path) -> None:
    alice = realhost.add_user("alice")
    folder = tmp_path / "serial-logs"  # where the admin put it: alice's to write
    folder.mkdir()
    os.chown(folder, alice.uid, alice.gid)
    log = folder / "web.log"
    os.symlink(SHADOW, log)  # what alice puts there
    os.lchown(log, alice.uid, alice.gid)
    guest = guests.define(alice, "web", edit=serial_at(log))
    line = ask_serial(guest, realhost, wirt_pass)
    assert f"{folder} is owned by uid {alice.uid}, not root" in line
    assert "ask the admin to keep the VM's serial log in a folder only root can write" in line


def test_group_writable_root_folder(realhost: Host, guests: Guests, wirt_pass: WirtPass,
                                    tmp_path: Path) -> None:
    alice = realhost.add_user("alice")
    folder = tmp_path / "shared-logs"
    folder.mkdir()
    folder.chmod(0o777)  # root's, but anyone may swap the file (mkdir ignores the umask so)
    log = folder / "web.log"
    os.symlink(SHADOW, log)
    guest = guests.define(alice, "web", edit=serial_at(log))
    line = ask_serial(guest, realhost, wirt_pass)
    assert f"{folder} is writable by group or others" in line


def test_folder_on_the_path_is_a_link_to_the_users_folder(
        realhost: Host, guests: Guests, wirt_pass: WirtPass, tmp_path: Path) -> None:
    alice = realhost.add_user("alice")
    mine = tmp_path / "alices"
    mine.mkdir()
    os.chown(mine, alice.uid, alice.gid)
    os.symlink(SHADOW, mine / "web.log")
    linked = tmp_path / "logs"
    os.symlink(mine, linked)  # root's link, to a folder alice can change
    guest = guests.define(alice, "web", edit=serial_at(linked / "web.log"))
    line = ask_serial(guest, realhost, wirt_pass)
    assert f"{linked} is not a folder" in line


def test_link_or_fifo_in_a_root_folder(realhost: Host, guests: Guests, wirt_pass: WirtPass,
                                       tmp_path: Path) -> None:
    alice = realhost.add_user("alice")
    folder = tmp_path / "root-logs"
    folder.mkdir(mode=0o755)
    link, fifo = folder / "link.log", folder / "fifo.log"
    os.symlink(SHADOW, link)
    os.mkfifo(fifo, 0o600)
    by_link = guests.define(alice, "lnk", edit=serial_at(link))
    by_fifo = guests.define(alice, "fifo", edit=serial_at(fifo))
    assert "is a symbolic link, which wirt does not follow" in ask_serial(
        by_link, realhost, wirt_pass)
    assert "is not a regular file" in ask_serial(by_fifo, realhost, wirt_pass)

    # the control: a root folder and a regular file are read
    (folder / "ok.log").write_text("WIRT-GUEST: booted\n")
    good = guests.define(alice, "good", edit=serial_at(folder / "ok.log"))
    good.command("serial")
    wirt_pass()
    assert (alice.home / "wirt/info/vm/good/serial.log").read_text() == "WIRT-GUEST: booted\n"
