"""What every attack checks: nothing escaped, and the attacker was told why.

A :class:`Scene` has an attacker (``alice``), a victim (``bob``, who followed
the legacy README and made his spool group-writable, so only wirt's own
rules stand between alice and his files) and root's canaries in ``/root`` and
``/etc``.  Everything is snapshotted (content, mtime, inode, mode, owner)
before the attack and compared after it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import VIRSH_WRAPPER, Host, User

SHADOW = Path("/etc/shadow")
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


@dataclass(frozen=True)
class Snap:
    kind: str
    data: object  # file content, link target, or the sorted names in a folder
    ino: int
    mtime_ns: int
    mode: int
    uid: int
    gid: int


def snap(path: Path) -> Snap | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    data: object = None
    if stat.S_ISLNK(st.st_mode):
        kind, data = "link", os.readlink(path)
    elif stat.S_ISDIR(st.st_mode):
        kind, data = "dir", tuple(sorted(os.listdir(path)))
    elif stat.S_ISREG(st.st_mode):
        kind, data = "file", path.read_bytes()
    else:
        kind = "other"
    return Snap(kind, data, st.st_ino, st.st_mtime_ns, st.st_mode, st.st_uid, st.st_gid)


def snap_tree(root: Path) -> dict[str, Snap | None]:
    """Every entry below *root* (links not followed), by relative path."""
    found: dict[str, Snap | None] = {".": snap(root)}
    if not root.is_dir() or root.is_symlink():
        return found
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            found[str(path.relative_to(root))] = snap(path)
    return found


def walk_all(root: Path) -> list[Path]:
    out = []
    for folder, dirs, files in os.walk(root):
        out += [Path(folder) / n for n in dirs + files]
    return out


@dataclass
class Pass:
    proc: subprocess.CompletedProcess[str]
    seconds: float


@dataclass
class Scene:
    host: Host
    alice: User
    bob: User
    canaries: dict[str, Path] = field(default_factory=dict)
    before: dict[Path, Snap | None] = field(default_factory=dict)
    bob_before: dict[str, Snap | None] = field(default_factory=dict)
    shadow_line: bytes = b""
    shadow_meta: tuple[int, int, int] = (0, 0, 0)
    # inodes of other owners that the test or the attacker put into a home on purpose
    foreign: set[tuple[int, int]] = field(default_factory=set)

    # -- set-up ---------------------------------------------------------
    def prepare(self) -> None:
        tag = self.host.prefix
        root_canary = Path("/root") / f"{tag}-canary"
        etc_canary = Path("/etc") / f"{tag}-canary"
        root_canary.write_text("root's canary\n")
        root_canary.chmod(0o600)
        etc_canary.write_text("etc canary: root:$6$notreal:19000:0:99999:7:::\n")
        etc_canary.chmod(0o640)
        shutil.chown(etc_canary, "root", "shadow")
        self.canaries = {"root-canary": root_canary, "etc-canary": etc_canary,
                         "own-precious": self.alice.home / "private" / "precious"}
        self.alice.run("mkdir -m 700 private && printf 'alice precious\\n' > private/precious")
        self.bob_tree()
        for path in [*self.canaries.values(), Path("/root"), self.alice.home / "private"]:
            self.before[path] = snap(path)
        self.bob_before = snap_tree(self.bob.home)
        with SHADOW.open("rb") as handle:
            self.shadow_line = handle.readline().strip()
        st = SHADOW.stat()
        self.shadow_meta = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))

    def bob_tree(self) -> None:
        """Bob's spool, group-writable as the legacy README advised, with a pending command."""
        self.bob.run(
            "mkdir -p wirt/service/vm/web wirt/logs/vm wirt/logs/history wirt/info/vm/web"
            " && : > wirt/service/vm/web/autostart"
            " && printf 'bob log\\n' > wirt/logs/vm/web.log"
            " && printf 'bob notices\\n' > wirt/logs/wirt.log"
            " && : > wirt/logs/history/20200101-000000.000000-web-start"
            " && printf '<status>bob</status>\\n' > wirt/info/vm/web/status.xml"
            f" && chgrp -R {self.host.group} wirt && chmod -R g+rwX wirt"
            " && find wirt -type d -exec chmod g+s {} + && chmod 0711 ."
        )

    def reset_alice(self) -> None:
        """Alice's spool as a pass leaves it: every folder, a log, a status, no commands."""
        for name in os.listdir(self.alice.home):
            if name not in ("private",) and not name.startswith("."):
                path = self.alice.home / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        self.alice.run(
            "mkdir -p wirt/service/vm/web wirt/service/vm/db wirt/logs/vm wirt/logs/history"
            " wirt/info/vm/web && printf 'old log\\n' > wirt/logs/vm/web.log"
            " && printf 'old notices\\n' > wirt/logs/wirt.log"
            " && printf '<status/>\\n' > wirt/info/vm/web/status.xml"
        )

    def fresh_state(self) -> None:
        """Forget root's audit log, journal and reported notices (a new host, same users)."""
        state = self.host.root / "state"
        if state.exists():
            shutil.rmtree(state)

    def plant(self, path: Path) -> None:
        """Record an entry of another owner that the test or the attacker put into a home."""
        st = os.lstat(path)
        self.foreign.add((st.st_dev, st.st_ino))

    # -- running passes ---------------------------------------------------
    def run(self, *args: str, only_alice: bool = True, env: dict[str, str] | None = None,
            prefix: tuple[str, ...] = ()) -> Pass:
        """One real pass, as cron+sudo would start it (root, clean environment)."""
        argv = [*prefix, VIRSH_WRAPPER, "--config", str(self.host.config), *args]
        if only_alice:
            argv += ["--user", self.alice.name]
        started = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                              env={"PATH": "/usr/bin:/bin", **(env or {})})
        seconds = time.monotonic() - started
        assert proc.returncode == 0, f"virsh_wrapper exited {proc.returncode}: {proc.stderr}"
        return Pass(proc, seconds)

    def frozen_clock(self, when: str) -> dict[str, str]:
        """Environment that freezes the wall clock (libfaketime), to predict history names."""
        return {"LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME": when,
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                # the tool clears its environment: libfaketime must not read it again
                "FAKETIME_CACHE_DURATION": "3600"}

    # -- what the users read ------------------------------------------------
    def logs(self, user: User) -> list[str]:
        """Every line of the user's per-VM logs and general log (never following links)."""
        lines: list[str] = []
        folder = user.home / "wirt" / "logs"
        for path in [*sorted((folder / "vm").glob("*.log")), folder / "wirt.log"]:
            if path.is_file() and not path.is_symlink() and not path.parent.is_symlink() \
                    and not folder.is_symlink() and not (user.home / "wirt").is_symlink():
                lines += path.read_text(errors="replace").splitlines()
        return lines

    def told(self, user: User, *words: str) -> str:
        """The line of *user*'s own logs that holds all *words* (file, token, rule)."""
        for line in self.logs(user):
            if all(w in line for w in words):
                return line
        raise AssertionError(f"{user.name} was not told {words}; their logs:\n"
                             + "\n".join(self.logs(user)))

    def audit(self) -> list[dict[str, Any]]:
        path = self.host.audit
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def commands(self) -> list[dict[str, Any]]:
        return [r for r in self.audit() if r["event"] == "command"]

    def audit_notice(self, *words: str) -> str:
        for record in self.audit():
            text = str(record.get("message") or record.get("reason") or "")
            if record["event"] in ("notice", "user-incomplete") and all(w in text for w in words):
                return text
        raise AssertionError(f"no audit notice with {words}: {self.audit()}")

    # -- the checks ------------------------------------------------------------
    def check_no_escape(self) -> None:
        """Root's files, bob's tree and alice's own private files are exactly as before;
        no root-owned file in any home; every command touched alice's own domains only."""
        for path, before in self.before.items():
            assert snap(path) == before, f"{path} changed"
        after = snap_tree(self.bob.home)
        changed = {k for k in set(after) | set(self.bob_before)
                   if after.get(k) != self.bob_before.get(k)}
        assert not changed, f"bob's home changed: {sorted(changed)}"
        st = SHADOW.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == self.shadow_meta
        for user in (self.alice, self.bob):
            for path in walk_all(user.home):
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) in self.foreign:
                    continue
                assert st.st_uid == user.uid, f"{path} is owned by uid {st.st_uid}"
                assert st.st_gid != 0, f"{path} has gid 0"
                if stat.S_ISREG(st.st_mode) and st.st_size < 1 << 20:
                    assert self.shadow_line not in path.read_bytes(), f"{path} holds shadow"
        for record in self.commands():
            assert record["user"] == self.alice.name, record
            assert record["domain"] == f"{self.alice.name}-{record['vm']}", record

    def check_alice_owns_her_tree(self) -> None:
        """Every entry in alice's tree is hers: uid, and gid (hers, or a setgid folder's)."""
        for path in walk_all(self.alice.home):
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) in self.foreign:
                continue
            parent = os.lstat(path.parent)
            gids = {self.alice.gid}
            if parent.st_mode & stat.S_ISGID:
                gids.add(parent.st_gid)
            assert st.st_uid == self.alice.uid and st.st_gid in gids, (
                f"{path}: uid {st.st_uid} gid {st.st_gid}")

    def cleanup(self) -> None:
        for key in ("root-canary", "etc-canary"):
            path = self.canaries.get(key)
            if path is not None and path.exists():
                path.unlink()



