"""``wirt-audit``: query wirt's audit log, rotated and compressed generations too (root only).

Trusts: root-owned config (where the audit log is).  Distrusts: the
environment (replaced, as in ``virsh_wrapper``) and the log's content, which
quotes user-written names: every value is printed escaped, on one line.

Reads ``audit.log`` and its rotated siblings (``audit.log.1``,
``audit.log.2.gz``, ``audit.log-20261125.gz`` ...), oldest first by
modification time, and prints the records that match every filter given:
as an aligned table, or with ``--json`` as JSON lines exactly as logged.

Exit status: ``wirt``'s table (:data:`~wirt_wrapper.rules.errors.CLI_EXITS`):
0 ok, 64 a bad command line, 66 no audit log, 77 not root, 78 an unsafe or
malformed config or install, 70 anything else.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any, NoReturn

from wirt_wrapper.rules.actions import Rejection, lookup_action
from wirt_wrapper.rules.errors import (
    CLI_EXITS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CliError,
    ConfigError,
    NotAllowed,
    NotFound,
    NotRootError,
    SiteConfigError,
    UsageError,
)

__all__ = ["build_parser", "main", "query", "rotated_files"]

# logrotate's names: .1 .2.gz (numbers) or -20261125 -2026112514.gz (dateext)
ROTATED = re.compile(r"(\.\d+|-\d{8,10})(\.gz)?")
RELATIVE = re.compile(r"(\d+)([smhdw])")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
COLUMNS = ("time", "event", "user", "vm", "action", "outcome", "reason")


def rotated_files(path: str) -> list[str]:
    """*path* and its rotated generations, oldest first (by modification time)."""
    folder, base = os.path.split(path)
    found = []
    for name in os.listdir(folder or "."):
        if name == base or (name.startswith(base) and ROTATED.fullmatch(name[len(base):])):
            full = os.path.join(folder, name)
            number = re.match(r"\.(\d+)", name[len(base):])
            order = -int(number.group(1)) if number else 0  # .2 is older than .1
            found.append((name == base, os.stat(full).st_mtime, order, full))
    # the live log last; generations by age (logrotate and gzip keep their mtimes)
    return [entry[-1] for entry in sorted(found)]


def parse_time(text: str, now: float | None = None) -> datetime:
    """``2h``/``3d`` ago, or an ISO date/time (local time unless it has an offset)."""
    relative = RELATIVE.fullmatch(text.strip())
    if relative:
        seconds = int(relative.group(1)) * UNITS[relative.group(2)]
        return datetime.fromtimestamp((now or time.time()) - seconds, UTC)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a time: use 2026-11-25, '2026-11-25 14:00', or 2h / 3d ago"
        ) from None
    return when if when.tzinfo else when.astimezone()


def _open(path: str) -> IO[bytes] | gzip.GzipFile:
    if path.endswith(".gz"):
        return gzip.GzipFile(path, "rb")
    return open(path, "rb")


def _needle(key: str, values: list[str]) -> list[bytes]:
    """How ``"key":value`` looks in a record (compact, sorted keys, ASCII JSON)."""
    needles = [f'"{key}":{json.dumps(v)}'.encode() for v in values]
    if key == "action":  # a rejected command has no action yet: its file name says it
        needles += _needle("file", [n for v in values for n in _names(v)])
    return needles


def _names(action: str) -> list[str]:
    try:
        found = lookup_action(action)
    except Rejection:
        return [action]
    return [found.name, *found.aliases]


def action_of(record: dict[str, Any]) -> Any:
    """The action a command record is about, also for files rejected before parsing."""
    action = record.get("action")
    if action is None and isinstance(record.get("file"), str):
        try:
            return lookup_action(record["file"]).name
        except Rejection:
            return None
    return action


def _value(record: dict[str, Any], key: str) -> Any:
    return action_of(record) if key == "action" else record.get(key)


def query(files: list[str], *, event: str | None = "command",
          filters: dict[str, list[str]] | None = None,
          since: datetime | None = None, until: datetime | None = None,
          ) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Matching records as (raw line, parsed), in file order.

    A cheap byte search rules most lines out before one is parsed; the parsed
    record is then checked exactly.
    """
    wanted = {k: v for k, v in (filters or {}).items() if v}
    needles = [_needle(k, v) for k, v in wanted.items()]
    if event:
        needles.append(_needle("event", [event]))
    for path in files:
        with _open(path) as handle:
            for raw in handle:
                if not all(any(n in raw for n in group) for group in needles):
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue  # a torn line from a killed pass
                if not isinstance(record, dict):
                    continue
                if event and record.get("event") != event:
                    continue
                if any(_value(record, k) not in v for k, v in wanted.items()):
                    continue
                if since or until:
                    try:
                        when = datetime.fromisoformat(record["time"])  # 2026-..T..+0000
                    except (KeyError, TypeError, ValueError):
                        continue
                    if (since and when < since) or (until and when >= until):
                        continue
                yield raw, record


