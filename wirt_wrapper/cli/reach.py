"""``wirt console|screenshot|serial`` after the pass, and ``wirt --host HOST`` (as the user).

What a pass wrote into ``~/wirt/info/vm/<vm>/`` is read back through
:class:`~wirt_wrapper.cli.spool.Home` (no link followed).  A viewer is started
only when one is installed and a display is set; the password reaches
``remote-viewer`` in a 0600 file in a private folder (never on a command
line, which every local user can read in /proc), ``vncviewer`` not at all
(the user types it).  ``--host`` runs the same wirt on HOST with the user's
own ``ssh``: the remote command is one ``shlex.join`` string (ssh hands it to
a shell there), HOST is checked to be a host name (never an ssh option), and
for ``console`` an ``ssh -L`` tunnel to the console port is opened and the
viewer pointed at its local end.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from wirt_wrapper.rules.errors import UsageError

__all__ = ["HOST_NAME", "check_host", "png_size", "remote", "start_viewer", "terminal_text",
           "tunnel_console"]

# user@host, host, an IPv4 or bracket-free IPv6 address; never starting with '-'
HOST_NAME = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}@)?[A-Za-z0-9][A-Za-z0-9.:-]{0,252}")
VIEWERS = ("remote-viewer", "vncviewer")
TUNNEL_WAIT = 15.0  # seconds for ssh -L to start listening


def check_host(host: str) -> str:
    if not HOST_NAME.fullmatch(host):
        raise UsageError(f"--host {host!r}: not a host name (user@host or host); "
                         "ssh options go into ~/.ssh/config")
    return host


def png_size(data: bytes) -> tuple[int, int] | None:
    """A PNG's width and height from its header (no decoding), or None."""
    if len(data) >= 24 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def terminal_text(data: bytes) -> str:
    """A guest's serial output made safe for a terminal: lines kept, escapes shown."""
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    return "".join(c if c in "\n\t" or c.isprintable() else
                   f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
                   for c in text)


def display_set() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def start_viewer(kind: str, host: str, port: int, password: str) -> str | None:
    """Run a viewer on the console until it is closed; what was run, or None (none here)."""
    if not display_set():
        return None
    for name in VIEWERS:
        path = shutil.which(name)
        if path is None or (name == "vncviewer" and kind != "vnc"):
            continue
        if name == "remote-viewer":
            folder = tempfile.mkdtemp(prefix="wirt-viewer-")  # 0700, the user's own
            vv = os.path.join(folder, "console.vv")
            fd = os.open(vv, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(f"[virt-viewer]\ntype={kind}\nhost={host}\nport={port}\n"
                             f"password={password}\n")
            try:
                subprocess.run([path, vv], check=False)
            finally:
                os.unlink(vv)
                os.rmdir(folder)
        else:
            subprocess.run([path, f"{host}::{port}"], check=False)
        return name
    return None


def ssh_program() -> str:
    path = shutil.which("ssh")
    if path is None:
        raise UsageError("--host needs ssh (openssh-client), which is not installed here")
    return path


def remote(host: str, argv: list[str], *, capture: bool = False
           ) -> subprocess.CompletedProcess[bytes]:
    """``wirt ARGV`` on *host* through the user's ssh (no local shell; one quoted string for
    the remote one).  ``--host ''`` keeps the remote wirt from going further."""
    command = shlex.join(["wirt", "--host", "", *argv])
    return subprocess.run([ssh_program(), "-o", "BatchMode=yes", "--", check_host(host),
                           command], check=False, stdout=subprocess.PIPE if capture else None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tunnel_console(host: str, console: dict[str, Any]) -> tuple[subprocess.Popen[bytes], int]:
    """``ssh -N -L localport:CONSOLEHOST:CONSOLEPORT HOST``, listening; (process, local port)."""
    local = _free_port()
    target = f"{local}:{console['host']}:{int(console['port'])}"
    proc = subprocess.Popen([ssh_program(), "-N", "-o", "BatchMode=yes", "-o",
                             "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{target}", "--",
                             check_host(host)])
    deadline = time.monotonic() + TUNNEL_WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UsageError(f"ssh -L to {host} ended at once (exit {proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", local), timeout=1):
                return proc, local
        except OSError:
            time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise UsageError(f"ssh -L to {host} did not start listening within {TUNNEL_WAIT:g} s")


def console_lines(vm: str, console: dict[str, Any], via: str = "") -> list[str]:
    return [f"{vm}: console: {console['type']} {console['host']} port {console['port']}{via}",
            f"password: {console['password']}",
            f"valid until: {console['valid_until']}"]


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))
    sys.stdout.flush()
