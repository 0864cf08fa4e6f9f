"""What the command-line tools print: lines safe for a terminal, or JSON (no other I/O).

Shared by ``wirt`` (the calling user) and ``wirt admin`` (root): names other
members chose, and logs written by older tools, may hold escapes that would
drive a terminal, so every text line is made printable first.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from wirt_wrapper.rules.actions import printable

__all__ = ["Out", "shown"]


def shown(line: str) -> str:
    """A line safe for a terminal (logs written before names were escaped, old tools)."""
    return printable(line, limit=1 << 20)


class Out:
    """Text lines (made safe by :func:`shown`) or, with --json, one JSON document."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, data: Any, text: Callable[[], list[str]]) -> None:
        if self.as_json:
            print(json.dumps(data, indent=2, sort_keys=True))
        else:
            for line in text():
                print(shown(line))
