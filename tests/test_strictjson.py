"""rules/strictjson.py: the reader for bytes nobody vouches for (messages, settings files)."""

from __future__ import annotations

import random
import time

import pytest

from wirt_wrapper.rules.strictjson import StrictJSONError, depth_ok, loads


def _depth_ok_by_hand(data: bytes, limit: int) -> bool:
    """The rule, one byte at a time: brackets outside strings nest at most *limit* deep."""
    depth, in_string, escaped = 0, False, False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            depth += 1
            if depth > limit:
                return False
        elif byte in b"]}":
            depth -= 1
    return True


def test_depth_ok_agrees_with_the_rule_byte_by_byte() -> None:
    """Random bytes rich in brackets, quotes and backslashes (open strings, escaped quotes,
    a backslash at the very end): the fast check says what the byte walk says."""
    rng = random.Random(13)
    alphabet = b'[]{}"\\\\a,:'
    for _ in range(20000):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        for limit in (0, 1, 2, 3, 8):
            assert depth_ok(data, limit) == _depth_ok_by_hand(data, limit), (data, limit)


@pytest.mark.parametrize(("data", "limit", "ok"), [
    (b'{"a": [1, {"b": []}]}', 4, True),
    (b'{"a": [1, {"b": []}]}', 3, False),
    (b'{"a": "[[[[[[[[[[[["}', 1, True),  # brackets in a string do not nest
    (b'{"a": "\\"[[[[[[[[[["}', 1, True),  # nor after an escaped quote
    (b'["x\\\\", [[[[]]]]]', 2, False),  # an escaped backslash ends before the quote
    (b"[" * 4096, 8, False),
])
def test_depth_ok_examples(data: bytes, limit: int, ok: bool) -> None:
    assert depth_ok(data, limit) is ok


def test_depth_ok_takes_linear_time_on_quotes_left_open() -> None:
    """A message of escaped quotes with no closing one (every quote starts a string
    that never ends): a check that tried each quote again would take minutes on 4 MB."""
    data = b'["' + b'\\"' * (1 << 21)
    start = time.process_time()
    assert depth_ok(data, 8)
    assert depth_ok(b"[" * 9 + data, 8) is False
    assert time.process_time() - start < 5


def test_a_key_given_twice_is_named() -> None:
    with pytest.raises(StrictJSONError, match="key 'b' is given twice"):
        loads(b'{"a": 1, "b": 2, "b": 3}', max_bytes=100, max_depth=2)
    assert loads(b'{"a": {"b": 1}, "b": 2}', max_bytes=100, max_depth=2) == {"a": {"b": 1}, "b": 2}