def _cell(record: dict[str, Any], column: str) -> str:
    value = _value(record, column)
    if column == "action" and value is None:
        value = record.get("file")
    elif column == "reason":
        value = value or record.get("summary") or record.get("message") or ""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value)
    return text.encode("unicode_escape").decode("ascii")  # one line, printable ASCII


def print_table(records: list[dict[str, Any]], out: IO[str], columns: tuple[str, ...]) -> None:
    rows = [[_cell(r, c) for c in columns] for r in records]
    widths = [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(columns)]
    widths[-1] = 0  # the last column runs to the end of the line
    for row in [[c.upper() for c in columns], *rows]:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is a UsageError (wirt's exit 64)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see wirt-audit --help)")


def exit_table() -> str:
    """The exit codes wirt-audit can give, from wirt's one table."""
    mine = {EXIT_OK, *(e.exit_code for e in (UsageError, NotFound, CliError, NotAllowed,
                                            SiteConfigError))}
    return ", ".join(f"{code} {kind}" for code, kind in CLI_EXITS if code in mine)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="wirt-audit",
        description="Show records of wirt's audit log (and its rotated, compressed "
        "generations) that match every filter. Root only.",
        epilog="A filter given twice matches either value: --outcome failed --outcome rejected. "
        f"Exit status (wirt's table): {exit_table()}.",
    )
    parser.add_argument("--config", metavar="FILE",
                        help="config naming the audit log (default /etc/wirt/wirt.toml)")
    parser.add_argument("--log", metavar="FILE",
                        help="read this audit log (and its generations) instead")
    parser.add_argument("--user", action="append", default=[], help="user name")
    parser.add_argument("--vm", action="append", default=[], help="VM folder name")
    parser.add_argument("--host", action="append", default=[],
                        help="[[hosts]] name the domain was on ('local' with uri alone)")
    parser.add_argument("--action", action="append", default=[],
                        help="action (aliases such as stop count as their action)")
    parser.add_argument("--outcome", action="append", default=[],
                        choices=("done", "failed", "rejected", "interrupted"))
    parser.add_argument("--event", default="command",
                        help="record type: command (default), pass, notice, mail-failed, "
                        "user-skipped, ... or 'all'")
    parser.add_argument("--since", type=parse_time, metavar="TIME",
                        help="from TIME on: 2026-11-25, '2026-11-25 14:00', or 2h / 3d / 1w ago")
    parser.add_argument("--until", type=parse_time, metavar="TIME", help="before TIME")
    parser.add_argument("--json", action="store_true",
                        help="JSON lines, exactly as logged, instead of a table")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def unreadable(path: str, exc: OSError) -> CliError:
    """An audit log that cannot be read, as the error of wirt's table for its kind."""
    where = exc.filename or path
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        folder = f", nor its folder {where}" if where != path else ""
        return NotFound(f"audit log {path}: no such file{folder} (has a pass run yet? "
                        "audit_log in the config says where it is)")
    if isinstance(exc, PermissionError):
        return NotAllowed(f"audit log {where}: permission denied (it is root's: run me as root)")
    return CliError(f"audit log {where}: {exc.strerror or exc}")


def log_files(path: str) -> list[str]:
    """The audit log's files, oldest first; NotFound when there is none at all."""
    try:
        files = rotated_files(path)
    except OSError as exc:
        raise unreadable(path, exc) from None
    if not files:
        raise NotFound(f"audit log {path}: no such file, nor a rotated generation of it "
                       "(has a pass run yet? audit_log in the config says where it is)")
    return files


def main(argv: list[str] | None = None) -> int:
    """Parse, check (root, code, config), then print the matches; every failure is a
    CliError of wirt's table, mapped here only."""
    from wirt_wrapper.root import startup
    from wirt_wrapper.rules.config import load_config

    startup.scrub_environment()
    path = ""
    try:
        args = parse_args(argv)
        try:
            startup.prepare("wirt-audit", None, argv,
                            hint="the audit log is root's: run me as root")
            path = args.log or load_config(args.config).audit_log
        except NotRootError as exc:
            raise NotAllowed(str(exc)) from None
        except ConfigError as exc:
            raise SiteConfigError(str(exc)) from None
        files = log_files(path)
        actions = [_names(name)[0] for name in args.action]
        event = None if args.event == "all" else args.event
        filters = {"user": args.user, "vm": args.vm, "host": args.host, "action": actions,
                   "outcome": args.outcome}
        matches = query(files, event=event, filters=filters, since=args.since, until=args.until)
        try:
            if args.json:
                out = sys.stdout.buffer
                for raw, _ in matches:
                    out.write(raw if raw.endswith(b"\n") else raw + b"\n")
            else:
                columns = COLUMNS if event is None else tuple(c for c in COLUMNS if c != "event")
                print_table([record for _, record in matches], sys.stdout, columns)
            sys.stdout.flush()
        except BrokenPipeError:  # | head
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (EOFError, gzip.BadGzipFile) as exc:
            raise CliError(f"audit log {path}: a generation is damaged: {exc}") from None
        except OSError as exc:
            raise unreadable(path, exc) from None
    except CliError as exc:
        print(f"wirt-audit: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
