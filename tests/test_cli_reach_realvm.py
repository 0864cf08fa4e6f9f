"""``wirt console|screenshot|serial`` and ``wirt --host HOST`` on a real guest (SPEC 10).

The user runs the real ``wirt`` (as the user, through runuser) while passes of the
real executable run (conftest.passes).  ``--host`` goes through a real OpenSSH
server on loopback, started by the test on a spare port with its own config and
host key in a temporary folder; the user gets a key of their own in
authorized_keys and an ``~/.ssh/config`` that names the port.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import BIN, Host, User, passes
from guest import realvm, rfb
from guest.fixtures import Guest, Guests, WirtPass
from PIL import Image
from test_cli import WIRT, published, wirt
from test_notify import free_port

pytestmark = pytest.mark.realvm

SSHD = Path("/usr/sbin/sshd")


def booted(realhost: Host, guests: Guests, wirt_pass: WirtPass, user: User) -> Guest:
    guest = guests.define(user, "web")
    guest.command("start")
    wirt_pass()
    guest.wait_boots(1)
    return guest


def test_console_screenshot_serial_commands(realhost: Host, guests: Guests,
                                            wirt_pass: WirtPass) -> None:
    alice = realhost.add_user("alice")
    guest = booted(realhost, guests, wirt_pass, alice)
    with published(realhost), passes(realhost):
        proc = wirt(alice, "console", "web", "--minutes", "5")
        shot = wirt(alice, "screenshot", "web", "-o", str(alice.home / "shot.png"))
        serial = wirt(alice, "serial", "web")
        rejected = wirt(alice, "console", "web", "--minutes", "7")
        shown = wirt(alice, "status", "web")
    assert proc.returncode == 0, proc.stderr
    console = json.loads((alice.home / "wirt/info/vm/web/console.json").read_text())
    assert proc.stdout.splitlines() == [
        f"web: console: vnc 127.0.0.1 port {console['port']}",
        f"password: {console['password']}", f"valid until: {console['valid_until']}"]
    assert console["password"] not in proc.stderr
    assert rfb.connect(console["port"], console["password"]) == "ok"

    assert shot.returncode == 0, shot.stderr
    with Image.open(alice.home / "shot.png") as image:
        width, height = image.size
    assert shot.stdout.strip() == (f"web: screenshot: {width}x{height} in "
                                   f"~/wirt/info/vm/web/screen.png, saved as "
                                   f"{alice.home / 'shot.png'}")
    assert (alice.home / "shot.png").stat().st_uid == alice.uid

    assert serial.returncode == 0, serial.stderr
    assert realvm.BOOTED in serial.stdout
    # the CLI refuses what the table refuses, before any pass
    assert rejected.returncode == 64 and "invalid choice: '7'" in rejected.stderr
    assert "; password: wirt console" in shown.stdout  # the lock closed it at start
    assert guest.state() != 0


def test_console_starts_a_viewer_without_the_password_on_its_command_line(
        realhost: Host, guests: Guests, wirt_pass: WirtPass, tmp_path: Path) -> None:
    """A stand-in remote-viewer: there is no X display on the test machines, so the real
    one cannot run; the stand-in records its command line and the file it was given."""
    alice = realhost.add_user("alice")
    booted(realhost, guests, wirt_pass, alice)
    bin_dir = alice.home / "bin"
    alice.run(f"mkdir -p {bin_dir} && cat > {bin_dir}/remote-viewer && chmod 755 "
              f"{bin_dir}/remote-viewer", check=True)
    (bin_dir / "remote-viewer").write_text(
        '#!/bin/sh\nprintf "%s\\n" "$@" > "$HOME/viewer-argv"\n'
        'cat "$1" > "$HOME/viewer-file"\nls -l "$1" >> "$HOME/viewer-argv"\n')
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "DISPLAY": ":99"}
    with published(realhost), passes(realhost):
        proc = wirt(alice, "console", "web", env=env)
    assert proc.returncode == 0, proc.stderr
    password = json.loads((alice.home / "wirt/info/vm/web/console.json").read_text())[
        "password"]
    argv = (alice.home / "viewer-argv").read_text()
    assert password not in argv and "-rw------- " in argv
    vv = (alice.home / "viewer-file").read_text()
    assert "type=vnc\nhost=127.0.0.1\n" in vv and f"password={password}\n" in vv
    given = Path(argv.splitlines()[0])
    assert not given.exists() and not given.parent.exists()  # removed after the viewer


# -- wirt --host over a real sshd on loopback ---------------------------------------------
class Sshd:
    def __init__(self, folder: Path, user: User) -> None:
        self.folder, self.user, self.port = folder, user, free_port()
        self.log = folder / "sshd.log"
        key = folder / "host_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        config = folder / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {key}\n"
            f"PidFile {folder}/sshd.pid\nAuthorizedKeysFile .ssh/authorized_keys\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM yes\n"
            f"AllowUsers {user.name}\nSetEnv PATH={BIN}:/usr/bin:/bin\n")
        self.made_run = not Path("/run/sshd").exists()
        if self.made_run:
            os.mkdir("/run/sshd", 0o755)
        self.proc = subprocess.Popen([str(SSHD), "-D", "-f", str(config), "-E", str(self.log)])
        self.client_setup()

    def client_setup(self) -> None:
        user = self.user
        user.run("mkdir -p -m 700 ~/.ssh && ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519"
                 " && cp ~/.ssh/id_ed25519.pub ~/.ssh/authorized_keys", check=True)
        (user.home / ".ssh/config").write_text(
            f"Host localhost wirthost\n  HostName 127.0.0.1\n  Port {self.port}\n"
            "  StrictHostKeyChecking accept-new\n  UserKnownHostsFile ~/.ssh/known_hosts\n")
        os.chown(user.home / ".ssh/config", user.uid, user.gid)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if "listening" in (self.log.read_text() if self.log.exists() else ""):
                return
            time.sleep(0.1)
        raise AssertionError(f"sshd did not start: {self.log.read_text()}")

    def sessions(self) -> int:
        return self.log.read_text().count(f"Accepted publickey for {self.user.name}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        if self.made_run:
            shutil.rmtree("/run/sshd", ignore_errors=True)


@pytest.fixture
def sshd_for(tmp_path: Path) -> Iterator[Callable[[User], Sshd]]:
    """Start a real sshd for one user (stopped at teardown)."""
    if not SSHD.exists():
        pytest.skip("openssh-server is not installed: run tests/setup-host.sh")
    made: list[Sshd] = []
    folder = tmp_path / "sshd"
    folder.mkdir()

    def start(user: User) -> Sshd:
        made.append(Sshd(folder, user))
        return made[-1]

    try:
        yield start
    finally:
        for server in made:
            server.stop()


def test_host_runs_the_command_over_ssh_and_tunnels_the_console(
        realhost: Host, guests: Guests, wirt_pass: WirtPass,
        sshd_for: Callable[[User], Sshd]) -> None:
    alice = realhost.add_user("alice")
    guest = booted(realhost, guests, wirt_pass, alice)
    server = sshd_for(alice)
    with published(realhost), passes(realhost):
        listed = wirt(alice, "--host", "localhost", "list")
        assert listed.returncode == 0, listed.stderr
        assert "web" in listed.stdout and server.sessions() == 1

        shot = wirt(alice, "--host", "localhost", "screenshot", "web", "-o",
                    str(alice.home / "remote.png"))
        assert shot.returncode == 0, shot.stderr
        with Image.open(alice.home / "remote.png") as image:
            assert image.format == "PNG" and image.size[0] > 0

        # the default host from ~/.config/wirt/config.toml, then from the old ~/.wirt.json
        alice.write(".config/wirt/config.toml", 'host = "wirthost"\n')
        serial = wirt(alice, "serial", "web")
        assert serial.returncode == 0 and realvm.BOOTED in serial.stdout, serial.stderr
        assert server.sessions() == 3
        os.unlink(alice.home / ".config/wirt/config.toml")
        alice.write(".wirt.json", '{"host": "wirthost"}')
        serial = wirt(alice, "serial", "web")
        assert serial.returncode == 0 and server.sessions() == 4, serial.stderr
        here = wirt(alice, "--host", "", "serial", "web")  # '' is this machine
        assert here.returncode == 0 and server.sessions() == 4
        os.unlink(alice.home / ".wirt.json")

        bad = wirt(alice, "--host", "-oProxyCommand=touch /tmp/x", "list")
        assert bad.returncode == 64 and "not a host name" in bad.stderr

        config = ["--config", published_config(realhost)]
        viewer = subprocess.Popen(
            ["/usr/sbin/runuser", "-u", alice.name, "--", WIRT, *config, "--host",
             "localhost", "console", "web"], cwd=alice.home, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
            env={"HOME": str(alice.home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            start_new_session=True)
        assert viewer.stdout is not None
        lines = [viewer.stdout.readline() for _ in range(3)]
    try:
        found = re.match(r"web: console: vnc 127\.0\.0\.1 port (\d+) \(tunnel to localhost\)",
                         lines[0])
        assert found, lines
        local = int(found.group(1))
        password = lines[1].split(": ", 1)[1].strip()
        assert password == json.loads(
            (alice.home / "wirt/info/vm/web/console.json").read_text())["password"]
        assert local != rfb_port(guest)
        assert rfb.connect(local, None).startswith("refused")
        assert rfb.connect(local, password) == "ok"  # through the tunnel
    finally:
        os.killpg(viewer.pid, signal.SIGINT)  # Ctrl-C: the tunnel closes, wirt ends
        viewer.wait(20)
    assert server.sessions() == 6  # the console's wirt, and its tunnel


def published_config(host: Host) -> str:
    from test_cli import SITE_CONFIG
    return SITE_CONFIG[-1]


def rfb_port(guest: Guest) -> int:
    return int(json.loads((guest.user.home / "wirt/info/vm/web/console.json").read_text())[
        "port"])
