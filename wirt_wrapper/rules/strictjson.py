"""A strict JSON reader for input nobody vouches for (pure, no I/O).

Used for the messages across the boundary (:mod:`.protocol`) and for the
user's settings file (:mod:`.settings`).  Before any parser sees the bytes,
their size and nesting depth are bounded (Python's json recurses: 4 KB of
``[`` raises RecursionError).  Then: no duplicate keys, no ``NaN`` or
``Infinity``, and optionally no floats at all.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["StrictJSONError", "depth_ok", "loads"]


class StrictJSONError(ValueError):
    """The bytes are not strict JSON within the bounds; the message says which rule."""


# A JSON string, escapes and all, or one left open: to the end (so no match ever fails
# and is tried again from a later quote, which would take quadratic time); and every
# byte that is not a bracket, to delete.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def depth_ok(data: bytes, limit: int) -> bool:
    """Whether brackets nest at most *limit* deep (strings skipped), before any parsing.

    In C where it can be (this runs on every message across the boundary): no
    deeper than it has opening brackets; else the strings are cut out (one
    left open runs to the end) and only the brackets left are walked.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return True
    depth = 0
    for byte in _STRING.sub(b"", data).translate(None, _NOT_BRACKETS):
        if byte in b"[{":
            depth += 1
            if depth > limit:
                return False
        else:
            depth -= 1
    return True


def _no_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not a number JSON allows here")


def _no_float(text: str) -> Any:
    raise StrictJSONError(f"{text} is not a whole number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):  # a key given twice: which one
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise StrictJSONError(f"key {key!r} is given twice")
            seen.add(key)
    return found


def loads(data: bytes, *, max_bytes: int, max_depth: int, floats: bool = True) -> Any:
    """The value in *data*, or StrictJSONError naming the rule it breaks."""
    if len(data) > max_bytes:
        raise StrictJSONError(f"{len(data)} bytes is more than the {max_bytes} allowed")
    if not depth_ok(data, max_depth):
        raise StrictJSONError(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(data, parse_constant=_no_constant,
                          parse_float=None if floats else _no_float,
                          object_pairs_hook=_no_duplicates)
    except StrictJSONError:
        raise
    except (ValueError, RecursionError) as exc:  # int() past 4,300 digits is a ValueError too
        raise StrictJSONError(f"not valid JSON ({exc})") from None
