"""A strict JSON reader for input nobody vouches for (pure, no I/O).

Used for the messages across the boundary (:mod:`.protocol`) and for the
user's settings file (:mod:`.settings`).  Before any parser sees the bytes,
their size and nesting depth are bounded (Python's json recurses: 4 KB of
``[`` raises RecursionError).  Then: no duplicate keys, no ``NaN`` or
``Infinity``, and optionally no floats at all.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["StrictJSONError", "depth_ok", "loads"]


class StrictJSONError(ValueError):
    """The bytes are not strict JSON within the bounds; the message says which rule."""


def depth_ok(data: bytes, limit: int) -> bool:
    """Whether brackets nest at most *limit* deep (strings skipped), before any parsing."""
    depth, in_string, escaped = 0, False, False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
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


def _no_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not a number JSON allows here")


def _no_float(text: str) -> Any:
    raise StrictJSONError(f"{text} is not a whole number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise StrictJSONError(f"key {key!r} is given twice")
        seen.add(key)
    return dict(pairs)


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
