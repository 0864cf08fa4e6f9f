"""status.xml rendering and reading back (wirt_wrapper.rules.status), fuzzed with hypothesis.

Messages in status.xml carry text the tool does not choose: libvirt's error
messages and the names of the user's own files.  Whatever that text is, the
document must stay well-formed XML, and the last command must read back.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from lxml import etree

from wirt_wrapper.rules.status import (
    last_command,
    last_config,
    read_at,
    render,
    restamp,
    stamp,
    unstamp,
)
from wirt_wrapper.rules.status import parse as read_back

INFO: dict[str, Any] = {
    "domain": "alice-web", "state": "running", "reason": "booted", "autostart": True,
    "persistent": True, "memory_kib": 65536, "vcpus": 2,
    "graphics": {"type": "vnc", "listen": "127.0.0.1", "port": "5901"},
}
# What XML 1.0 can carry (and so what survives a round trip unchanged).
XML_CHAR = re.compile("[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*")
KEYS = ("action", "params", "outcome", "message", "time")
CONFIG_KEYS = ("outcome", "message", "time")
SETTINGS: dict[str, Any] = {"memory_mib": 1024, "vcpus": 2, "cdrom": "debian-12.iso",
                            "boot": ["cdrom", "hd"], "has_cdrom": True, "restart_needed": True}


def parse(document: bytes) -> etree._Element:
    return etree.fromstring(document)


class TestReadAt:
    """SPEC 2c: the time wirt read the state; kept while nothing else changes (issue 15.5)."""

    def test_stamp_round_trip(self) -> None:
        assert stamp(1796126000.7) == "2026-12-01T11:53:20Z"
        assert unstamp("2026-12-01T11:53:20Z") == 1796126000.0
        for bad in ("", "2026-12-01 11:53:20", "2026-12-01T11:53:20+0000", "soon"):
            assert unstamp(bad) is None

    def test_written_and_read_back(self) -> None:
        document = render("web", INFO, None, None, "2026-12-01T11:53:20Z")
        assert b"<read-at>2026-12-01T11:53:20Z</read-at>" in document
        assert read_at(document) == "2026-12-01T11:53:20Z"
        assert read_back(document)["read_at"] == 1796126000.0
        problem = render("web", {"domain": "alice-web", "problem": "no such domain",
                                 "problem_kind": "missing"}, None, None, "2026-12-01T11:53:20Z")
        assert read_back(problem)["read_at"] == 1796126000.0  # a missing domain has an age too

    def test_the_same_state_with_the_old_time_is_the_old_document(self) -> None:
        """What lets the user side keep an unchanged file: render with the old stamp."""
        old = render("web", INFO, None, None, "2026-12-01T11:53:20Z")
        assert render("web", INFO, None, None, read_at(old)) == old
        changed = dict(INFO, state="shut off", reason="destroyed")
        assert render("web", changed, None, None, read_at(old)) != old

    def test_absent(self) -> None:
        assert read_at(render("web", INFO, None)) == "" and read_at(b"garbage") == ""
        assert read_back(render("web", INFO, None))["read_at"] is None


class TestRender:
    def test_fields(self) -> None:
        root = parse(render("web", INFO, {"action": "start", "params": "--paused",
                                          "outcome": "done", "message": "", "time": "t"}))
        assert root.findtext("vm") == "web" and root.findtext("domain") == "alice-web"
        assert root.find("state").get("reason") == "booted"
        assert root.findtext("autostart") == "yes" and root.findtext("vcpus") == "2"
        assert root.find("graphics").attrib == {"type": "vnc", "listen": "127.0.0.1",
                                                "port": "5901"}
        assert root.find("last-command").get("params") == "--paused"

    def test_problem(self) -> None:
        root = parse(render("web", {"domain": "alice-web", "problem": "no such domain",
                                    "problem_kind": "missing"}, None))
        assert root.find("problem").get("kind") == "missing"
        assert root.find("state") is None and root.find("last-command") is None

    def test_host_only_when_root_names_one(self) -> None:
        """SPEC 13: ``<host>`` after ``<domain>`` with [[hosts]]; none with one host."""
        root = parse(render("web", dict(INFO, host="node2"), None))
        assert [child.tag for child in root][:3] == ["vm", "domain", "host"]
        assert root.findtext("host") == "node2"
        assert read_back(render("web", dict(INFO, host="node2"), None))["host"] == "node2"
        assert parse(render("web", INFO, None)).find("host") is None
        assert "host" not in read_back(render("web", INFO, None))

    def test_deterministic(self) -> None:
        last = {"action": "reset", "outcome": "failed", "message": "m", "time": "t"}
        assert render("web", INFO, last) == render("web", dict(INFO), dict(last))

    def test_garbage_reads_as_no_last_command(self) -> None:
        for document in (b"", b"<", b"not xml", b"<status/>", b"\xff\xfe"):
            assert last_command(document) is None

    def test_an_external_entity_reads_as_empty(self) -> None:
        document = (b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/shadow">]>'
                    b"<status><last-command>&e;</last-command></status>")
        assert last_command(document) == {"message": ""}

    def test_entities_are_not_resolved(self) -> None:
        document = (b'<?xml version="1.0"?><!DOCTYPE s [<!ENTITY e SYSTEM '
                    b'"file:///etc/passwd">]><status><last-command action="x">&e;'
                    b"</last-command></status>")
        found = last_command(document)
        assert found is None or "root:" not in found["message"]


class TestSettings:
    """Issue 10.5: the settings as libvirt holds them, and the last config outcome."""

    LAST_CONFIG = {"outcome": "rejected", "time": "2025-01-02T03:04:05",
                   "message": "config: vcpus: 9 is more than the limit of 4 per VM"}

    def test_exact_format(self) -> None:
        document = render("web", dict(INFO, settings=SETTINGS), None, self.LAST_CONFIG)
        text = document.decode()
        assert ('<settings restart-needed="yes">\n    <memory unit="MiB">1024</memory>\n'
                '    <vcpus>2</vcpus>\n    <cdrom>debian-12.iso</cdrom>\n'
                '    <boot>cdrom hd</boot>\n  </settings>\n') in text
        assert ('  <last-config outcome="rejected" time="2025-01-02T03:04:05">config: vcpus: 9 '
                'is more than the limit of 4 per VM</last-config>\n</status>\n') in text
        # the settings come after the graphics, the last config after the last command
        root = parse(render("web", dict(INFO, settings=SETTINGS),
                            {"action": "start", "outcome": "done", "message": "", "time": "t"},
                            self.LAST_CONFIG))
        tags = [child.tag for child in root]
        assert tags[-4:] == ["graphics", "settings", "last-command", "last-config"]
        # the top-level memory (live, KiB) stays what it was
        assert root.find("memory").get("unit") == "KiB" and root.findtext("memory") == "65536"

    def test_round_trip(self) -> None:
        document = render("web", dict(INFO, settings=SETTINGS), None, self.LAST_CONFIG)
        found = read_back(document)
        assert found["settings"] == SETTINGS
        assert found["last_config"] == self.LAST_CONFIG
        assert last_config(document) == self.LAST_CONFIG
        assert found["last"] is None and found["memory_kib"] == 65536

    def test_no_drive_no_disc_no_restart(self) -> None:
        no_drive = dict(SETTINGS, has_cdrom=False, cdrom="", restart_needed=False, boot=["hd"])
        root = parse(render("web", dict(INFO, settings=no_drive), None))
        assert root.find("settings/cdrom") is None
        assert root.find("settings").get("restart-needed") == "no"
        assert read_back(render("web", dict(INFO, settings=no_drive), None))["settings"] == \
            no_drive
        ejected = dict(SETTINGS, cdrom="")
        document = render("web", dict(INFO, settings=ejected), None)
        assert b"<cdrom></cdrom>" in document
        assert read_back(document)["settings"] == ejected

    def test_absent_when_root_said_nothing(self) -> None:
        document = render("web", INFO, None)
        assert b"<settings" not in document and b"<last-config" not in document
        found = read_back(document)
        assert "settings" not in found and found["last_config"] is None
        assert last_config(document) is None

    def test_deterministic(self) -> None:
        info = dict(INFO, settings=SETTINGS)
        assert render("web", info, None, self.LAST_CONFIG) == render(
            "web", {**INFO, "settings": dict(reversed(list(SETTINGS.items())))}, None,
            dict(reversed(list(self.LAST_CONFIG.items()))))

    def test_garbage_reads_as_no_last_config(self) -> None:
        for document in (b"", b"<", b"not xml", b"<status/>", b"\xff\xfe"):
            assert last_config(document) is None


text = st.text(max_size=80)
settings_strategy = st.fixed_dictionaries({
    "memory_mib": st.integers(min_value=0, max_value=1 << 40),
    "vcpus": st.integers(min_value=0, max_value=4096),
    "has_cdrom": st.booleans(),
    "cdrom": st.one_of(st.just(""), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,20}\.iso",
                                                  fullmatch=True), text),
    "boot": st.lists(st.sampled_from(["hd", "cdrom", "network", "fd"]), max_size=4),
    "restart_needed": st.booleans(),
})


class TestFuzz:
    @settings(max_examples=800, deadline=None)
    @given(vm=text, message=text, action=text, params=text, outcome=text, time=text,
           problem=text, graphics=st.dictionaries(st.sampled_from(["type", "listen", "port"]),
                                                  text))
    @example(vm="web", message="libvirt: bad \x00 byte \x1b[2J", action="start", params="",
             outcome="failed", time="t", problem="", graphics={})
    @example(vm="web", message="\ud800", action="", params="", outcome="", time="",
             problem="", graphics={})
    @example(vm="web", message="]]><evil/>&amp;\r\n", action='"', params="'", outcome="<",
             time="&", problem="", graphics={})
    def test_never_breaks_the_xml(self, vm: str, message: str, action: str, params: str,
                                  outcome: str, time: str, problem: str,
                                  graphics: dict[str, str]) -> None:
        info = dict(INFO, graphics=graphics)
        if problem:
            info = {"domain": "d", "problem": problem, "problem_kind": "missing"}
        last = {"action": action, "params": params, "outcome": outcome, "message": message,
                "time": time}
        document = render(vm, info, last)
        root = parse(document)  # well-formed, whatever the text was
        assert [child.tag for child in root][:2] == ["vm", "domain"]
        found = last_command(document)
        assert found is not None
        for key in KEYS:
            if XML_CHAR.fullmatch(last[key]):
                assert found.get(key, "") == last[key], key  # round trip
            else:
                assert XML_CHAR.fullmatch(found.get(key, "")), key  # replaced, not lost
        # re-rendering what was read back is stable (an idle pass rewrites nothing)
        assert render(vm, info, found) == render(vm, info, last_command(render(vm, info, found)))

    @settings(max_examples=500, deadline=None)
    @given(vm=text, settings_=st.one_of(st.none(), settings_strategy),
           last_config_=st.one_of(st.none(), st.fixed_dictionaries(
               {"outcome": text, "message": text, "time": text})),
           message=text)
    @example(vm="web", settings_=dict(SETTINGS, cdrom="]]>\x00<x/>"), message="",
             last_config_={"outcome": "failed", "message": "libvirt: \x1b[2J\ud800 <&>",
                           "time": '"'})
    def test_settings_and_last_config_round_trip(
            self, vm: str, settings_: dict[str, Any] | None,
            last_config_: dict[str, str] | None, message: str) -> None:
        info = dict(INFO) if settings_ is None else dict(INFO, settings=settings_)
        last = {"action": "start", "outcome": "done", "message": message, "time": "t"}
        document = render(vm, info, last, last_config_)
        root = parse(document)  # well-formed, whatever the text was
        found = read_back(document)
        if settings_ is None:
            assert root.find("settings") is None and "settings" not in found
        else:
            got = found["settings"]
            assert {k: got[k] for k in ("memory_mib", "vcpus", "boot", "has_cdrom",
                                        "restart_needed")} == {
                k: settings_[k] for k in ("memory_mib", "vcpus", "boot", "has_cdrom",
                                          "restart_needed")}
            if not settings_["has_cdrom"]:
                assert got["cdrom"] == ""
            elif XML_CHAR.fullmatch(settings_["cdrom"]):
                assert got["cdrom"] == settings_["cdrom"]
            else:
                assert XML_CHAR.fullmatch(got["cdrom"])  # replaced, not lost
        if last_config_ is None:
            assert found["last_config"] is None
        else:
            assert found["last_config"] is not None
            for key in CONFIG_KEYS:
                value = last_config_[key]
                if XML_CHAR.fullmatch(value):
                    assert found["last_config"].get(key, "") == value, key
                else:
                    assert XML_CHAR.fullmatch(found["last_config"].get(key, "")), key
        assert found["last"] is not None and found["last"]["action"] == "start"
        # stable: rendering what was read back gives the same bytes (an idle pass compares)
        again = dict(info)
        if "settings" in found:
            again["settings"] = found["settings"]
        assert render(vm, again, found["last"], found["last_config"]) == document


def test_restamp_is_rendering_again() -> None:
    """The user side swaps the stamp in the bytes it rendered (one render per write)."""
    info = {"domain": "alice-web", "state": "running", "reason": "booted", "autostart": True,
            "persistent": True, "memory_kib": 65536, "vcpus": 1, "graphics": {}}
    last = {"action": "start", "outcome": "done", "time": "t", "params": "",
            "message": "<read-at>2026-01-01T00:00:00Z</read-at>"}
    old, new = "2026-01-01T00:00:00Z", "2026-12-01T15:00:00Z"
    kept = render("web", info, last, None, old)
    assert restamp(kept, old, new) == render("web", info, last, None, new)
    for odd in ("", "yesterday", "2026-1-01T00:00:00Z", "<read-at>"):  # rendered again
        assert restamp(render("web", info, last, None, odd), odd, new) is None
