"""SECURITY row 8: root writes nothing into a user's tree, and keeps none of its groups.

Precedent: maildrop (CVE-2010-0301) dropped the uid but kept root's gid.
After a pass that creates every kind of output, everything in each home
belongs to its user, uid AND gid.  Then a pass runs with root holding an
extra supplementary group that owns a secret; the user-side children are
watched through /proc while they run (uid, gid, groups, capabilities), and
the secret, placed in alice's tree readable by that group only, must never
be read into anything alice can see.  (User sides are forked by a spawner
process, itself a child of the pass: all descendants are watched.)
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import VIRSH_WRAPPER, sh
from outcomes import descendants

from .kit import Scene

pytestmark = pytest.mark.attack


def test_every_output_belongs_to_the_user(scene: Scene) -> None:
    alice = scene.alice
    alice.run("rm -rf wirt")  # nothing prepared: the pass makes every folder
    alice.write("wirt/service/vm/web/autostart")
    alice.write("wirt/service/vm/web/reset", "--domain x")
    alice.write("wirt/service/vm/db/start")
    alice.write("wirt/service/vm/gone/status")
    alice.run("mkdir 'wirt/service/vm/bad name'")
    scene.run()
    made = {p.relative_to(alice.home).as_posix() for p in (alice.home / "wirt").rglob("*")}
    assert {"wirt/logs/vm/web.log", "wirt/logs/wirt.log", "wirt/info/vm/web/status.xml",
            "wirt/info/vm/gone/status.xml", "wirt/logs/history"} <= made, made
    assert len(list((alice.home / "wirt/logs/history").iterdir())) == 4
    scene.check_no_escape()
    scene.check_alice_owns_her_tree()
    for rel in made:
        st = os.lstat(alice.home / rel)
        assert st.st_mode & 0o022 == 0, f"{rel} is group/other-writable"


def proc_status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def watch(parent: int, seen: list[dict[str, str]], done: threading.Event) -> None:
    """Sample *parent* and all its descendants as often as possible until *done*."""
    while not done.is_set():
        for pid in [parent, *descendants(parent)]:
            status = proc_status(pid)
            if status:
                seen.append(status)


def test_groups_are_dropped(scene: Scene) -> None:
    alice, host = scene.alice, scene.host
    group = host.prefix + "sec"
    sh("groupadd", group)
    try:
        gid = int(sh("getent", "group", group).stdout.split(":")[2])
        token = "SECRET" + secrets.token_hex(8)
        # a file and a folder only group `group` can read, put into alice's tree by root
        secret = alice.home / "wirt/service/vm/web/start"
        secret.write_text(f"--{token}\n")
        os.chown(secret, 0, gid)
        secret.chmod(0o640)
        folder = alice.home / "wirt/service/vm/vault"
        folder.mkdir(mode=0o750)
        (folder / "start").write_text(f"--{token}\n")
        for path in (folder, folder / "start"):
            os.chown(path, 0, gid)
            scene.plant(path)
        scene.plant(secret)
        for i in range(40):  # keep the user side busy long enough to be watched
            alice.write(f"wirt/service/vm/v{i}/status")

        seen: list[dict[str, str]] = []
        done = threading.Event()
        proc = subprocess.Popen(
            ["setpriv", f"--groups=0,{gid}", "--", VIRSH_WRAPPER, "--config", str(host.config),
             "--user", alice.name], env={"PATH": "/usr/bin:/bin"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watcher = threading.Thread(target=watch, args=(proc.pid, seen, done))
        watcher.start()
        out, err = proc.communicate(timeout=60)
        done.set()
        watcher.join()
        assert proc.returncode == 0, err
        root = [s for s in seen if s.get("Uid", "").split()[:1] == ["0"]
                and str(gid) in s.get("Groups", "").split()]
        assert root, "the pass never ran as root holding the secret's group"

        dropped = [s for s in seen if s.get("Uid", "").split()[:1] == [str(alice.uid)]]
        assert dropped, f"never caught the user side running ({len(seen)} samples)"
        want_groups = sorted(str(g) for g in os.getgrouplist(alice.name, alice.gid))
        for status in dropped:
            assert status["Uid"].split() == [str(alice.uid)] * 4, status["Uid"]
            assert status["Gid"].split() == [str(alice.gid)] * 4, status["Gid"]
            assert sorted(set(status["Groups"].split())) == want_groups, status["Groups"]
            assert str(gid) not in status["Groups"].split()
            for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
                assert int(status[cap], 16) == 0, (cap, status[cap])
        print(f"{len(dropped)} samples of the user side; groups {want_groups}")

        scene.check_no_escape()
        scene.told(alice, "~/wirt/service/vm/web/start", "owned by uid 0", "rejected")
        scene.told(alice, "~/wirt/service/vm/vault", "owned by uid 0")
        leaks = [str(p) for p in alice.home.rglob("*") if p.is_file() and not p.is_symlink()
                 and os.lstat(p).st_uid == alice.uid and token.encode() in p.read_bytes()]
        assert leaks == [], f"the secret reached alice's files: {leaks}"
        assert token not in host.audit.read_text() and token not in out + err
        assert re.search(r"owned by uid 0", host.audit.read_text())
    finally:
        sh("groupdel", group, check=False)
