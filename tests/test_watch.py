"""The watch service (SPEC 12): the real ``virsh_wrapper --watch``, real members, test driver.

Each test starts the service as root, acts as a real member (runuser) and
waits for the outcome in the member's own log: well under a second on an
idle machine; the tests allow 3 s, for a loaded one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil
from conftest import VIRSH_WRAPPER, Host, SyslogSink, User
from outcomes import Identity, check_exactly_once
from watching import listings_of, stderr_of, wait_for, watching

T = TypeVar("T")

QUICK = 3.0  # seconds: the bound for "at once" on a loaded 2-core machine


def setup(host: Host, *vms: str, extra: str = "") -> User:
    alice = host.add_user("alice")
    host.extra_config = extra
    host.write_config({f"{alice.name}-{vm}": alice.name for vm in vms})
    for vm in vms:
        alice.run(f"mkdir -p wirt/service/vm/{vm}")
    return alice


def command(user: User, vm: str, action: str, content: str = "") -> None:
    """Write a command the safe way (a dot name, renamed into place), as the user."""
    folder = f"wirt/service/vm/{vm}"
    user.run(f'mkdir -p {folder} && printf %s "$1" > {folder}/.{action} && '
             f'mv {folder}/.{action} {folder}/{action}', content)


def outcome(user: User, vm: str, action: str, count: int = 1) -> float:
    """Seconds until the VM's log holds *count* outcome lines for *action*."""
    return wait_for(lambda: user.vm_log(vm).count(f" {vm} {action}: ") >= count, QUICK,
                    f"{user.name}'s {vm} {action} outcome; log: {user.vm_log(vm)!r}")


def test_command_served_at_once(host: Host) -> None:
    alice = setup(host, "web")
    with watching(host) as proc:
        assert "watching the spools of 1 members" in stderr_of(proc)
        command(alice, "web", "suspend")
        outcome(alice, "web", "suspend")
        assert "web suspend: done" in alice.vm_log("web")
        command(alice, "web", "autostart")
        outcome(alice, "web", "autostart")
    (record,) = [r for r in host.audit_records() if r["event"] == "command"
                 and r["action"] == "autostart"]
    assert record["user"] == alice.name and record["outcome"] == "done"
    # the first full pass, then one record per mini pass that did something: the idle
    # looks (after the watches were placed, after the folders a first turn makes) leave none
    passes = [r for r in host.audit_records() if r["event"] == "pass"]
    assert [r["done"] for r in passes] == [0, 1, 1], passes


def test_cron_pass_beside_it_exits_at_once(host: Host) -> None:
    alice = setup(host, "web")
    with watching(host):
        started = time.monotonic()
        proc = host.run("--verbose")
        assert time.monotonic() - started < QUICK
        assert proc.returncode == 0 and "another pass is running" in proc.stdout
        second = subprocess.run([VIRSH_WRAPPER, "--config", str(host.config), "--watch"],
                                capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
                                timeout=30)
        assert second.returncode == 4 and "holds the lock" in second.stderr, second.stderr
    # stopped: the lock is free again, and a pass serves what is there
    alice.write("wirt/service/vm/web/suspend")
    assert "1 done" in host.run("--verbose").stdout


def test_deleted_and_recreated_folders_are_watched_again(host: Host) -> None:
    alice = setup(host, "web")
    with watching(host):
        alice.run("rm -rf wirt/service/vm/web && mkdir wirt/service/vm/web")
        time.sleep(0.5)  # the new folder is seen and watched (a re-arm), then:
        command(alice, "web", "suspend")
        outcome(alice, "web", "suspend")
        # the whole spool replaced
        alice.run("mv wirt/service wirt/service.old && mkdir -p wirt/service/vm/web")
        time.sleep(0.5)
        command(alice, "web", "autostart")
        outcome(alice, "web", "autostart")


def test_spool_made_after_the_start_is_watched(host: Host) -> None:
    """Only ~/wirt at the start: it is watched (never the home), and the spool made later."""
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": alice.name})
    alice.run("mkdir wirt")
    with watching(host):
        command(alice, "web", "suspend")  # mkdir -p service/vm/web, then the file
        outcome(alice, "web", "suspend")


