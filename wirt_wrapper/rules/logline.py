"""The line a command leaves in the user's log: written by the pass, read by ``wirt`` (pure).

One definition, so the writer and the reader cannot drift::

    2026-11-25T16:00:40+0000 web start --paused: done (file start, kept as
    ~/wirt/logs/history/20261125-160040.171115-web-start) [19a2...-1]
    2026-11-25T16:02:00+0000 web config memory_mib=1024: done: ... (file config,
    left in place) [19a2...-config-web]

(one line each).  Every user-chosen part is already made printable by the writer.
"""

from __future__ import annotations

import datetime
import re
import time
from typing import Any

from wirt_wrapper.rules.actions import printable

__all__ = ["CANCELLED", "now_text", "parse", "render", "seconds", "state_line"]

CANCELLED = "cancelled"  # a command its user took back with `wirt cancel` (not run)

LINE = re.compile(
    r"(?P<time>\S+) (?P<vm>\S+) (?P<action>[^\s:]+)(?P<params>(?: [^:]*)?): "
    r"(?P<outcome>done|failed|rejected|interrupted|cancelled)(?:: (?P<message>.*?))? "
    r"\(file (?P<file>.*)(?:, kept as (?P<history>~/\S+)|, left in place)\) "
    r"\[(?P<id>[^\]\s]+)\]"
)


STAMP = "%Y-%m-%dT%H:%M:%S%z"


def now_text() -> str:
    """Now, as a log line holds it.  From time.time(), as every other time wirt writes:
    time.strftime() without a time asks C's time(), a coarse clock that can still show the
    last second a few ms after time.time() shows the next, so a line could say it came a
    second before the state it follows was read (``<read-at>``)."""
    return time.strftime(STAMP, time.localtime(time.time()))


def seconds(stamp: str) -> float | None:
    """A line's time (:func:`now_text`) in seconds since the epoch; None if it is not one."""
    try:
        return datetime.datetime.strptime(stamp, STAMP).timestamp()
    except ValueError:
        return None


def render(*, stamp: str, vm: str, action: str, params: str, outcome: str, message: str,
           file: str, history: str | None, cid: str) -> str:
    """One command's log line (with its newline); *history* as shown to the user, None for
    the settings file, which stays where it is."""
    where = f"kept as {history}" if history is not None else "left in place"
    return (f"{stamp} {vm} {action}{' ' + params if params else ''}: "
            f"{outcome}{': ' + message if message else ''} "
            f"(file {printable(file)}, {where}) [{cid}]\n")


def parse(line: str) -> dict[str, str] | None:
    """The fields of one log line, or None if it is not a command's line."""
    match = LINE.fullmatch(line.rstrip("\n"))
    if match is None:
        return None
    found = {k: (v or "") for k, v in match.groupdict().items()}
    found["params"] = found["params"].strip()
    return found


def state_line(info: dict[str, Any]) -> str:
    """The domain's state after a command, for layouts without status.xml."""
    if info.get("problem"):
        return f"domain {info.get('domain', '?')}: {info['problem']}\n"
    snapshots = info.get("snapshots")
    listed = "" if snapshots is None else "; snapshots: " + (", ".join(
        f"{s.get('name', '')} ({s.get('state', '')}, {s.get('time', '')}, by "
        f"{s.get('by', '')}{', current' if s.get('current') else ''})"
        for s in snapshots) or "none")
    return (f"domain {info['domain']}: {info['state']} ({info['reason']}); "
            f"autostart: {'yes' if info['autostart'] else 'no'}{printable(listed, 4000)}\n")
