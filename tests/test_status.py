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

from wirt_wrapper.rules.status import last_command, render

INFO: dict[str, Any] = {
    "domain": "alice-web", "state": "running", "reason": "booted", "autostart": True,
    "persistent": True, "memory_kib": 65536, "vcpus": 2,
    "graphics": {"type": "vnc", "listen": "127.0.0.1", "port": "5901"},
}
# What XML 1.0 can carry (and so what survives a round trip unchanged).
XML_CHAR = re.compile("[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*")
KEYS = ("action", "params", "outcome", "message", "time")


def parse(document: bytes) -> etree._Element:
    return etree.fromstring(document)


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


text = st.text(max_size=80)


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
