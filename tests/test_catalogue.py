"""The ISO catalogue (wirt_wrapper.root.catalogue; SPEC 9, SECURITY.md rows 15 and 17).

Runs as root on real folders under pytest's tmp folder (removed by pytest):
"another owner" is uid 65534 (nobody), and libvirt-qemu's uid where it exists
(HOST-NOTES: libvirt hands an attached ISO to libvirt-qemu; it stays listed).
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

import wirt_wrapper.rules.config as config_module
from wirt_wrapper.root import catalogue
from wirt_wrapper.root.catalogue import (
    Catalogue,
    CatalogueError,
    NotInCatalogue,
    iso_path,
    listing_digest,
    listing_text,
    read_catalogue,
)
from wirt_wrapper.rules.errors import EXIT_CONFIG, ConfigError, WirtError
from wirt_wrapper.rules.settings import ISO_NAME

NOBODY = 65534


def qemu_uid() -> int:
    try:
        return pwd.getpwnam("libvirt-qemu").pw_uid
    except KeyError:
        return 64055


@pytest.fixture
def isos(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)
    folder = tmp_path / "isos"
    folder.mkdir()
    folder.chmod(0o755)
    return folder


def iso(folder: Path, name: str, mode: int = 0o644) -> Path:
    path = folder / name
    path.write_bytes(b"CD001")
    path.chmod(mode)
    return path


def refused(iso_dir: Path | str, match: str) -> CatalogueError:
    with pytest.raises(CatalogueError, match=match) as info:
        read_catalogue(str(iso_dir))
    assert str(info.value).startswith("settings.iso_dir ")
    assert isinstance(info.value, ConfigError) and info.value.exit_code == EXIT_CONFIG
    return info.value


class TestListing:
    def test_regular_files_sorted(self, isos: Path) -> None:
        for name in ("debian-12.iso", "Alpine_3.19+x.iso", "a.iso", "9.iso"):
            iso(isos, name)
        assert read_catalogue(str(isos)).names == ("9.iso", "Alpine_3.19+x.iso", "a.iso",
                                                   "debian-12.iso")

    def test_empty(self, isos: Path) -> None:
        assert read_catalogue(str(isos)).names == ()

    def test_read_catalogue_keeps_the_real_folder(self, isos: Path, tmp_path: Path) -> None:
        iso(isos, "a.iso")
        link = tmp_path / "link"
        link.symlink_to(isos)  # the admin's iso_dir may be a link; the real folder is used
        found = read_catalogue(str(link))
        assert found == Catalogue(str(isos), ("a.iso",))
        assert found.path("a.iso") == str(isos / "a.iso")

    def test_files_of_libvirt_qemu_stay_listed(self, isos: Path) -> None:
        """HOST-NOTES 'ISO files': attaching chowns the file; the folder is what must be root's."""
        for name, uid in (("attached.iso", qemu_uid()), ("other.iso", NOBODY)):
            os.chown(iso(isos, name, 0o644), uid, 0)
        os.chown(iso(isos, "group.iso", 0o664), qemu_uid(), 0)
        assert read_catalogue(str(isos)).names == ("attached.iso", "group.iso", "other.iso")

    @pytest.mark.parametrize("name", [
        "x.ISO", "x.iso.bak", ".x.iso", "-x.iso", "_x.iso", "x iso.iso", "x.img", ".iso",
        "x\nb.iso", "é.iso", "a" * 128 + ".iso", "x.iso~", "README",
    ])
    def test_bad_names_are_left_out(self, isos: Path, name: str) -> None:
        iso(isos, name)
        iso(isos, "good.iso")
        assert read_catalogue(str(isos)).names == ("good.iso",)

    def test_longest_name_is_listed(self, isos: Path) -> None:
        name = "a" * 127 + ".iso"
        assert ISO_NAME.fullmatch(name)
        iso(isos, name)
        assert read_catalogue(str(isos)).names == (name,)

    def test_symlinks_are_left_out(self, isos: Path, tmp_path: Path) -> None:
        real = iso(isos, "real.iso")
        (isos / "link.iso").symlink_to(real)
        (isos / "shadow.iso").symlink_to("/etc/shadow")  # SECURITY row 17
        (isos / "dangling.iso").symlink_to(tmp_path / "nothing")
        (isos / "up.iso").symlink_to("../isos/real.iso")
        assert read_catalogue(str(isos)).names == ("real.iso",)

    def test_folders_fifos_devices_sockets_are_left_out(self, isos: Path) -> None:
        import socket

        (isos / "folder.iso").mkdir()
        iso(isos / "folder.iso", "inner.iso")  # and nothing below the folder itself
        os.mkfifo(isos / "fifo.iso")
        os.mknod(isos / "null.iso", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(str(isos / "sock.iso"))
            iso(isos, "disc.iso")
            assert read_catalogue(str(isos)).names == ("disc.iso",)
        finally:
            sock.close()

    def test_hard_link_is_a_regular_file(self, isos: Path) -> None:
        # only root can add entries to the folder: a hard link there is the admin's choice
        os.link(iso(isos, "a.iso"), isos / "b.iso")
        assert read_catalogue(str(isos)).names == ("a.iso", "b.iso")

    @pytest.mark.parametrize("mode", [0o666, 0o646, 0o777])
    def test_files_anyone_may_write_are_left_out(self, isos: Path, mode: int) -> None:
        iso(isos, "open.iso", mode)  # any local user could change what other VMs boot
        iso(isos, "shut.iso", 0o600)
        assert read_catalogue(str(isos)).names == ("shut.iso",)

    def test_too_many_entries(self, isos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(catalogue, "MAX_ENTRIES", 5)
        for n in range(5):
            iso(isos, f"{n}.iso")
        assert len(read_catalogue(str(isos)).names) == 5
        (isos / "note.txt").write_text("")  # entries of any kind count
        refused(isos, "holds more than 5 entries")

    def test_lists_through_the_checked_folder(self, isos: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
        """SECURITY row 17: the folder is swapped for a link right after the check."""
        iso(isos, "good.iso")
        evil = tmp_path / "evil"
        evil.mkdir(mode=0o755)
        iso(evil, "evil.iso")
        real_check = config_module.check_root_owned

        def check_then_swap(path: str, what: str) -> str:
            checked = real_check(path, what)
            isos.rename(tmp_path / "moved")
            isos.symlink_to(evil)
            return checked

        monkeypatch.setattr("wirt_wrapper.root.catalogue.check_root_owned", check_then_swap)
        refused(isos, f"{isos} is a link now")


class TestFolder:
    def test_must_be_absolute(self) -> None:
        refused("isos", "must be an absolute path")

    def test_missing(self, tmp_path: Path) -> None:
        refused(tmp_path / "nope", "cannot check")

    def test_a_file(self, isos: Path) -> None:
        refused(iso(isos, "a.iso"), "is not a folder")

    @pytest.mark.parametrize("mode", [0o775, 0o757, 0o777, 0o1777, 0o1775, 0o770])
    def test_writable_by_others(self, isos: Path, mode: int) -> None:
        iso(isos, "a.iso")
        isos.chmod(mode)  # sticky or not: anyone could add a file of their own
        refused(isos, f"{isos} is writable by group or others")

    def test_owned_by_another_user(self, isos: Path) -> None:
        os.chown(isos, NOBODY, 0)
        refused(isos, f"{isos} is owned by uid {NOBODY}, not root")

    def test_owned_by_libvirt_qemu(self, isos: Path) -> None:
        os.chown(isos, qemu_uid(), 0)  # its files may be; the folder may not
        refused(isos, f"owned by uid {qemu_uid()}, not root")

    def test_parent_owned_by_a_user(self, isos: Path) -> None:
        os.chown(isos.parent, NOBODY, 0)
        error = refused(isos, f"{isos.parent} is owned by uid {NOBODY}, not root")
        assert str(error).startswith(f"settings.iso_dir {isos}: ")

    def test_grandparent_writable(self, tmp_path: Path) -> None:
        deep = tmp_path / "a" / "b" / "isos"
        deep.mkdir(parents=True, mode=0o755)
        tmp_path.chmod(0o755)
        (tmp_path / "a").chmod(0o777)
        refused(deep, f"{tmp_path / 'a'} is writable by group or others")

    def test_sticky_root_parent_is_fine(self, tmp_path: Path) -> None:
        tmp_path.chmod(0o1777)  # like /tmp: nobody can rename root's folder in it
        folder = tmp_path / "isos"
        folder.mkdir(mode=0o755)
        iso(folder, "a.iso")
        assert read_catalogue(str(folder)).names == ("a.iso",)

    def test_link_to_a_user_folder(self, isos: Path, tmp_path: Path) -> None:
        home = tmp_path / "home"
        home.mkdir(mode=0o755)
        os.chown(home, NOBODY, 0)
        iso(home, "evil.iso")
        link = isos / "sub"
        link.symlink_to(home)
        refused(link, f"{home} is owned by uid {NOBODY}")


class TestIsoPath:
    LISTING = ("a.iso", "debian-12.iso")

    def test_a_listed_name(self, isos: Path) -> None:
        assert iso_path(str(isos), "a.iso", self.LISTING) == f"{isos}/a.iso"

    @pytest.mark.parametrize("name", [
        "../x.iso", "../../etc/shadow", "/etc/shadow", "x.iso", "a.iso/", "./a.iso",
        "a.iso\x00", "A.iso", "", "sub/a.iso", "a.iso/../a.iso",
    ])
    def test_anything_else_is_refused(self, isos: Path, name: str) -> None:
        with pytest.raises(NotInCatalogue, match="is not in the ISO catalogue") as info:
            iso_path(str(isos), name, self.LISTING)
        assert isinstance(info.value, WirtError)

    def test_traversal_even_if_a_listing_held_it(self, isos: Path) -> None:
        # a listing is read_catalogue's names; a name that is not an ISO name is never joined
        with pytest.raises(NotInCatalogue):
            iso_path(str(isos), "../x.iso", ("../x.iso",))

    def test_real_folder_with_traversal_name(self, tmp_path: Path, isos: Path) -> None:
        iso(tmp_path, "x.iso")  # really exists one folder up
        listing = read_catalogue(str(isos)).names
        with pytest.raises(NotInCatalogue):
            iso_path(str(isos), "../x.iso", listing)

    def test_the_listings_string_is_joined(self, isos: Path) -> None:
        class Sly(str):
            """A name equal to a listed one that would render as something else."""

            def __str__(self) -> str:
                return "../../etc/shadow"

            def __fspath__(self) -> str:
                return "../../etc/shadow"

        path = iso_path(str(isos), Sly("a.iso"), self.LISTING)
        assert path == f"{isos}/a.iso" and type(path) is str


class TestListingText:
    def test_header_then_one_name_a_line(self) -> None:
        text = listing_text(("a.iso", "b.iso"))
        header, *names = text.splitlines()
        assert header.startswith("# ") and "wirt set VM cdrom=NAME" in header
        assert '{"cdrom": "NAME"}' in header
        assert names == ["a.iso", "b.iso"] and text.endswith("b.iso\n")
        assert text.isascii()

    def test_empty(self) -> None:
        assert listing_text(()).count("\n") == 1

    def test_parsed_back(self, isos: Path) -> None:
        for name in ("x.iso", "y.iso"):
            iso(isos, name)
        text = listing_text(read_catalogue(str(isos)).names)
        assert tuple(x for x in text.splitlines() if not x.startswith("#")) == ("x.iso", "y.iso")

    @pytest.mark.parametrize("name", ["a.iso\n# x", "../x.iso", ""])
    def test_no_other_line_reaches_the_file(self, name: str) -> None:
        with pytest.raises(ValueError):
            listing_text(("a.iso", name))

    def test_digest(self) -> None:
        one = listing_digest(("a.iso", "b.iso"))
        assert one == listing_digest(["a.iso", "b.iso"]) and len(one) == 32
        assert one != listing_digest(("a.iso",)) != listing_digest(())
        assert listing_digest(("ab.iso",)) != listing_digest(("a.iso", "b.iso"))
