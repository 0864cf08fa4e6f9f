"""The owner index's file (wirt_wrapper.root.owners): what a pass reads again, and two
writers that never undo each other.  Real root-only files in a state folder of the test's."""

from __future__ import annotations

import json
import os
from pathlib import Path

from wirt_wrapper.root.owners import INDEX_FILE, RESCAN_SECONDS, OwnerIndex
from wirt_wrapper.root.state import secure_folder


def state(tmp_path: Path) -> str:
    tmp_path.chmod(0o755)
    return secure_folder(str(tmp_path / "state"), "state_dir")


def test_only_new_domains_are_read_until_the_daily_rescan(tmp_path: Path) -> None:
    folder = state(tmp_path)
    now = 1_000_000.0
    first = OwnerIndex(folder)
    assert first.to_read(["u1", "u2"], now) == ["u1", "u2"]  # never scanned: all
    first.learn("u1", ("alice", "box"))
    first.learn("u2", None)
    first.save()
    data = json.loads(Path(folder, INDEX_FILE).read_text())
    assert data == {"owners": {"u1": ["alice", "box"]}, "seen": ["u1", "u2"], "scanned": now}
    assert os.stat(Path(folder, INDEX_FILE)).st_mode & 0o777 == 0o600

    later = OwnerIndex(folder)
    assert later.to_read(["u1", "u2", "u3"], now + 60) == ["u3"]  # only the new one
    assert later.by_folder({"u1": "other-box", "u2": "x"}) == {("alice", "box"): ["other-box"]}
    assert later.to_read(["u1", "u2", "u3"], now + RESCAN_SECONDS) == ["u1", "u2", "u3"]
    later.keep_only(["u2"])  # u1 undefined
    later.save()
    assert json.loads(Path(folder, INDEX_FILE).read_text()) == {
        "owners": {}, "seen": ["u2"], "scanned": now + RESCAN_SECONDS}


def test_a_pass_and_the_admin_keep_each_others_changes(tmp_path: Path) -> None:
    """The pass loaded the file before `wirt admin assign` wrote it; its save keeps it."""
    folder = state(tmp_path)
    pass_ = OwnerIndex(folder)
    admin = OwnerIndex(folder)
    admin.learn("u9", ("bob", "web"))
    admin.save()
    pass_.learn("u1", ("alice", None))
    pass_.save()
    owners = json.loads(Path(folder, INDEX_FILE).read_text())["owners"]
    assert owners == {"u1": ["alice", None], "u9": ["bob", "web"]}


def test_a_torn_or_odd_file_is_read_as_empty_entries(tmp_path: Path) -> None:
    folder = state(tmp_path)
    path = Path(folder, INDEX_FILE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, json.dumps({"owners": {"u1": ["alice"], "u2": ["bob", None], "u3": 7},
                             "seen": ["u2", 3], "scanned": "x"}).encode())
    os.close(fd)
    index = OwnerIndex(folder)
    assert index.claims == {"u2": ("bob", None)} and index.seen == {"u2"}
    assert index.to_read(["u2"]) == ["u2"]  # no valid scan time: a rescan now


def test_no_rescan_while_a_host_is_down(tmp_path: Path) -> None:
    """A listing without a host that is down is not the whole host list: it never
    counts as the daily rescan, whose time would then skip that host's domains."""
    index = OwnerIndex(str(tmp_path))
    now = 1_800_000_000.0
    index.learn("u1", None)
    assert index.to_read(["u1", "u2"], now, complete=False) == ["u2"]
    assert index.to_read(["u1", "u2"], now) == ["u1", "u2"]
