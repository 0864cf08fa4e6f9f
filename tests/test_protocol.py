"""The one protocol across the boundary (wirt_wrapper.rules.protocol): bounds, shapes, order.

Root treats a user side as possibly subverted (SECURITY.md row 19): whatever
bytes arrive, decoding and checking raise ProtocolError and nothing else.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wirt_wrapper.rules import protocol
from wirt_wrapper.rules.errors import ProtocolError
from wirt_wrapper.rules.protocol import Turn, check_request, decode


class TestDecode:
    def test_four_kilobytes_of_brackets_is_refused_before_parsing(self) -> None:
        """Before: json.loads raised RecursionError, which ended the whole pass."""
        with pytest.raises(ProtocolError, match="deeper than"):
            decode(b"[" * 4096)
        with pytest.raises(ProtocolError, match="deeper than"):
            decode(b'{"a":' * 200_000 + b"1" + b"}" * 200_000)

    def test_brackets_inside_strings_do_not_count(self) -> None:
        assert decode(b'{"op":"[[[[[[[[[[[[[[[[[[\\"[[[["}') == {"op": '[[[[[[[[[[[[[[[[[["[[[['}

    def test_depth_at_the_limit_is_fine(self) -> None:
        deep = b'{"a":' + b"[" * (protocol.MAX_DEPTH - 1) + b"]" * (protocol.MAX_DEPTH - 1) + b"}"
        assert decode(deep) == {"a": json.loads(b"[" * 7 + b"]" * 7)}

    @pytest.mark.parametrize("data", [b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-Infinity}'])
    def test_no_nan(self, data: bytes) -> None:
        with pytest.raises(ProtocolError, match="is not a number JSON allows"):
            decode(data)

    def test_duplicate_keys(self) -> None:
        with pytest.raises(ProtocolError, match="twice"):
            decode(b'{"op":"bye","op":"run"}')

    @pytest.mark.parametrize("data", [b"[]", b'"x"', b"1", b"null", b"", b"\xff", b"{"])
    def test_only_objects(self, data: bytes) -> None:
        with pytest.raises(ProtocolError):
            decode(data)

    def test_size(self) -> None:
        with pytest.raises(ProtocolError, match="too large"):
            decode(b" " * (protocol.MAX_MESSAGE + 1))

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=300))
    def test_any_bytes_decode_or_raise_protocol_error(self, data: bytes) -> None:
        try:
            assert isinstance(decode(data), dict)
        except ProtocolError:
            pass


GOOD: dict[str, dict[str, Any]] = {
    "recovered": {"op": "recovered", "items": [{"id": "a-1", "claimed": True, "logged": False}]},
    "inventory": {"op": "inventory", "layout": "wirt", "vms": ["web"]},
    "intend": {"op": "intend", "layout": "wirt", "vm": "web", "file": "start", "ino": 5,
               "action": "start", "tokens": [], "hist": "x-web-start"},
    "unclaimed": {"op": "unclaimed", "id": "a-1"},
    "run": {"op": "run", "id": "a-1", "logged": ["a-0"]},
    "notices": {"op": "notices", "items": [{"layout": "wirt", "key": "k", "message": "m"}]},
    "settings": {"op": "settings", "layout": "wirt", "vm": "web", "digest": "d" * 32,
                 "content": '{"vcpus": 2}'},
    "bye": {"op": "bye", "statuses": {"wirt": {"web": ["d" * 32, [1, 2, 3, 4, 5], None]},
                                      "legacy": {"db": [None, None, [1, 2, 3, 4, 5]]}},
            "isos": "e" * 32},
}


class TestShapes:
    def test_every_request_has_a_shape_and_a_good_example(self) -> None:
        assert set(GOOD) == set(protocol.REQUESTS)
        for op, message in GOOD.items():
            assert check_request(message) == op

    @pytest.mark.parametrize(("op", "change"), [
        ("intend", {"ino": "5"}), ("intend", {"ino": True}), ("intend", {"ino": -1}),
        ("intend", {"vm": ["web"]}), ("intend", {"dry": True}), ("intend", {"tokens": "x"}),
        ("intend", {"file": "x" * 256}), ("inventory", {"vms": {"web": 1}}),
        ("run", {"id": 7}), ("run", {"logged": "a-1"}), ("recovered", {"items": [{}]}),
        ("recovered", {"items": [{"id": "a", "claimed": 1, "logged": False}]}),
        ("notices", {"items": [{"layout": "wirt", "key": "k"}]}),
        ("notices", {"items": [{"layout": "wirt", "key": "k", "message": "m" * 5000}]}),
        ("bye", {"statuses": {"wirt": {"web": ["d", [1], 3]}}}),
        ("bye", {"statuses": {"wirt": {"web": ["d", [1]]}}}),
        ("bye", {"statuses": {"wirt": {"web": ["d" * 65, [1], None]}}}),
        ("bye", {"statuses": []}),
        ("bye", {"statuses": {"wirt": {"web": ["d", list(range(9)), None]}}}),
        ("settings", {"content": 5}), ("settings", {"digest": None}),
        ("settings", {"content": "x" * ((1 << 20) + 1)}),
    ])
    def test_a_wrong_shape_is_refused_with_where(self, op: str, change: dict[str, Any]) -> None:
        with pytest.raises(ProtocolError, match=op):
            check_request({**GOOD[op], **change})

    def test_missing_field(self) -> None:
        with pytest.raises(ProtocolError, match="vm is missing"):
            check_request({k: v for k, v in GOOD["intend"].items() if k != "vm"})

    @pytest.mark.parametrize("op", [None, 3, "spawn", "exec", "__class__", "Bye"])
    def test_unknown_op(self, op: Any) -> None:
        with pytest.raises(ProtocolError, match="unknown request"):
            check_request({"op": op})

    @settings(max_examples=500, deadline=None)
    @given(st.dictionaries(st.sampled_from(["op", "id", "items", "layout", "vms", "statuses",
                                            "vm", "file", "ino", "logged"]),
                           st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                                        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
                                        max_leaves=10)))
    def test_any_object_is_checked_or_refused(self, message: dict[str, Any]) -> None:
        message.setdefault("op", "intend")
        try:
            check_request(message)
        except ProtocolError:
            pass


class TestOrder:
    def turn(self, *, recovering: bool = False, commands: int = 3) -> Turn:
        return Turn(("wirt", "legacy"), recovering, commands)

    def test_a_whole_turn(self) -> None:
        turn = self.turn(recovering=True)
        for op, layout in [("recovered", None), ("inventory", "wirt"), ("settings", "wirt"),
                           ("intend", "wirt"), ("run", None), ("intend", "wirt"),
                           ("unclaimed", None),
                           ("inventory", "legacy"), ("intend", "legacy"), ("run", None),
                           ("notices", None), ("bye", None)]:
            turn.allow(op, layout)

    @pytest.mark.parametrize(("steps", "match"), [
        ([("notices", None), ("notices", None)], "after 'notices'"),
        ([("bye", None), ("bye", None)], "after 'notices'|twice"),
        ([("bye", None), ("inventory", "wirt")], "after"),
        ([("notices", None), ("intend", "wirt")], "after 'notices'"),
        ([("intend", "wirt")], "before its inventory"),
        ([("inventory", "wirt"), ("intend", "legacy")], "before its inventory"),
        ([("inventory", "wirt"), ("inventory", "wirt")], "not served, or given"),
        ([("inventory", "legacy"), ("inventory", "wirt")], "out of order"),
        ([("inventory", "other")], "not served"),
        ([("recovered", None)], "only as the first"),
        ([("inventory", "wirt"), ("intend", "wirt"), ("intend", "wirt"), ("intend", "wirt"),
          ("intend", "wirt")], "more than 3 commands"),
    ])
    def test_out_of_order_is_refused(self, steps: list[tuple[str, str | None]],
                                     match: str) -> None:
        turn = self.turn()
        with pytest.raises(ProtocolError, match=match):
            for op, layout in steps:
                turn.allow(op, layout)

    def test_recovered_first_when_asked(self) -> None:
        with pytest.raises(ProtocolError, match="before 'recovered'"):
            self.turn(recovering=True).allow("inventory", "wirt")
        turn = self.turn(recovering=True)
        turn.allow("recovered")
        with pytest.raises(ProtocolError, match="only as the first"):
            turn.allow("recovered")

    def test_settings_once_per_vm_after_the_inventory(self) -> None:
        turn = self.turn()
        with pytest.raises(ProtocolError, match="before its inventory"):
            turn.allow("settings", "wirt", "web")
        turn.allow("inventory", "wirt")
        turn.allow("settings", "wirt", "web")
        turn.allow("settings", "wirt", "db")
        with pytest.raises(ProtocolError, match="'settings' twice for VM 'web'"):
            turn.allow("settings", "wirt", "web")

    def test_notices_then_bye_is_fine_and_bye_alone_too(self) -> None:
        turn = self.turn()
        turn.allow("notices")
        turn.allow("bye")
        self.turn().allow("bye")


# -- console.json (SPEC 10): what root hands over, and what the CLI reads back -------------
CONSOLE = {"type": "vnc", "host": "127.0.0.1", "port": 5901, "password": "Ab3dEf7h",
           "valid_until": "2026-12-01T18:00:00Z"}


@pytest.mark.parametrize("change", [
    {"password": "Ab3d\nx=1"},  # a second line in the viewer's file
    {"host": "127.0.0.1\nproxy=http://evil"},
    {"host": "a host"}, {"host": ""}, {"valid_until": "\x1b[2J"},
    {"type": "rdp"}, {"port": 0}, {"port": 70000}, {"port": "5901"}, {"extra": "x"},
])
def test_a_console_that_is_not_one_is_refused(change: dict[str, Any]) -> None:
    bad = {**CONSOLE, **change}
    with pytest.raises(ProtocolError):
        protocol.check_console(bad)
    with pytest.raises(ProtocolError):  # the user side refuses it before writing the file
        protocol.check_output({"file": "console.json", "console": bad})


def test_console_json_is_read_strictly_by_the_cli() -> None:
    from wirt_wrapper.cli.main import read_console
    from wirt_wrapper.rules.errors import CliError

    assert protocol.check_console(dict(CONSOLE)) == CONSOLE
    where = "~/wirt/info/vm/web/console.json"
    assert read_console(json.dumps(CONSOLE).encode(), where) == CONSOLE
    twice = json.dumps(CONSOLE)[:-1] + ', "password": "Zz9yXw8v"}'
    for raw in (twice.encode(), b"[]", b"{", json.dumps({**CONSOLE, "port": -1}).encode(),
                json.dumps({**CONSOLE, "password": "a\nb"}).encode()):
        with pytest.raises(CliError) as caught:
            read_console(raw, where)
        assert str(caught.value).startswith(f"{where}: not what a pass writes (")