def test_new_vm_folder_is_watched(host: Host) -> None:
    alice = setup(host, "web", "db")
    alice.run("rmdir wirt/service/vm/db")
    with watching(host):
        command(alice, "db", "suspend")
        outcome(alice, "db", "suspend")
        command(alice, "db", "autostart")  # a watch on the new folder itself
        outcome(alice, "db", "autostart")


def test_sigterm_stops_it_and_a_restart_serves(host: Host) -> None:
    alice = setup(host, "web")
    with watching(host) as proc:
        pass
    assert proc.returncode == 0 and "watch stopped" in stderr_of(proc)
    alice.write("wirt/service/vm/web/suspend")  # written while nothing runs
    with watching(host):  # the first full pass serves it
        outcome(alice, "web", "suspend")


def test_a_member_waiting_for_a_turn_when_a_full_pass_begins_keeps_their_hints(
        host: Host) -> None:
    """A member hinted but waiting for a turn (their bucket empty) when a full pass begins:
    the full pass serves what waited, and the member's change hints go on after it (they
    were not being read while the member waited).  One turn per 5 s here, a full pass
    every 4 s: the third command is served by its hint about a second after it is written,
    not by the next full pass four seconds on."""
    alice = setup(host, "web", extra="[watch]\nfull_pass_seconds = 4\n"
                                     "user_turns_per_second = 0.2\n")
    host.run()  # the folders a first turn makes: no idle look (a turn) after the first pass
    with watching(host, "--verbose") as proc:
        def served(count: int, seconds: float, what: str) -> float:
            return wait_for(lambda: alice.vm_log("web").count(" web autostart") >= count,
                            seconds, what)

        command(alice, "web", "autostart")
        served(1, QUICK, "the first")  # her turn: the next is due in 5 s
        command(alice, "web", "autostart", "--disable")  # waits; the full pass comes first
        served(2, 6, "the full pass")
        full = "full pass: 1 users served, 0 skipped; commands: 1 done"
        wait_for(lambda: full in stderr_of(proc), QUICK, "the full pass's summary")
        command(alice, "web", "autostart")
        took = served(3, 6, "the hint")
        wait_for(lambda: "mini pass: 1 users served" in stderr_of(proc).split(full)[-1],
                 QUICK, "a mini pass after the full pass")
    assert took < 2.5, took


