"""SECURITY row 6: option injection in a command file's content.

Precedent: the legacy script appended the content to the virsh command line
unparsed, so ``--domain bob-web`` drove bob's VM.  Each injection sits in its
own VM folder of alice's; the domains live on the real libvirtd (defined,
never started) so that their autostart flag after the pass is the proof.
"""

from __future__ import annotations

import pytest

from .conftest import RealDomains
from .kit import Scene

pytestmark = pytest.mark.attack

# (file, content, the token alice's log must name)
INJECTIONS = [
    ("autostart", b"--domain BOB-web", "--domain"),
    ("autostart", b"--domain=BOB-web", "--domain=BOB-web"),
    ("autostart", b"-c qemu+ssh://evil/system", "-c"),
    ("autostart", b"--connect=qemu:///system", "--connect=qemu:///system"),
    ("autostart", b"--file /etc/shadow", "--file"),
    ("autostart", b"/etc/shadow", "/etc/shadow"),
    ("autostart", b"BOB-web", "BOB-web"),
    ("autostart", b"--disable\n--domain BOB-web\n", "more than one line"),
    ("autostart", b"--disable\0--domain BOB-web", "NUL byte"),
    ("autostart", b"--disable --domain BOB-web", "--domain"),
    ("autostart", b"--disable; virsh autostart BOB-web", "--disable;"),
    ("autostart", b"$(virsh autostart BOB-web)", "$(virsh"),
    ("autostart", b"--disable --disable", "given twice"),
    ("autostart", b"--disable=BOB-web", "takes no value"),
    ("start", b"--paused --domain BOB-web", "--domain"),
    ("shutdown", b"--mode BOB-web", "BOB-web"),
    ("shutdown", b"--mode=acpi --domain=BOB-web", "--domain=BOB-web"),
    ("destroy", b"--graceful BOB-web", "BOB-web"),
    ("autostart", "--disable \u2014domain BOB-web".encode(), "not printable ASCII"),
]


def test_option_injection(scene: Scene, real_domains: RealDomains) -> None:
    alice, bob = scene.alice, scene.bob
    real_domains.define(f"{alice.name}-web")
    real_domains.define(f"{bob.name}-web")
    for index, (file, content, _) in enumerate(INJECTIONS):
        rel = f"wirt/service/vm/i{index}/{file}"
        path = alice.home / rel
        alice.run('mkdir -p "$(dirname "$1")" && : > "$1"', str(path))
        path.write_bytes(content.replace(b"BOB", bob.name.encode()))  # her file, any bytes
    alice.write("wirt/service/vm/web/autostart", f"--domain {bob.name}-web")

    scene.run()

    scene.check_no_escape()
    assert real_domains.autostart(f"{bob.name}-web") is False
    assert real_domains.autostart(f"{alice.name}-web") is False
    records = scene.commands()
    assert len(records) == len(INJECTIONS) + 1
    assert {r["outcome"] for r in records} == {"rejected"}
    assert all(r["domain"] != f"{bob.name}-web" for r in records)
    for index, (file, _, token) in enumerate(INJECTIONS):
        scene.told(alice, f"i{index} ", f"~/wirt/service/vm/i{index}/{file}",
                   token.replace("BOB", bob.name), "rejected")
    scene.told(alice, "~/wirt/service/vm/web/autostart", "'--domain'", "is not accepted",
               "rejected")

    # control: the same folder without the injection does reach libvirt
    alice.write("wirt/service/vm/web/autostart")
    scene.run()
    assert real_domains.autostart(f"{alice.name}-web") is True
    assert real_domains.autostart(f"{bob.name}-web") is False


def test_names_cannot_forge_log_lines(scene: Scene) -> None:
    """A file or folder name with a newline or a terminal escape is shown escaped: it
    cannot forge a line (or colour) in alice's log, which the mail digests will quote."""
    alice = scene.alice
    fake = "\n2030-01-01T00:00:00+0000 web destroy: done [forged-1]\x1b[2J"
    alice.run(': > "wirt/service/vm/web/start$1" && mkdir "wirt/service/vm/db$1"'
              ' && mkfifo "wirt/service/vm/web/$1"', fake)

    scene.run()

    scene.check_no_escape()
    for line in scene.logs(alice):
        assert "forged" not in line or line.count("\\x0a") >= 1, line
        assert "\x1b" not in line, line
        assert not line.startswith("2030-01-01"), line
    assert len([r for r in scene.commands() if r["outcome"] == "rejected"]) == 2
    scene.told(alice, "start\\x0a2030-01-01", "is not an action", "rejected")
    scene.told(alice, "db\\x0a2030-01-01", "is not allowed")
