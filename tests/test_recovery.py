"""Recovery of a pass killed between the placeholder and the claim: nothing of the user's
is deleted, the user is told, and the command is still handled exactly once.

The journal a killed pass leaves is written here the way root.monitor writes it
("intent", with the history name, before the placeholder is made).  The claim's own
clean-up (a placeholder this turn made a moment before a failed claim) is checked too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import Host, User

HIST = "20260101-000000.000000-web-autostart"


def plant_intent(host: Host, user: User, command: Path, hist: str) -> str:
    """The journal of a pass killed after journaling *hist* (the placeholder may exist)."""
    cid = "killed-1"
    record = {"id": cid, "stage": "intent", "uid": user.uid, "user": user.name,
              "layout": "wirt", "vm": "web", "file": command.name,
              "ino": command.stat().st_ino, "action": "autostart", "tokens": [],
              "domain": f"{user.name}-web", "hist": hist}
    state = host.root / "state"
    state.mkdir(mode=0o700)
    journal = state / "journal.jsonl"
    journal.write_text(json.dumps(record) + "\n")
    journal.chmod(0o600)
    return cid


def test_a_placeholder_left_by_a_killed_pass_is_kept_and_named(host: Host) -> None:
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None})
    command = alice.write("wirt/service/vm/web/autostart")
    placeholder = alice.write(f"wirt/logs/history/{HIST}")  # empty, the user's
    cid = plant_intent(host, alice, command, HIST)

    host.run()

    assert placeholder.exists() and placeholder.stat().st_size == 0  # kept
    notes = (alice.home / "wirt/logs/wirt.log").read_text()
    assert notes.count(f"~/wirt/logs/history/{HIST} is an empty file left from an "
                       "interrupted pass") == 1, notes
    assert "~/wirt/service/vm/web/autostart, which was not run" in notes
    assert "you may remove it" in notes
    # the command was never claimed: it stayed pending and this pass ran it, once
    [record] = host.commands()
    assert record["id"] != cid and (record["action"], record["outcome"]) == ("autostart", "done")
    assert os.listdir(alice.home / "wirt/service/vm/web") == []
    history = alice.history()
    assert len(history) == 2 and HIST in history
    assert alice.vm_log("web").count("autostart: done") == 1
    assert (host.root / "state/journal.jsonl").read_text() == ""  # the entry is closed

    host.run()  # nothing more: no second run, no second notice
    assert len(host.commands()) == 1
    assert (alice.home / "wirt/logs/wirt.log").read_text() == notes
    assert placeholder.exists()


def test_a_placeholder_of_a_failed_claim_is_undone(host: Host) -> None:
    """A claim that fails (here: the VM folder is not writable) leaves no file in history,
    pass after pass; the command stays where it is and the user is told once."""
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None})
    command = alice.write("wirt/service/vm/web/autostart")
    alice.run("chmod 0555 ~/wirt/service/vm/web")

    host.run()
    host.run()

    assert command.exists()
    assert alice.history() == []
    assert host.commands() == []
    notes = (alice.home / "wirt/logs/wirt.log").read_text()
    assert notes.count("cannot be moved to history (Permission denied)") == 1, notes
    assert (host.root / "state/journal.jsonl").read_text() == ""


def test_the_claim_clean_up_removes_only_its_own_empty_file(tmp_path: Path) -> None:
    """Whatever is at the name when the placeholder is undone, it is removed only if it
    is the very (empty) file that was placed."""
    from wirt_wrapper.user.side import UserSide  # here: the rest runs against any executable

    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        (tmp_path / "own").touch()
        placed = os.stat("own", dir_fd=folder)
        UserSide.remove_placeholder(folder, "own", placed)
        assert not (tmp_path / "own").exists()

        (tmp_path / "swapped").touch()
        placed = os.stat("swapped", dir_fd=folder)
        (tmp_path / "other").write_text("")
        os.rename(tmp_path / "other", tmp_path / "swapped")  # another file took the name
        UserSide.remove_placeholder(folder, "swapped", placed)
        assert (tmp_path / "swapped").exists()

        (tmp_path / "arrived").touch()
        placed = os.stat("arrived", dir_fd=folder)
        with open(tmp_path / "arrived", "w") as same:  # the same file, no longer empty
            same.write("--disable\n")
        UserSide.remove_placeholder(folder, "arrived", placed)
        assert (tmp_path / "arrived").read_text() == "--disable\n"

        UserSide.remove_placeholder(folder, "gone", placed)  # nothing there: no error
    finally:
        os.close(folder)
