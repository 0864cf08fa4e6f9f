"""root/reach.py: where a domain's serial log is, the console lock, the password (SPEC 10)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lxml import etree

from wirt_wrapper.root import reach
from wirt_wrapper.rules.config import ConfigError, parse_config


def devices(body: str) -> etree._Element:
    return etree.fromstring(f"<domain><devices>{body}</devices></domain>".encode())


def test_serial_path_from_a_file_source_or_a_log() -> None:
    assert reach.serial_path(devices(
        "<serial type='file'><source path='/var/log/a.log'/></serial>")) == "/var/log/a.log"
    assert reach.serial_path(devices(
        "<serial type='pty'><log file='/var/log/b.log' append='on'/></serial>")) == \
        "/var/log/b.log"
    assert reach.serial_path(devices(
        "<serial type='pty'/><console type='pty'><log file='/var/log/c.log'/></console>")) \
        == "/var/log/c.log"
    assert reach.serial_path(devices("<serial type='pty'/>")) is None
    assert reach.serial_path(devices("<serial type='tcp'><source path='/x'/></serial>")) is None


def test_lock_sets_an_empty_password_only_where_there_is_none() -> None:
    xml = ("<domain><devices><graphics type='vnc' port='-1' autoport='yes'/>"
           "<graphics type='spice' passwd='kept'/><graphics type='sdl'/></devices></domain>")
    locked = etree.fromstring(str(reach.lock_definition(xml)).encode())
    found = [(g.get("type"), g.get("passwd")) for g in locked.findall("devices/graphics")]
    assert found == [("vnc", ""), ("spice", "kept"), ("sdl", None)]
    assert reach.lock_definition(etree.tostring(locked, encoding="unicode")) is None
    assert reach.lock_definition("<domain><devices/></domain>") is None


def test_password_and_device_update() -> None:
    passwords = {reach.new_password() for _ in range(50)}
    assert len(passwords) == 50 and all(len(p) == 8 and p.isalnum() for p in passwords)
    until, shown = reach.valid_until(15, now=0)
    assert (until, shown) == ("1970-01-01T00:15:00", "1970-01-01T00:15:00Z")
    node = devices("<graphics type='vnc' port='5901' autoport='yes' listen='127.0.0.1'>"
                   "<listen type='address' address='127.0.0.1'/></graphics>").find(
                       "devices/graphics")
    update = etree.fromstring(reach.graphics_update(node, "aB3dE6gH", until).encode())
    assert update.get("passwd") == "aB3dE6gH" and update.get("passwdValidTo") == until
    assert update.get("port") == "5901" and update.find("listen") is not None
    assert node.get("passwd") is None  # the live device read is left as it was


def test_read_tail_reads_only_from_root_folders(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    ok = tmp_path / "ok"
    ok.mkdir(mode=0o755)
    (ok / "log").write_bytes(b"x" * 70_000 + b"end\n")
    assert reach.read_tail(str(ok / "log")) == (b"x" * 70_000 + b"end\n")[-65536:]
    with pytest.raises(reach.Refused, match="does not exist yet"):
        reach.read_tail(str(ok / "missing"))
    with pytest.raises(reach.Refused, match="not a plain absolute path"):
        reach.read_tail(str(ok / ".." / "ok" / "log"))
    with pytest.raises(reach.Refused, match="not a plain absolute path"):
        reach.read_tail("log")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # sticky does not help the folder that holds the log
    (shared / "log").write_text("x")
    with pytest.raises(reach.Refused, match="writable by group or others"):
        reach.read_tail(str(shared / "log"))
    os.symlink("/etc/shadow", ok / "link")
    with pytest.raises(reach.Refused, match="symbolic link"):
        reach.read_tail(str(ok / "link"))
    (ok / "dir").mkdir()
    with pytest.raises(reach.Refused, match="not a regular file"):
        reach.read_tail(str(ok / "dir"))


def test_console_lock_config() -> None:
    assert parse_config({}, "x").console.lock is True
    assert parse_config({"console": {"lock": False}}, "x").console.lock is False
    with pytest.raises(ConfigError, match="console.lok: unknown key"):
        parse_config({"console": {"lok": True}}, "x")
    with pytest.raises(ConfigError, match="console.lock"):
        parse_config({"console": {"lock": "yes"}}, "x")
