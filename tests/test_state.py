"""Root's own files (wirt_wrapper.root.state, SECURITY.md row 14), in-process, as root.

The folders of the lock, the state and the audit log are made by wirt (0700)
and checked up to ``/``; files in them are written under fresh ``O_EXCL``
names and renamed into place, and an existing name is opened only if it is a
root-owned regular file, mode 0600, with one link.  pytest's ``tmp_path`` is
below ``/tmp`` (root's, mode 1777): a sticky folder *above* is fine, a
writable holding folder (sticky or not) is not.  "Another owner" is uid
65534 (nobody); no user needs to exist.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from wirt_wrapper.root.state import (
    acquire_lock,
    open_root_file,
    prepare_state,
    replace_root_file,
    secure_folder,
)
from wirt_wrapper.rules.config import Config
from wirt_wrapper.rules.errors import EXIT_CONFIG, EXIT_LOCK, ConfigError, LockError, WirtError

NOBODY = 65534


def mode_owner(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    assert stat.S_ISDIR(st.st_mode), path
    return stat.S_IMODE(st.st_mode), st.st_uid


def refused(path: Path, key: str = "state_dir") -> str:
    with pytest.raises(ConfigError) as info:
        secure_folder(str(path), key)
    assert info.value.exit_code == EXIT_CONFIG
    message = str(info.value)
    assert message.startswith(f"{key}: {path}: "), message
    return message


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder like /var/lib/wirt: root's, 0700."""
    made = tmp_path / "state"
    made.mkdir(mode=0o700)
    return made


@pytest.fixture
def alarm() -> Iterator[None]:
    """A FIFO opened without O_NONBLOCK would hang the test: fail it instead."""
    def timeout(signum: int, frame: object) -> None:
        raise AssertionError("blocked opening a FIFO")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(5)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


class TestSecureFolder:
    def test_creates_every_missing_part_0700(self, tmp_path: Path) -> None:
        target = tmp_path / "a" / "b" / "c"
        assert secure_folder(str(target), "state_dir") == str(target)
        for item in (tmp_path / "a", tmp_path / "a" / "b", target):
            assert mode_owner(item) == (0o700, 0)

    def test_an_existing_good_folder_is_kept(self, folder: Path) -> None:
        before = os.lstat(folder)
        assert secure_folder(str(folder), "lock_file") == str(folder)
        after = os.lstat(folder)
        assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)

    def test_sticky_folders_above_are_accepted(self, tmp_path: Path) -> None:
        # /tmp above tmp_path is root's and sticky; so is a middle folder here
        chain = [tmp_path, *tmp_path.parents]
        assert any(os.lstat(p).st_mode & stat.S_ISVTX for p in chain), chain
        middle = tmp_path / "shared"
        middle.mkdir()
        middle.chmod(0o1777)
        (middle / "wirt").mkdir(mode=0o700)  # root's, made before anyone else could
        secure_folder(str(middle / "wirt" / "state"), "state_dir")
        assert mode_owner(middle / "wirt") == (0o700, 0)
        assert mode_owner(middle / "wirt" / "state") == (0o700, 0)

    @pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777, 0o1770], ids=oct)
    def test_a_writable_holding_folder_is_refused(self, tmp_path: Path, mode: int) -> None:
        holding = tmp_path / "open"
        holding.mkdir()
        holding.chmod(mode)
        assert "writable by group or others" in refused(holding)

    @pytest.mark.parametrize("mode", [0o777, 0o1777], ids=oct)
    def test_nothing_is_made_in_a_writable_folder(self, tmp_path: Path, mode: int) -> None:
        """Anyone could have made the name first: refused before mkdir, whether the
        folder is sticky or not (like lock_file in /run/lock, state_dir in /tmp)."""
        holding = tmp_path / "open"
        holding.mkdir()
        holding.chmod(mode)
        assert "writable by group or others" in refused(holding / "wirt" / "state")
        assert os.listdir(holding) == []

    def test_a_writable_folder_above_that_is_not_sticky_is_refused(self, tmp_path: Path
                                                                   ) -> None:
        above = tmp_path / "above"
        (above / "state").mkdir(parents=True, mode=0o700)
        above.chmod(0o777)
        assert f"{above} is writable by group or others" in refused(above / "state")

    def test_a_folder_owned_by_someone_else_is_refused(self, tmp_path: Path) -> None:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o755)
        os.chown(theirs, NOBODY, NOBODY)
        message = refused(theirs / "state")
        assert f"{theirs} is owned by uid {NOBODY}, not root" in message
        assert os.listdir(theirs) == []
        (theirs / "state").mkdir(mode=0o700)  # root's own folder below someone else's
        assert f"{theirs} is owned by uid {NOBODY}" in refused(theirs / "state")

    def test_the_holding_folder_owned_by_someone_else_is_refused(self, tmp_path: Path
                                                                 ) -> None:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, NOBODY, 0)
        assert f"{theirs} is owned by uid {NOBODY}" in refused(theirs, "audit_log")

    def test_a_file_is_not_a_folder(self, tmp_path: Path) -> None:
        (tmp_path / "file").write_text("")
        assert "is not a folder" in refused(tmp_path / "file")
        assert "is not a folder" in refused(tmp_path / "file" / "below")

    def test_a_link_is_checked_where_it_leads(self, tmp_path: Path) -> None:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o755)
        os.chown(theirs, NOBODY, NOBODY)
        (tmp_path / "link").symlink_to(theirs)
        assert f"{theirs} is owned by uid {NOBODY}" in refused(tmp_path / "link")
        good = tmp_path / "good"
        good.mkdir(mode=0o700)
        (tmp_path / "good-link").symlink_to(good)
        assert secure_folder(str(tmp_path / "good-link"), "state_dir") == str(good)