def test_no_hints_falls_back_to_the_full_pass_and_says_so_once(host: Host) -> None:
    """The member has used up their own inotify instances: the placer gets EMFILE.  Their
    commands are served by the full pass; the admin is told once; others are unaffected."""
    alice = setup(host, "web", extra="[watch]\nfull_pass_seconds = 2\n")
    bob = host.add_user("bob")
    host.write_config({f"{alice.name}-web": alice.name, f"{bob.name}-web": bob.name})
    hog = subprocess.Popen(
        ["/usr/sbin/runuser", "-u", alice.name, "--", "/usr/bin/python3", "-c",
         "import ctypes, sys, time\n"
         "libc = ctypes.CDLL(None, use_errno=True)\n"
         "fds = []\n"
         "while (fd := libc.inotify_init1(0)) >= 0: fds.append(fd)\n"
         "import os\n"
         "print(len(fds), os.getpid(), flush=True)\n"
         "time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert hog.stdout is not None
        count, holder = map(int, hog.stdout.readline().split())
        assert count > 0
        with watching(host) as proc:
            wait_for(lambda: "no change hints" in stderr_of(proc), QUICK, "the fallback")
            assert "EMFILE" in stderr_of(proc) and "max_user_instances" in stderr_of(proc)
            command(bob, "web", "suspend")  # bob has hints
            outcome(bob, "web", "suspend")
            command(alice, "web", "suspend")  # alice waits for the full pass (2 s)
            wait_for(lambda: " web suspend: " in alice.vm_log("web"), 10, "the full pass")
            time.sleep(4.5)  # two more full passes: placing fails again, not told again
            assert stderr_of(proc).count("no change hints") == 1
            os.kill(holder, signal.SIGKILL)  # the member's own process: its instances go
            hog.wait()
            wait_for(lambda: "change hints work again" in stderr_of(proc), 10, "a new try")
            command(alice, "web", "autostart")
            outcome(alice, "web", "autostart")
        fallbacks = [r for r in host.audit_records() if r["event"] == "watch-fallback"]
        assert [r["user"] for r in fallbacks] == [alice.name]
    finally:
        if hog.poll() is None:
            os.kill(hog.pid, signal.SIGKILL)
            hog.wait()


KILL_FILES = [("autostart", ""), ("suspend", ""), ("status", ""), ("destroy", "--graceful"),
              ("reset", "--domain x")]


def burst(user: User, vms: list[str], files: list[tuple[str, str]],
          base: int) -> dict[Identity, tuple[int, bytes]]:
    """Every file into every VM folder at once, each written under a dot name with its own
    mtime (1 ms apart) and renamed into place: the fingerprints check_exactly_once wants."""
    script, made = [], {}
    millis = 0
    for vm in vms:
        for name, content in files:
            millis += 1
            path = f"wirt/service/vm/{vm}"
            script.append(f"printf %s '{content}' > {path}/.{name} && "
                          f"touch -d @{base}.{millis:03d} {path}/.{name} && "
                          f"mv {path}/.{name} {path}/{name}")
            made[(user.name, vm, name)] = (base * 10**9 + millis * 10**6, content.encode())
    user.run(" && ".join(script))
    return made


def test_killed_during_a_burst_loses_and_repeats_nothing(host: Host) -> None:
    """kill -9 of the service in the middle of a burst, and again soon after its restart
    (while it settles the journal): every command has exactly one outcome."""
    users = [host.add_user(n) for n in ("alice", "bob", "carol")]
    vms = [f"v{i}" for i in range(4)]
    host.extra_config = "[limits]\nmax_files_per_user = 3\n"  # many turns: kills land mid-way
    host.write_config({f"{u.name}-{vm}": u.name for u in users for vm in vms})
    for user in users:
        user.run("mkdir -p " + " ".join(f"wirt/service/vm/{vm}" for vm in vms))
    expected: dict[Identity, tuple[int, bytes]] = {}
    killed = 0
    with watching(host) as first:
        for index, user in enumerate(users):
            expected |= burst(user, vms, KILL_FILES, 1_600_000_000 + index * 1000)
        wait_for(lambda: any(u.vm_log(vm) for u in users for vm in vms), QUICK, "the burst")
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        killed += 1
    assert first.returncode == -signal.SIGKILL
    served = sum(u.vm_log(vm).count("\n") for u in users for vm in vms)
    assert 0 < served < len(expected), f"killed after {served} of {len(expected)}: not mid-burst"
    with watching(host) as second:  # settles the journal, serves some, killed again
        time.sleep(0.2)
        os.kill(second.pid, signal.SIGKILL)
        second.wait()
        killed += 1
    with watching(host):
        wait_for(lambda: not any(not p.name.startswith(".") for u in users
                                 for p in (u.home / "wirt/service/vm").glob("*/*")),
                 30, "the spools to empty")
    host.run()  # settles anything left open, and must find nothing to do twice
    counts = check_exactly_once(host, users, expected)
    assert sum(counts.values()) == len(expected) == 60 and killed == 2


def test_a_member_hinted_during_a_mini_pass_joins_it(host: Host) -> None:
    """A burst still landing when its first mini pass starts: a member hinted while that
    pass runs is served in it (the same look and user side), not after it in a pass of
    their own.  Without the join there is a 'pass' record (written when a pass that did
    something ends) between alice's first command and bob's."""
    alice, bob = host.add_user("alice"), host.add_user("bob")
    vms = [f"v{i}" for i in range(40)]  # alice's turn: long enough for bob's hint to land
    host.write_config({**{f"{alice.name}-{vm}": alice.name for vm in vms},
                       f"{bob.name}-web": bob.name})
    alice.run("mkdir -p " + " ".join(f"wirt/service/vm/{vm} stage/{vm}" for vm in vms))
    for vm in vms:  # staged outside the spool (no hint yet), moved in at once below
        alice.write(f"stage/{vm}/autostart")
    bob.run("mkdir -p wirt/service/vm/web stage && : > stage/autostart")
    with watching(host, "--verbose") as proc:  # first the look each fresh placement gets
        wait_for(lambda: "mini pass: 2 users served" in stderr_of(proc), QUICK, "the looks")
        spool = alice.home / "wirt/service/vm"
        for vm in vms:  # renames as the user's own mv would make them, but in 1 ms
            os.rename(alice.home / "stage" / vm / "autostart", spool / vm / "autostart")
        wait_for(lambda: any(alice.vm_log(vm) for vm in vms), QUICK, "alice's first outcome")
        os.rename(bob.home / "stage/autostart", bob.home / "wirt/service/vm/web/autostart")
        outcome(bob, "web", "autostart")
        wait_for(lambda: all(" autostart: " in alice.vm_log(vm) for vm in vms), QUICK * 3,
                 "alice's outcomes")
    records = host.audit_records()
    commands = [i for i, r in enumerate(records) if r["event"] == "command"]
    first = next(i for i in commands if records[i]["user"] == alice.name)
    (bobs,) = [i for i in commands if records[i]["user"] == bob.name]
    between = [r for r in records[first:bobs] if r["event"] == "pass"]
    assert not between, f"bob waited for alice's pass to end: {between}"
    assert records[bobs]["outcome"] == "done"
    passes = [r for r in records if r["event"] == "pass"]
    assert passes[-1]["done"] == len(vms) + 1, passes  # one mini pass served them all


def side_of(user: User) -> psutil.Process | None:
    """The user's user side (the one process running as the user), if there is one now."""
    found = []
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info["uids"]
        if uids is not None and uids.real == user.uid:
            found.append(proc)
    return found[0] if len(found) == 1 else None


def stopped(proc: psutil.Process | None) -> psutil.Process | None:
    """*proc*, stopped (SIGSTOP); None if there is none or it has just ended."""
    try:
        if proc is not None:
            proc.suspend()
            return proc
    except psutil.NoSuchProcess:
        pass
    return None


def wait_for_value(get: Callable[[], T | None], seconds: float, what: str) -> T:
    """Poll *get* until it gives something (AssertionError after *seconds*)."""
    found: list[T] = []
    wait_for(lambda: (value := get()) is not None and not found.append(value), seconds, what)
    return found[0]


def test_a_member_whose_look_came_too_early_joins_again(host: Host) -> None:
    """A command written the safe way (a dot file, then renamed into place) hints at the
    dot file: the member joins the mini pass under way, and their look finds nothing yet.
    The rename that follows still joins that pass (once more), instead of waiting for it
    to end.  Without that, bob's command is served by a pass of its own, after alice's."""
    alice, bob = host.add_user("alice"), host.add_user("bob")
    vms = [f"v{i}" for i in range(50)]  # alice's turn: 100 commands, long enough
    host.write_config({**{f"{alice.name}-{vm}": alice.name for vm in vms},
                       f"{bob.name}-web": bob.name})
    alice.run("mkdir -p " + " ".join(f"wirt/service/vm/{vm} stage/{vm}" for vm in vms))
    for vm in vms:
        alice.write(f"stage/{vm}/autostart")
        alice.write(f"stage/{vm}/suspend")
    bob.run("mkdir -p wirt/service/vm/web")
    with watching(host, "--verbose") as proc:
        wait_for(lambda: "mini pass: 2 users served" in stderr_of(proc), QUICK, "the looks")
        spool = alice.home / "wirt/service/vm"
        for vm in vms:
            for action in ("autostart", "suspend"):
                os.rename(alice.home / "stage" / vm / action, spool / vm / action)
        # alice's turn, held still (SIGSTOP) while bob comes and goes: the pass stays under
        # way however fast the machine serves her 100 commands
        wait_for(lambda: any(alice.vm_log(vm) for vm in vms), QUICK, "alice's first outcome")
        turn = wait_for_value(lambda: stopped(side_of(alice)), QUICK, "alice's turn to stop")
        try:
            web = bob.home / "wirt/service/vm/web"
            with listings_of(web) as listed:
                bob.run(": > wirt/service/vm/web/.autostart")  # the hint
                listed(QUICK, "bob's look")  # it listed the folder: nothing to do yet
            os.rename(web / ".autostart", web / "autostart")
            outcome(bob, "web", "autostart")
        finally:
            turn.resume()
        wait_for(lambda: all(" suspend: " in alice.vm_log(vm) for vm in vms), QUICK * 3,
                 "alice's outcomes")
        wait_for(lambda: "mini pass: 2 users served" in stderr_of(proc).split("suspend: done")[-1],
                 QUICK, "the end of the pass")  # counted once, though bob joined it twice
        out = stderr_of(proc)
    records = host.audit_records()
    (bobs,) = [r for r in records if r["event"] == "command" and r["user"] == bob.name]
    assert bobs["outcome"] == "done"
    passes = [r for r in records if r["event"] == "pass"]
    assert passes[-1]["done"] == 2 * len(vms) + 1, (passes, out)  # one mini pass for all
    assert "mini pass: 2 users served, 0 skipped; commands: 101 done" in out, out
    assert f"{bob.name} joins the mini pass under way again (their look came before" in out, out


def test_a_pass_for_some_users_serves_as_a_full_pass_does(host: Host) -> None:
    """``--user`` (and a watch's mini pass) takes no snapshot of the host's domains: each
    domain asked about is looked up alone.  The outcomes, status.xml and settings are
    the same as a full pass's."""
    alice, bob = host.add_user("alice"), host.add_user("bob")
    host.write_config({f"{alice.name}-web": alice.name, f"{bob.name}-web": bob.name,
                       f"{alice.name}-gone": None})
    alice.write("wirt/service/vm/web/suspend")
    alice.write("wirt/service/vm/web/config", '{"memory_mib": 128}')
    alice.write("wirt/service/vm/nosuch/autostart")
    bob.write("wirt/service/vm/web/suspend")
    proc = host.run("--verbose", "--user", alice.name)
    assert "1 users served" in proc.stdout and "2 done, 1 failed" in proc.stdout, proc.stdout
    assert "web suspend: done" in alice.vm_log("web")
    assert f"there is no domain named '{alice.name}-nosuch'" in alice.vm_log("nosuch")
    assert "<state" in alice.status("web") and "paused" in alice.status("web")
    assert [(r["action"], r["outcome"]) for r in host.commands()
            if r["action"] == "config"] == [("config", "done")]
    assert (bob.home / "wirt/service/vm/web/suspend").exists()  # not served


def test_event_masks_decide_the_re_arm(tmp_path: Path) -> None:
    """Root's reading of a real inotify instance: masks only; a folder made, moved or gone,
    or a watched folder itself removed, means placing the watches again; files do not."""
    import ctypes

    from wirt_wrapper.root.watch import is_inotify, needs_rearm, read_masks
    from wirt_wrapper.rules.inotify import FOLDER_EVENTS, IN_CLOEXEC, IN_NONBLOCK

    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(IN_CLOEXEC | IN_NONBLOCK)
    assert fd >= 0 and is_inotify(fd) and not is_inotify(0)
    try:
        folder = tmp_path / "vm"
        folder.mkdir()
        assert libc.inotify_add_watch(fd, str(folder).encode(), FOLDER_EVENTS) >= 0
        assert read_masks(fd) == []
        (folder / "start").write_text("")
        (folder / "start").rename(folder / "stop")
        (folder / "stop").unlink()
        masks = read_masks(fd)
        assert masks and not any(needs_rearm(m) for m in masks), masks
        (folder / "sub").mkdir()
        assert any(needs_rearm(m) for m in read_masks(fd) or [])
        (folder / "sub").rmdir()
        folder.rmdir()  # the watched folder itself: DELETE_SELF, then IGNORED
        assert any(needs_rearm(m) for m in read_masks(fd) or [])
    finally:
        os.close(fd)


def test_a_turns_own_claims_are_not_hints(tmp_path: Path) -> None:
    """not_own on a real inotify instance: a claim (a command file renamed out of its VM
    folder) is one plain IN_MOVED_FROM, and only as many as the turn claimed are dropped;
    a file made or moved in, or one more moved out, is still a hint."""
    import ctypes

    from wirt_wrapper.root.watch import not_own, read_masks
    from wirt_wrapper.rules.inotify import FOLDER_EVENTS, IN_CLOEXEC, IN_NONBLOCK

    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(IN_CLOEXEC | IN_NONBLOCK)
    assert fd >= 0
    try:
        folder, history = tmp_path / "vm", tmp_path / "history"
        folder.mkdir()
        history.mkdir()
        for name in ("start", "stop", "autostart"):
            (folder / name).write_text("")
        assert libc.inotify_add_watch(fd, str(folder).encode(), FOLDER_EVENTS) >= 0
        (folder / "start").rename(history / "start-1")  # two claims
        (folder / "stop").rename(history / "stop-1")
        claims = read_masks(fd) or []
        assert len(claims) == 2 and not not_own(claims, 2)
        assert not_own(claims, 1) == claims[:1]  # the user moved one more out: a hint
        assert not_own(claims, 0) == claims
        (folder / "autostart").rename(history / "autostart-1")
        (folder / "suspend").write_text("")  # the user's new file, during the turn
        mixed = read_masks(fd) or []
        assert not_own(mixed, 1) and not_own(mixed, 5)
        (folder / "sub").mkdir()
        (folder / "sub").rename(history / "sub")  # a folder moved out: never discounted
        assert not_own([m for m in read_masks(fd) or [] if m & 0x40], 9)
    finally:
        os.close(fd)


def test_a_served_member_is_not_looked_at_again(host: Host) -> None:
    """After a turn, no idle look follows for the command file it moved out itself: one
    mini pass per command (before, every turn was followed by a second one, hinted by
    its own claim).  A file the member removes afterwards is still a change hint."""
    alice = setup(host, "web", "db")
    alice.run("mkdir stage && : > stage/autostart && : > stage/.notes")
    spool = alice.home / "wirt/service/vm"

    def drop(name: str, vm: str = "web") -> None:  # one rename, as the member's mv makes it
        os.rename(alice.home / "stage" / name, spool / vm / name)

    with watching(host, "--verbose") as proc:
        wait_for(lambda: "mini pass: 1 users served" in stderr_of(proc), QUICK, "the look")
        drop("autostart")  # the first outcome makes ~/wirt/logs: a folder event, a look
        outcome(alice, "web", "autostart")
        time.sleep(1.5)
        minis = stderr_of(proc).count("mini pass:")
        alice.run(": > stage/autostart")
        drop("autostart")
        outcome(alice, "web", "autostart", 2)
        time.sleep(1.5)  # what an idle look after the turn would take, and more
        assert stderr_of(proc).count("mini pass:") == minis + 1, stderr_of(proc)
        drop(".notes", "db")  # a dot name, as an editor leaves: no command, but a hint
        wait_for(lambda: stderr_of(proc).count("mini pass:") >= minis + 2, QUICK,
                 "the look after the member's own file")
        time.sleep(0.5)
        minis = stderr_of(proc).count("mini pass:")
        alice.run("rm wirt/service/vm/db/.notes")  # removed: a hint as well
        wait_for(lambda: stderr_of(proc).count("mini pass:") > minis, QUICK,
                 "the look after the member removed a file")


def test_says_so_in_syslog_and_an_idle_look_stays_quiet(host: Host,
                                                        syslog_sink: SyslogSink) -> None:
    """'watching' and 'stopped' reach syslog (a real datagram socket the test binds); the
    idle looks (each turn's own moves, the first placement) send no pass summary."""
    alice = host.add_user("alice")
    host.extra_config = syslog_sink.config
    host.write_config({f"{alice.name}-web": alice.name})
    alice.run("mkdir -p wirt/service/vm/web")
    lines = syslog_sink.received
    received = syslog_sink.lines
    with watching(host):
        wait_for(lambda: any("watch: watching the spools of 1 members" in x
                             for x in received()), QUICK, f"syslog: {lines}")
        command(alice, "web", "suspend")
        outcome(alice, "web", "suspend")
        time.sleep(1)  # any idle look after the turn (the folders it made: a re-arm)
    received()
    summaries = [x for x in lines if ": pass: " in x]
    assert len(summaries) == 2, lines  # the first full pass, the mini pass that ran it
    assert "done=1" in summaries[1]
    assert any("watch: watch stopped" in x for x in lines), lines
