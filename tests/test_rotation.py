"""Per-VM logs are rotated by size, by the tool, as the user; link tricks lead nowhere.

Each attack aims a generation name at a file the *user* may write (so only
wirt's own care, not the kernel, keeps it intact): a tool that followed the
link would overwrite it.
"""

from __future__ import annotations

import gzip
import os
import stat

from conftest import Host, User

LOGS = "wirt/logs/vm"


def setup(host: Host, keep: int = 2) -> User:
    alice = host.add_user("alice")
    host.extra_config = f"[limits]\nlog_max_bytes = 300\nlog_keep = {keep}\n"
    host.write_config({f"{alice.name}-web": None})
    return alice


def command(user: User, n: int) -> None:
    user.write("wirt/service/vm/web/autostart", "--disable" if n % 2 else "")


def test_rotated_as_the_user_keeping_compressed_generations(host: Host) -> None:
    alice = setup(host, keep=2)
    old = "".join(f"old line {i} " + "x" * 40 + "\n" for i in range(8))  # > 300 bytes
    alice.write(f"{LOGS}/web.log", old)
    command(alice, 0)
    host.run()

    logs = alice.home / LOGS
    assert sorted(os.listdir(logs)) == ["web.log", "web.log.1.gz"]
    assert gzip.decompress((logs / "web.log.1.gz").read_bytes()).decode() == old
    assert alice.vm_log("web").count("\n") == 1 and ": done" in alice.vm_log("web")
    for name in os.listdir(logs):
        st = os.lstat(logs / name)
        assert (st.st_uid, st.st_gid) == (alice.uid, alice.gid), name
        assert stat.S_IMODE(st.st_mode) == 0o600 and stat.S_ISREG(st.st_mode)

    # grow past the limit again, twice: generations move up, at most 2 are kept
    generations = [old]
    for n in range(1, 40):
        before = alice.vm_log("web")
        command(alice, n)
        host.run()
        if not alice.vm_log("web").startswith(before):  # rotated in this pass
            generations.insert(0, before)
        if len(generations) == 4:
            break
    assert len(generations) == 4
    assert sorted(os.listdir(logs)) == ["web.log", "web.log.1.gz", "web.log.2.gz"]
    assert gzip.decompress((logs / "web.log.1.gz").read_bytes()).decode() == generations[0]
    assert gzip.decompress((logs / "web.log.2.gz").read_bytes()).decode() == generations[1]
    assert all(os.lstat(logs / n).st_uid == alice.uid for n in os.listdir(logs))


def test_links_at_generation_names_are_never_written_through(host: Host) -> None:
    alice = setup(host, keep=3)
    for name in ("precious1", "precious2", "precious3"):
        alice.write(name, f"{name} must not change\n")
    old = "y" * 400 + "\n"
    alice.write(f"{LOGS}/web.log", old)
    alice.run(f"cd {LOGS} && ln -s ~/precious1 web.log.1.gz && ln -s ~/precious2 web.log.3.gz "
              "&& ln -s ~/precious3 .web.log.1.gz.new")
    command(alice, 0)
    host.run()

    for name in ("precious1", "precious2", "precious3"):
        assert (alice.home / name).read_text() == f"{name} must not change\n"
    logs = alice.home / LOGS
    # rotation refused, with the reason; the log line is still written
    assert os.path.islink(logs / "web.log.1.gz") and os.path.islink(logs / "web.log.3.gz")
    assert alice.vm_log("web").startswith(old) and ": done" in alice.vm_log("web")
    notes = (alice.home / "wirt/logs/wirt.log").read_text()
    assert ("~/wirt/logs/vm/web.log is over 300 bytes but cannot be rotated: "
            "~/wirt/logs/vm/web.log.1.gz is a symbolic link") in notes
    assert "remove it" in notes

    # the user removes the links at generation names; the temp-name trap stays
    alice.run(f"rm {LOGS}/web.log.1.gz {LOGS}/web.log.3.gz")
    before = alice.vm_log("web")
    command(alice, 1)
    host.run()
    for name in ("precious1", "precious2", "precious3"):
        assert (alice.home / name).read_text() == f"{name} must not change\n"
    assert os.path.islink(logs / ".web.log.1.gz.new")  # the user's, left alone
    assert gzip.decompress((logs / "web.log.1.gz").read_bytes()).decode() == before
    assert not os.path.islink(logs / "web.log.1.gz")


def test_hard_link_and_folder_at_generation_names(host: Host) -> None:
    alice = setup(host, keep=2)
    alice.write("precious", "keep me\n")
    alice.write(f"{LOGS}/web.log", "z" * 400 + "\n")
    # a hard link to the user's own file at generation 1: moving it up never writes into it
    alice.run(f"ln ~/precious {LOGS}/web.log.1.gz")
    command(alice, 0)
    host.run()
    assert (alice.home / "precious").read_text() == "keep me\n"
    logs = alice.home / LOGS
    assert os.path.samefile(logs / "web.log.2.gz", alice.home / "precious")
    assert gzip.decompress((logs / "web.log.1.gz").read_bytes()) == b"z" * 400 + b"\n"

    # a folder at a generation name stops the rotation, with the reason
    alice.run(f"rm {LOGS}/web.log.2.gz && mkdir {LOGS}/web.log.2.gz")
    alice.write(f"{LOGS}/web.log", "w" * 400 + "\n")
    command(alice, 1)
    host.run()
    assert (alice.home / "precious").read_text() == "keep me\n"
    assert alice.vm_log("web").startswith("w" * 400)
    assert "web.log.2.gz is a folder; remove it" in (
        alice.home / "wirt/logs/wirt.log").read_text()


def test_log_that_is_a_link_is_not_followed(host: Host) -> None:
    alice = setup(host)
    alice.write("precious", "p" * 500)
    alice.run(f"mkdir -p {LOGS} && ln -s ~/precious {LOGS}/web.log")
    command(alice, 0)
    host.run()
    assert (alice.home / "precious").read_text() == "p" * 500
    assert os.listdir(alice.home / LOGS) == ["web.log"]  # nothing rotated, nothing added
    notes = (alice.home / "wirt/logs/wirt.log").read_text()
    assert "~/wirt/logs/vm/web.log: cannot write the log of VM 'web': it is a symbolic link" \
        in notes


def test_hard_linked_log_is_not_rotated(host: Host) -> None:
    alice = setup(host)
    alice.write(f"{LOGS}/web.log", "h" * 400 + "\n")
    alice.run(f"ln {LOGS}/web.log ~/linked")
    command(alice, 0)
    host.run()
    assert sorted(os.listdir(alice.home / LOGS)) == ["web.log"]
    assert "~/wirt/logs/vm/web.log is over 300 bytes but cannot be rotated: " \
        "~/wirt/logs/vm/web.log has 2 hard links" in (
            alice.home / "wirt/logs/wirt.log").read_text()