class TestPrepareState:
    def config(self, base: Path) -> Config:
        return Config(lock_file=str(base / "run" / "wirt.lock"), state_dir=str(base / "lib"),
                      audit_log=str(base / "log" / "audit.log"))

    def test_makes_the_three_folders(self, tmp_path: Path) -> None:
        prepare_state(self.config(tmp_path))
        assert sorted(os.listdir(tmp_path)) == ["lib", "log", "run"]
        for name in ("lib", "log", "run"):
            assert mode_owner(tmp_path / name) == (0o700, 0)
        assert os.listdir(tmp_path / "run") == []  # the lock itself is acquire_lock's

    @pytest.mark.parametrize("key", ["lock_file", "state_dir", "audit_log"])
    def test_refuses_naming_the_key(self, tmp_path: Path, key: str) -> None:
        sticky = tmp_path / "tmp"  # like /tmp and /run/lock
        sticky.mkdir()
        sticky.chmod(0o1777)
        base = self.config(tmp_path)
        wanted = {"lock_file": sticky / "wirt.lock", "state_dir": sticky / "wirt",
                  "audit_log": sticky / "audit.log"}[key]
        with pytest.raises(ConfigError) as info:
            prepare_state(dataclasses.replace(base, **{key: str(wanted)}))
        assert str(info.value).startswith(f"{key}: "), info.value
        assert os.listdir(sticky) == []


class TestReplaceRootFile:
    @pytest.mark.parametrize("planted", ["file", "hard link", "symlink"])
    def test_a_name_planted_at_path_new_is_not_written(self, folder: Path, planted: str
                                                       ) -> None:
        path = folder / "idle.json"
        path.write_bytes(b"old")
        victim = folder / "victim"
        victim.write_bytes(b"victim's content")
        new = folder / "idle.json.new"
        if planted == "file":
            new.write_bytes(b"planted")
        elif planted == "hard link":
            os.link(victim, new)
        else:
            new.symlink_to(victim)
        before = {p: (os.lstat(p), p.read_bytes()) for p in (new, victim)}

        replace_root_file(str(path), b"new content")

        assert path.read_bytes() == b"new content"
        for item, (st, content) in before.items():
            now = os.lstat(item)
            assert (now.st_ino, now.st_size, now.st_mtime_ns, item.read_bytes()) == \
                (st.st_ino, st.st_size, st.st_mtime_ns, content), item
        assert sorted(os.listdir(folder)) == ["idle.json", "idle.json.new", "victim"]

    def test_the_result_is_root_only_and_no_temp_is_left(self, folder: Path) -> None:
        path = folder / "reported.json"
        replace_root_file(str(path), b"{}")
        replace_root_file(str(path), b'{"a": 1}')
        st = os.lstat(path)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_nlink) == (0o600, 0, 1)
        assert path.read_bytes() == b'{"a": 1}'
        assert os.listdir(folder) == ["reported.json"]

    def test_a_hard_link_at_path_itself_is_replaced_not_written(self, folder: Path
                                                                ) -> None:
        victim = folder / "victim"
        victim.write_bytes(b"victim's content")
        path = folder / "idle.json"
        os.link(victim, path)
        replace_root_file(str(path), b"new")
        assert (path.read_bytes(), victim.read_bytes()) == (b"new", b"victim's content")
        assert os.lstat(victim).st_nlink == 1

    def test_no_temp_is_left_when_the_rename_fails(self, folder: Path) -> None:
        path = folder / "busy"
        (path / "inside").mkdir(parents=True)  # a non-empty folder: rename fails
        with pytest.raises(OSError):
            replace_root_file(str(path), b"data")
        assert os.listdir(folder) == ["busy"]


