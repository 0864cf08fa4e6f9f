"""What users read: every rejection names the file, what was wrong, and what to do instead.

One real pass over a spool full of mistakes; each log line is checked for
the three parts.
"""

from __future__ import annotations

import os

from conftest import Host

WEB = "wirt/service/vm/web"

# file name -> (content, what was wrong, what to do)
CASES = {
    "restart": ("", "'restart' is not an action", "name the file after one of them"),
    "start": ("--domain bob-web", "token '--domain' is not accepted by 'start'",
              "write only those"),
    "reset": ("--force", "token '--force' is not accepted by 'reset' (takes no parameters)",
              "leave the file empty"),
    "resume": ("a\nb", "more than one line", "write one file per command"),
    "suspend": ("caf\u00e9", "byte 0xc3 at position 3 is not printable ASCII",
                "write the parameters in plain ASCII"),
}


def test_every_rejection_says_file_problem_and_remedy(host: Host) -> None:
    alice = host.add_user("alice")
    bob = host.add_user("bob")
    host.write_config({f"{alice.name}-web": None, f"{alice.name}-theirs": bob.name})
    for name, (content, _, _) in CASES.items():
        alice.write(f"{WEB}/{name}", content)
    alice.write(f"{WEB}/shutdown", "--mode")
    alice.write(f"{WEB}/destroy", "--graceful=yes")
    alice.write(f"{WEB}/autostart", "x" * 5000)
    alice.run(f"mkfifo {WEB}/reboot && touch ~/other && ln ~/other {WEB}/stop")
    alice.write("wirt/service/vm/theirs/start")
    alice.write("wirt/service/vm/gone/start")
    host.run()

    log = alice.vm_log("web")
    lines = {line.split()[2].rstrip(":"): line for line in log.splitlines()}
    for name, (_, wrong, remedy) in CASES.items():
        line = lines[name]
        assert f"~/{WEB}/{name}" in line and wrong in line and remedy in line, line
    assert "'--mode' needs a value: one of acpi, agent (for example '--mode acpi')" \
        in lines["shutdown"]
    assert "'--graceful' takes no value; write '--graceful' alone" in lines["destroy"]
    assert f"~/{WEB}/autostart has 5000 bytes, more than the limit of 4096; a command file " \
        "holds one short line" in lines["autostart"]
    assert f"~/{WEB}/reboot is a FIFO; wirt reads only regular files: write a plain file " \
        "instead" in lines["reboot"]
    assert f"~/{WEB}/stop has 2 hard links" in lines["stop"]
    assert "write a new file instead of linking one" in lines["stop"]
    # the log line also says where the file went: nothing is lost
    assert all("kept as ~/wirt/logs/history/" in line for line in lines.values())
    assert len(os.listdir(alice.home / "wirt/logs/history")) == len(lines) + 2

    theirs = alice.vm_log("theirs")
    assert f"domain '{alice.name}-theirs' is assigned to another user" in theirs
    assert "ask the admin if this one should be yours" in theirs
    gone = alice.vm_log("gone")
    assert f"there is no domain named '{alice.name}-gone'; check the VM folder's name, or ask " \
        "the admin to create the VM" in gone