# A stand-in for one member's user side (a subverted one, SECURITY row 19), run inside
# the real pass: a driver replaces user_main for ATTACKER only, before anything forks, so
# the attacker's child (dropped to the user for good) speaks on the real channel whatever
# EVIL (the test's body: `def evil(chan, arg)`) says; every other member is served as ever.
_STAND_IN = r'''
import json, struct, sys
try:
    import wirt_wrapper.user.side as side
    from wirt_wrapper.root.main import main
except ImportError:  # the layout before issue 9
    import wirt_wrapper.userside as side
    from wirt_wrapper.main import main

ATTACKER, ARG = sys.argv[1], sys.argv[2]
real = side.user_main

def frame(chan, data):
    chan.sock.sendall(struct.pack("!I", len(data)) + data)

def ask(chan, message):
    frame(chan, json.dumps(message).encode())
    size = struct.unpack("!I", chan.sock.recv(4, 0x100))[0]  # MSG_WAITALL
    return json.loads(chan.sock.recv(size, 0x100))

EVIL

def user_main(fields, chan):
    if fields["user"] != ATTACKER:
        return real(fields, chan)
    evil(chan, ARG)
    frame(chan, b'{"op":"bye","statuses":{}}')

side.user_main = user_main
sys.exit(main(sys.argv[3:]))
'''


def stand_in_pass(config: Path, attacker: str, evil: str, arg: str,
                  *args: str) -> subprocess.CompletedProcess[str]:
    """One real pass (as root, clean environment) with *attacker*'s user side replaced."""
    import sys

    driver = _STAND_IN.replace("EVIL", evil)
    return subprocess.run([sys.executable, "-I", "-c", driver, attacker, arg,
                           "--config", str(config), *args],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
                          timeout=120)