class TestOpenRootFile:
    def test_creates_a_root_only_file(self, folder: Path) -> None:
        path = folder / "audit.log"
        fd = open_root_file(str(path), os.O_WRONLY | os.O_APPEND, "audit log")
        try:
            st = os.fstat(fd)
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_nlink) == (0o600, 0, 1)
            assert os.get_blocking(fd)
        finally:
            os.close(fd)

    def open_refused(self, path: Path, flags: int = os.O_RDWR) -> str:
        with pytest.raises(WirtError) as info:
            os.close(open_root_file(str(path), flags, "state file"))
        return str(info.value)

    def test_a_file_with_two_links_is_refused(self, folder: Path) -> None:
        path = folder / "idle.json"
        path.write_bytes(b"{}")
        path.chmod(0o600)
        os.link(path, folder / "second-name")
        assert "one link" in self.open_refused(path)
        assert "one link" in self.open_refused(path, os.O_RDONLY)

    def test_a_file_of_another_owner_is_refused(self, folder: Path) -> None:
        path = folder / "idle.json"
        path.write_bytes(b"{}")
        path.chmod(0o600)
        os.chown(path, NOBODY, NOBODY)
        assert "owned by root" in self.open_refused(path)

    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660], ids=oct)
    def test_a_file_readable_by_others_is_refused(self, folder: Path, mode: int) -> None:
        path = folder / "idle.json"
        path.write_bytes(b"{}")
        path.chmod(mode)
        assert "mode 0600" in self.open_refused(path)

    def test_a_symlink_is_not_followed(self, folder: Path) -> None:
        target = folder / "target"
        target.write_bytes(b"")
        target.chmod(0o600)
        (folder / "link").symlink_to(target)
        with pytest.raises(OSError):
            os.close(open_root_file(str(folder / "link"), os.O_RDWR, "state file"))

    def test_a_fifo_is_refused_without_blocking(self, folder: Path, alarm: None) -> None:
        os.mkfifo(folder / "journal", 0o600)
        assert "regular file" in self.open_refused(folder / "journal", os.O_RDONLY)


class TestAcquireLock:
    def test_locks_and_a_second_pass_gets_none(self, folder: Path) -> None:
        path = str(folder / "wirt.lock")
        fd = acquire_lock(path)
        assert fd is not None
        try:
            assert acquire_lock(path) is None
        finally:
            os.close(fd)
        fd = acquire_lock(path)
        assert fd is not None
        os.close(fd)

    def lock_refused(self, path: Path) -> str:
        with pytest.raises(LockError) as info:
            fd = acquire_lock(str(path))
            if fd is not None:
                os.close(fd)
        assert info.value.exit_code == EXIT_LOCK
        return str(info.value)

    def test_a_planted_fifo_is_refused(self, folder: Path, alarm: None) -> None:
        os.mkfifo(folder / "wirt.lock", 0o600)
        assert "regular file" in self.lock_refused(folder / "wirt.lock")

    def test_a_squatted_lock_is_refused(self, folder: Path) -> None:
        lock = folder / "wirt.lock"
        lock.write_bytes(b"")
        lock.chmod(0o600)
        os.chown(lock, NOBODY, NOBODY)
        assert "owned by root" in self.lock_refused(lock)

    def test_a_planted_symlink_is_refused(self, folder: Path) -> None:
        target = folder / "target"
        target.write_bytes(b"")
        target.chmod(0o600)
        (folder / "wirt.lock").symlink_to(target)
        assert str(folder / "wirt.lock") in self.lock_refused(folder / "wirt.lock")
