"""``wirt``: drive your own VMs without knowing the spool layout.

Run by a member of the group it runs as that user, with no privilege: it
never talks to libvirt, it writes command files into the caller's own spool
and reads back what the pass wrote there, all through :mod:`spool` (no link
followed, nothing replaced, files 0600, folders 0700).  It trusts nothing in
the home more than the pass does, and the site config (``/etc/wirt/wirt.toml``,
when readable) only for its messages: the pass decides.

Run by root it offers only the admin verbs (:mod:`admin`).  Exit status: the
table ``CLI_EXITS`` in :mod:`wirt_wrapper.rules.errors`.
"""

from __future__ import annotations

import argparse
import difflib
import grp
import json
import os
import pwd
import re
import shutil
import sys
import time
import tomllib
from typing import Any, NoReturn

from wirt_wrapper import __version__
from wirt_wrapper.cli import reach
from wirt_wrapper.cli.spool import ISOS_FILE, ISOS_PARTS, Home, Outcome, VmRef
from wirt_wrapper.rules import logline, strictjson
from wirt_wrapper.rules import settings as settings_rules
from wirt_wrapper.rules.actions import (
    ACTIONS,
    CONSOLE_FILE,
    SCREEN_FILE,
    SERIAL_FILE,
    Action,
    Rejection,
    canonical,
    check_vm_name,
    domain_for,
    lookup_action,
    parse_params,
    settled,
)
from wirt_wrapper.rules.config import DEFAULT_PATH, Config, Limits, PassConfig, load_config
from wirt_wrapper.rules.errors import (
    CLI_EXITS,
    EXIT_BY_OUTCOME,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    CliError,
    ConfigError,
    NotAllowed,
    NotFound,
    ProtocolError,
    UsageError,
)
from wirt_wrapper.rules.output import Out, shown
from wirt_wrapper.rules.output import shown as shown_line
from wirt_wrapper.rules.protocol import MAX_SCREEN, MAX_SERIAL, check_console

__all__ = ["main"]

USER_CONFIG = (".config", "wirt")
USER_CONFIG_FILE = "config.toml"
OLD_CONFIG_FILE = ".wirt.json"
USER_KEYS = ("vm", "host")  # in ~/.config/wirt/config.toml
DEFAULT_TIMEOUT = 300.0
READ_COMMANDS = ("list", "status", "log", "history", "create", "cancel", "set", "settings",
                 "isos")
ISOS_SHOWN = f"~/{'/'.join(ISOS_PARTS)}/{ISOS_FILE}"


# -- the command line ---------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """argparse, but errors become UsageError (exit 64) with an actionable message."""

    def error(self, message: str) -> NoReturn:
        bad = re.search(r"argument command: invalid choice: '([^']*)'", message)
        if bad:
            raise UsageError(unknown_command(bad.group(1)))
        # main() prints "wirt: " before the message: the subcommand's name, not the prog again
        where = self.prog.removeprefix("wirt").strip()
        raise UsageError(f"{where + ': ' if where else ''}{message} "
                         f"(see {self.prog} --help)")


def command_names() -> list[str]:
    names = [n for a in ACTIONS if a.name != "status" for n in (a.name, *a.aliases)]
    return [*names, "refresh", *READ_COMMANDS, "help", "admin"]


def unknown_command(word: str) -> str:
    actions = ", ".join(
        f"{a.name} ({'/'.join(a.aliases)})" if a.aliases else a.name
        for a in ACTIONS if a.name != "status"
    )
    close = difflib.get_close_matches(word, command_names(), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return (f"'{word}' is not a wirt command; {hint}Actions: {actions}, refresh. "
            f"Other commands: {', '.join(READ_COMMANDS)}, help; as root: admin")


def _dest(option: str) -> str:
    return "opt_" + option.lstrip("-").replace("-", "_")


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Options accepted before and after the command (defaults live on the top parser)."""
    default: Any = None if top else argparse.SUPPRESS
    parser.add_argument("--vm", default=default, metavar="VM",
                        help="the VM (default: vm in ~/.config/wirt/config.toml, "
                        "or machine in ~/.wirt.json)")
    parser.add_argument("--json", action="store_true",
                        default=False if top else argparse.SUPPRESS,
                        help="print JSON for scripts")
    parser.add_argument("--config", default=default, metavar="FILE",
                        help="the admin's site config, to check your group and the limits "
                        "against before anything is written (default /etc/wirt/wirt.toml)")
    parser.add_argument("--layout", choices=("wirt", "legacy"), default=default,
                        help="which spool layout (default: the VM's; wirt for create)")


def _vm_arg(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("vm_arg", nargs=None if required else "?", metavar="VM",
                        help="VM folder name" + ("" if required else " (default: --vm or config)"))


def _action_parser(sub: Any, name: str, action: Action, aliases: list[str],
                   common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(name, aliases=aliases, parents=[common], help=action.summary,
                            description=f"{name}: {action.summary}. Writes the command into "
                            "your spool; a pass runs it.")
    _vm_arg(parser)
    for option in action.options:  # the action table's own words for each
        if option.value is not None:  # wirt snapshot VM [NAME]; --name NAME works too
            parser.add_argument("value_arg", nargs="?", metavar=option.value.what,
                                help=f"{option.help} ({option.value.rule})")
            parser.add_argument(option.name, dest=_dest(option.name), metavar=option.value.what,
                                help=option.help)
            parser.set_defaults(value_option=option.name)
        elif option.values:
            parser.add_argument(option.name, dest=_dest(option.name), choices=option.values,
                                help=option.help)
        else:
            parser.add_argument(option.name, dest=_dest(option.name), action="store_true",
                                help=option.help)
    if action.settles_in is None:
        wait_help = "wait for the outcome; the exit status tells it"
    else:  # done only means the guest was asked: wait until it did it
        wait_help = (f"wait for the outcome, then until a pass reads the guest "
                     f"{action.settles_in}{' again' if action.settles_later else ''} "
                     f"(exit 4 if not within --timeout)")
    if action.output == SCREEN_FILE:
        parser.add_argument("-o", "--output", metavar="FILE", default=None,
                            help="also save the PNG as FILE ('-': write it to stdout)")
    if action.output:
        wait_help += " (always, for this command)"
    parser.add_argument("-w", "--wait", action="store_true", help=wait_help)
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help=f"give up waiting after this long (default {DEFAULT_TIMEOUT:g})")
    parser.set_defaults(command="action", action=action.name, subcommand=name)
    if action.output:  # what it produces is read back after the pass: always wait
        parser.set_defaults(wait=True)


def build_parser() -> Parser:
    parser = Parser(
        prog="wirt",
        description="Drive your own VMs: wirt writes command files into your spool "
        "(~/wirt/service/vm/<vm>/) and reads the results a pass writes back.",
        epilog="Exit status: " + ", ".join(f"{code} {kind}" for code, kind in CLI_EXITS)
        + " (1 to 4: the outcome of --wait; README.md has the table).",
    )
    _common(parser, top=True)
    parser.add_argument("--host", default=None, metavar="HOST",
                        help="run the command on HOST through your ssh (default: host in "
                        "~/.config/wirt/config.toml or ~/.wirt.json; '' for here)")
    parser.add_argument("--version", action="version", version=f"wirt {__version__}")
    common = Parser(add_help=False)
    _common(common, top=False)
    sub = parser.add_subparsers(dest="command", metavar="command", parser_class=Parser)
    sub.required = True
    p = sub.add_parser("help", help="help on wirt or on one command (wirt help start)")
    p.add_argument("topic", nargs="?", metavar="COMMAND",
                   help="the command to explain (left out: wirt itself)")

    sub.add_parser("list", parents=[common], help="your VMs, their state and last command")
    p = sub.add_parser("status", parents=[common], help="one VM in detail (console address too)")
    _vm_arg(p)
    for action in ACTIONS:
        if action.name != "status":
            _action_parser(sub, action.name, action, list(action.aliases), common)
    _action_parser(sub, "refresh", lookup_action("status"), [], common)
    p = sub.add_parser("log", parents=[common], help="the VM's log (one line per command)")
    _vm_arg(p)
    p.add_argument("-n", "--lines", type=int, default=20,
                   help="how many of the last lines (0: all; default 20)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p = sub.add_parser("history", parents=[common], help="handled commands and their outcomes")
    p.add_argument("vm_arg", nargs="?", metavar="VM", help="only this VM (default: all)")
    p.add_argument("-n", "--lines", type=int, default=20,
                   help="how many of the newest (0: all; default 20)")
    p = sub.add_parser("cancel", parents=[common],
                       help="take back a command still waiting for a pass (into history)")
    p.add_argument("vm_arg", metavar="VM", help="VM folder name")
    p.add_argument("cancel_action", metavar="ACTION", help="the waiting command (start, stop, ...)")
    p = sub.add_parser("create", parents=[common], help="make a VM's folder (private, 0700)")
    _vm_arg(p)
    p = sub.add_parser(
        "set", parents=[common], help="change the VM's settings file (memory, vCPUs, CD, boot)",
        description="set: merge KEY=VALUE into the VM folder's settings file 'config' "
        "(memory_mib=2048, vcpus=2, cdrom=NAME from 'wirt isos' or cdrom=none to eject, "
        "boot=cdrom,hd; KEY= removes the key, which leaves that setting as it is). The "
        "result is checked against the pass's rules before it is written (atomically); "
        "the next pass applies it: memory, vCPUs and boot order at the next boot, a CD "
        "at once.")
    p.add_argument("words", nargs="+", metavar="[VM] KEY=VALUE",
                   help=f"the VM (unless --vm or a default names it), then settings "
                   f"({', '.join(settings_rules.KEYS)})")
    p.add_argument("-w", "--wait", action="store_true",
                   help="wait until a pass has applied it; the exit status tells the outcome")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help=f"give up waiting after this long (default {DEFAULT_TIMEOUT:g})")
    p = sub.add_parser("settings", parents=[common],
                       help="the VM's settings: what its config asks vs what libvirt holds",
                       description="settings: what the VM's settings file asks for (wanted), "
                       "what libvirt holds (applied, from status.xml), whether a restart is "
                       "needed, and the outcome of the last settings change.")
    _vm_arg(p)
    p = sub.add_parser("snapshots", parents=[common],
                       help="the VM's snapshots: name, time, state, current, made by",
                       description="snapshots: every snapshot of the VM's domain as the last "
                       "pass wrote it in status.xml (yours, made with 'wirt snapshot', and the "
                       "admin's, which wirt never touches). 'wirt refresh VM --wait' reads "
                       "them anew.")
    _vm_arg(p)
    sub.add_parser("isos", parents=[common], help="the ISO catalogue you can put in the CD drive",
                   description=f"isos: the ISO names the admin offers ({ISOS_SHOWN}, written "
                   "by a pass); use one with: wirt set VM cdrom=NAME")

    # listed for --help only: main() hands 'wirt admin ...' to root/admin.py before parsing
    sub.add_parser("admin", help="admin verbs, as root (wirt admin --help)")
    return parser


# -- output -------------------------------------------------------------------
class Progress:
    """A one-line spinner on stderr, only when stderr is a terminal."""

    STAGES = {"pending": "waiting for a pass to pick it up",
              "claimed": "a pass is running it"}

    def __init__(self, label: str) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty()
        self.count = 0

    def tick(self, stage: str, elapsed: float) -> None:
        if not self.enabled:
            return
        self.count += 1
        spin = "|/-\\"[self.count % 4]
        text = f"\r{spin} {self.label}: {self.STAGES.get(stage, stage)} ({elapsed:.0f} s) "
        sys.stderr.write(text)
        sys.stderr.flush()

    def clear(self) -> None:
        if self.enabled and self.count:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]]


def when(text: str) -> str:
    return text[:19].replace("T", " ") if text else ""


def warn(message: str) -> None:
    print(f"wirt: warning: {shown(message)}", file=sys.stderr)


# -- settings ---------------------------------------------------------------------
def site_config(path: str | None) -> Config | None:
    """The admin's config, when this user can read it; None when unknown."""
    if path is None and not os.path.lexists(DEFAULT_PATH):
        return None  # the pass may run with --config elsewhere: do not guess
    try:
        return load_config(path)
    except ConfigError as exc:
        if path is not None:
            warn(f"cannot use {path}: {exc}")
        return None


def membership_problem(config: Config | None, user: str) -> str | None:
    """Why the pass would ignore this user (group database, as the pass reads it)."""
    if config is None:
        return None  # the site config is not readable: the pass decides
    try:
        group = grp.getgrnam(config.group)
    except KeyError:
        return f"the group '{config.group}' that wirt serves does not exist; ask the admin"
    if user in group.gr_mem or pwd.getpwnam(user).pw_gid == group.gr_gid:
        return None
    hint = " (your session still has it: you were removed)" \
        if group.gr_gid in os.getgroups() else ""
    return (f"you ({user}) are not in the group '{config.group}' that wirt serves{hint}: "
            f"passes ignore your spool. Ask the admin: adduser {user} {config.group}")


def default_vm(home: Home) -> str | None:
    """``vm`` from ~/.config/wirt/config.toml, else ``machine`` from the old ~/.wirt.json."""
    return user_setting(home, "vm", "machine")


def default_host(home: Home) -> str | None:
    """``host`` from ~/.config/wirt/config.toml, else from the old ~/.wirt.json."""
    return user_setting(home, "host", "host")


def user_setting(home: Home, key: str, old_key: str) -> str | None:
    """*key* from ~/.config/wirt/config.toml, else *old_key* from the old ~/.wirt.json."""
    try:
        raw = home.read_small(USER_CONFIG, USER_CONFIG_FILE)
    except FileNotFoundError:
        pass
    else:
        where = f"~/{'/'.join(USER_CONFIG)}/{USER_CONFIG_FILE}"
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"{where}: not valid TOML: {exc}") from None
        for name in data:
            if name not in USER_KEYS:
                warn(f"{where}: unknown key '{name}' ignored (known: {', '.join(USER_KEYS)})")
        value = data.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise UsageError(f"{where}: {key} must be a string")
            return value
    try:
        raw = home.read_small((), OLD_CONFIG_FILE)
    except FileNotFoundError:
        return None
    try:
        old = json.loads(raw)
    except ValueError as exc:
        raise UsageError(f"~/{OLD_CONFIG_FILE}: not valid JSON: {exc}") from None
    found = old.get(old_key) if isinstance(old, dict) else None
    return found if isinstance(found, str) and found else None


def chosen_vm(args: argparse.Namespace, home: Home) -> str:
    given, flag = getattr(args, "vm_arg", None), args.vm
    if given and flag and given != flag:
        raise UsageError(f"two VMs given: '{given}' and --vm '{flag}'")
    vm = given or flag or default_vm(home)
    if not vm:
        raise UsageError(
            f"which VM? Name it (wirt {args.command} web), or use --vm, or set a default: "
            'vm = "web" in ~/.config/wirt/config.toml'
        )
    return str(vm)


def pass_interval(config: Config | None) -> float:
    """How often passes run: the site config's [pass] interval_seconds, else the default."""
    return (config.passes if config is not None else PassConfig()).interval_seconds


# -- how old a state is (SPEC 2c) ---------------------------------------------------
def ago(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def clock(when: float, now: float) -> str:
    """A local time: the time of day, with the date when it is not today."""
    same_day = time.localtime(when)[:3] == time.localtime(now)[:3]
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S", time.localtime(when))


def freshness(as_of: float | None, interval: float, now: float | None = None) -> dict[str, Any]:
    """How old a state is: as of when, how many seconds, and whether it is stale (no pass
    confirmed it for longer than two pass intervals)."""
    now = time.time() if now is None else now
    if as_of is None:
        return {"as_of": None, "age_seconds": None, "stale": None, "text": "age unknown"}
    age = max(now - as_of, 0.0)
    stale = age > 2 * interval
    text = f"as of {clock(as_of, now)}, {ago(age)}"
    return {"as_of": as_of, "age_seconds": round(age, 1), "stale": stale,
            "text": text + (", stale" if stale else "")}


def stale_hint(interval: float) -> str:
    return (f"no pass has confirmed it for more than two pass intervals "
            f"({2 * interval:g} s); passes may not be running (ask the admin), or "
            "libvirt is down")


# -- commands -------------------------------------------------------------------------
def describe_state(status: dict[str, Any] | None) -> str:
    if status is None:
        return "unknown (no status yet)"
    if status.get("problem"):
        return {"missing": "no domain", "not-yours": "not yours",
                "ambiguous": "on two hosts", "unreachable": "host unreachable"}.get(
            status.get("problem_kind", ""), "problem")
    state, reason = status.get("state", "?"), status.get("reason", "")
    return f"{state} ({reason})" if reason and reason != "unknown" else state


def console(graphics: dict[str, str] | None) -> str:
    if not graphics:
        return "none"
    kind, listen, port = graphics.get("type", "?"), graphics.get("listen", ""), \
        graphics.get("port", "")
    if not port:
        return f"{kind} on {listen or '?'} (port assigned when the VM runs)"
    text = f"{kind} {listen or '?'} port {port}"
    if kind == "vnc" and port.isdigit() and int(port) >= 5900:
        text += f" (display :{int(port) - 5900})"
    if graphics.get("tls-port"):
        text += f", TLS port {graphics['tls-port']}"
    if graphics.get("protected") == "yes":
        text += "; password: wirt console"
    elif graphics.get("protected") == "no":
        text += "; no password: open to every local user until the VM restarts"
    return text


def vm_summary(home: Home, ref: VmRef, interval: float) -> dict[str, Any]:
    status = home.status(ref)
    last = (status or {}).get("last")
    if last is None and ref.layout.info is None:
        records = [r for r in home.history(ref.vm) if r.get("layout") == ref.layout.name]
        last = records[-1] if records else None
    fresh = freshness(home.as_of(ref, status), interval) if status is not None else None
    return {
        "vm": ref.vm, "layout": ref.layout.name, "folder": ref.shown(),
        "state": describe_state(status), "status": status, "last": last,
        "pending": home.pending(ref),
        **{k: v for k, v in (fresh or {}).items() if k != "text"},
        "state_age": None if fresh is None else fresh["text"],
    }


def without_folder(home: Home, refs: list[VmRef]) -> list[dict[str, Any]]:
    """The domains ~/wirt/info/vms.json lists (the user's, by the last pass) that no VM
    folder of the user's drives yet, as items of ``wirt list``."""
    have = {ref.vm for ref in refs}
    return [{"vm": entry["vm"], "layout": None, "folder": None, "domain": entry["domain"],
             "state": entry["state"], "status": None, "last": None, "pending": []}
            for entry in home.owned() or [] if entry["vm"] not in have]


def no_folder_note(item: dict[str, Any]) -> str:
    if item["vm"] is None:
        return (f"{item['domain']}  (yours, but no folder reaches it: ask the admin to "
                f"assign it to one: wirt admin assign {item['domain']} USER --as VM)")
    return f"{item['vm']}  (no folder yet: wirt create {item['vm']})"


def cmd_list(home: Home, args: argparse.Namespace, out: Out, config: Config | None) -> int:
    refs = home.vms()
    extra = without_folder(home, refs)
    if not refs and not home.has_spool() and not extra:
        print("You have no VM folders yet. Create one with: wirt create VM", file=sys.stderr)
    interval = pass_interval(config)
    items = [vm_summary(home, ref, interval) for ref in refs] + extra

    # the HOST column only where a pass named hosts ([[hosts]] in the site config)
    hosts = any((item["status"] or {}).get("host") for item in items)

    def text() -> list[str]:
        rows = []
        for item in items:
            if item["layout"] is None:
                continue  # below the table
            status, last = item["status"] or {}, item["last"] or {}
            auto = status.get("autostart")
            rows.append([
                item["vm"] + ("" if item["layout"] == "wirt" else " (legacy)"),
                *([status.get("host") or "-"] if hosts else []),
                item["state"],
                "-" if auto is None else ("yes" if auto else "no"),
                " ".join(filter(None, [last.get("action", "-"), last.get("params", "")])),
                last.get("outcome", "-") or "-",
                when(last.get("time", "")) or "-",
                ", ".join(item["pending"]) or "-",
                (item["state_age"] or "-").removeprefix("as of "),
            ])
        header = ["VM", *(["HOST"] if hosts else []), "STATE", "AUTOSTART", "LAST COMMAND",
                  "OUTCOME", "AT", "PENDING", "STATE AS OF"]
        lines = table(rows, header) if rows else []
        if extra:
            lines += ["", "Yours without a folder (as of the last pass):"]
            lines += [f"  {no_folder_note(item)}" for item in extra]
        return lines

    out.emit(items, text)
    return EXIT_OK


def cmd_status(home: Home, args: argparse.Namespace, out: Out, config: Config | None) -> int:
    ref = home.find(chosen_vm(args, home), args.layout)
    interval = pass_interval(config)
    item = vm_summary(home, ref, interval)
    status = item["status"]

    def text() -> list[str]:
        lines = [("VM", f"{ref.vm} ({ref.layout.name} layout, {ref.shown()})")]
        if ref.layout.info is None:
            lines.append(("state", "not reported in the legacy layout (no status.xml)"))
        elif status is None:
            lines.append(("state", "unknown: no pass has written its status yet "
                          f"(wirt refresh {ref.vm} --wait)"))
        else:
            lines.append(("domain", status.get("domain", "")))
            age = item["state_age"]
            if item["stale"]:
                age = f"{age}: {stale_hint(interval)}; wirt refresh {ref.vm} --wait asks again"
            if status.get("host"):
                lines.append(("host", status["host"]))
            if status.get("problem"):
                lines.append(("problem", f"{status['problem']} ({age})"))
            else:
                lines += [
                    ("state", f"{describe_state(status)} ({age})"),
                    ("autostart", "yes" if status.get("autostart") else "no"),
                    ("persistent", "yes" if status.get("persistent") else "no"),
                    ("memory", f"{status.get('memory_kib', 0) // 1024} MiB"),
                    ("vCPUs", str(status.get("vcpus", "?"))),
                    ("console", console(status.get("graphics"))),
                ]
        last = item["last"]
        if last:
            params = f" {last['params']}" if last.get("params") else ""
            message = f": {last['message']}" if last.get("message") else ""
            lines.append(("last command", f"{last.get('action', '?')}{params}: "
                          f"{last.get('outcome', '?')}{message} ({when(last.get('time', ''))})"))
        lines.append(("pending", ", ".join(item["pending"]) or "none"))
        width = max(len(k) for k, _ in lines) + 1
        return [f"{k + ':':<{width}} {v}" for k, v in lines]

    out.emit(item, text)
    return EXIT_OK


def cmd_snapshots(home: Home, args: argparse.Namespace, out: Out) -> int:
    ref = home.find(chosen_vm(args, home), args.layout)
    if ref.layout.info is None:
        raise NotFound(f"{ref.vm}: the legacy layout has no status.xml; the log line of each "
                       "snapshot command lists the snapshots (wirt log VM)")
    status = home.status(ref)
    if status is None:
        raise NotFound(f"{ref.vm}: no pass has written its status yet "
                       f"(wirt refresh {ref.vm} --wait)")
    if status.get("problem"):
        raise NotFound(f"{ref.vm}: {status['problem']}")
    snapshots = status.get("snapshots")
    item = {"vm": ref.vm, "domain": status.get("domain", ""), "snapshots": snapshots}

    def text() -> list[str]:
        if snapshots is None:
            return [f"{ref.vm}: not listed yet (wirt refresh {ref.vm} --wait)"]
        if not snapshots:
            return [f"{ref.vm}: no snapshots (take one with: wirt snapshot {ref.vm} [NAME])"]
        rows = [[s["name"], when(s["time"]) or s["time"], s["state"],
                 "yes" if s["current"] else "", s["by"]] for s in snapshots]
        return table(rows, ["NAME", "TAKEN", "STATE", "CURRENT", "BY"])

    out.emit(item, text)
    return EXIT_OK


def cmd_cancel(home: Home, args: argparse.Namespace, out: Out) -> int:
    """Every waiting file of that action (its name or an alias) goes to history, not run."""
    try:
        action = lookup_action(args.cancel_action)
    except Rejection as exc:
        raise UsageError(str(exc)) from None
    ref = home.find(args.vm_arg, args.layout)
    names = [n for n in (action.name, *action.aliases) if n in home.pending(ref)]
    if not names:
        raise NotFound(f"no '{action.name}' command is waiting for VM '{ref.vm}': nothing to "
                       f"take back (wirt status {ref.vm} lists what waits)")
    kept = [home.cancel(ref, name) for name in names]
    out.emit({"vm": ref.vm, "cancelled": names, "history": kept}, lambda: [
        f"{ref.vm}: {name}: cancelled, not run; kept as {where}"
        for name, where in zip(names, kept, strict=True)])
    return EXIT_OK


def cmd_create(home: Home, args: argparse.Namespace, out: Out, config: Config | None) -> int:
    vm = chosen_vm(args, home)
    ref, created = home.create(vm, args.layout or "wirt")
    problem = membership_problem(config, home.user)
    if problem:
        warn(problem)
    domain = domain_for((config or Config()).domain_name, home.user, vm)
    owned = home.owned()
    mine = [e for e in owned or [] if e["vm"] == vm]
    if mine:
        domain = mine[0]["domain"]
    elif owned is not None:
        listed = ", ".join(sorted({e["vm"] for e in owned if e["vm"]})) or "none"
        warn(f"no domain of yours is known for VM '{vm}' as of the last pass "
             f"(~/wirt/info/vms.json lists: {listed}); the folder drives '{domain}' once "
             "the admin defines it")

    def text() -> list[str]:
        head = f"created {ref.shown()} (mode 0700)" if created else f"{ref.shown()} exists already"
        defined = "" if mine else " (the admin must define it)"
        return [head, f"It drives the libvirt domain '{domain}'{defined}. "
                f"Try: wirt refresh {vm} --wait"]

    out.emit({"vm": vm, "layout": ref.layout.name, "folder": ref.shown(), "created": created,
              "domain": domain}, text)
    return EXIT_OK


def command_content(action: Action, args: argparse.Namespace) -> str:
    tokens: list[str] = []
    for option in action.options:
        value = getattr(args, _dest(option.name), None)
        if option.value is not None:
            if option.required and value is None and args.value_arg is None:
                # one word: the name (wirt --vm web revert NAME); the VM comes from --vm
                args.value_arg, args.vm_arg = args.vm_arg, None
            given = args.value_arg
            if given is not None and value is not None and given != value:
                raise UsageError(f"two names given ('{given}' and {option.name} '{value}'); "
                                 "give one")
            value = value if value is not None else given
        if value:
            tokens += [option.name, value] if option.takes_value else [option.name]
    try:
        params = parse_params(action, tokens)  # the same table the pass checks against
    except Rejection as exc:
        raise UsageError(str(exc)) from None
    text = " ".join(canonical(params))
    return text + "\n" if text else ""


def cmd_action(home: Home, args: argparse.Namespace, out: Out, config: Config | None) -> int:
    action = lookup_action(args.action)
    content = command_content(action, args)
    vm = chosen_vm(args, home)
    problem = membership_problem(config, home.user)
    if problem:
        raise NotAllowed(problem)
    ref = home.find(vm, args.layout)
    if config is not None and ref.layout.name not in config.layouts:
        warn(f"this host's passes do not serve the {ref.layout.name} layout ({ref.shown()})")
    written = home.write(ref, action.name, content)
    shown = " ".join([action.name, content.strip()]).strip()
    base = {"vm": vm, "layout": ref.layout.name, "action": action.name,
            "params": content.split(), "file": ref.shown(action.name)}
    if action.output:
        return reached(home, args, out, base, ref, action, written)
    if not args.wait:
        out.emit({**base, "stage": "pending"}, lambda: [
            f"{vm}: {shown}: written to {ref.shown(action.name)}; the next pass runs it. "
            f"Follow with: wirt log {vm} -f (or use --wait)"])
        return EXIT_OK
    timeout = DEFAULT_TIMEOUT if args.timeout is None else args.timeout
    started = time.monotonic()
    progress = Progress(f"{vm}: {shown}")
    try:
        result = home.wait(written, timeout, progress.tick)
    finally:
        progress.clear()
    if result.outcome == "done" and action.settles_in is not None and ref.layout.info:
        return settle(home, ref, action, out, base, shown, result, timeout,
                      started + timeout, pass_interval(config))
    return report(out, base, vm, shown, result, timeout)


def settle(home: Home, ref: VmRef, action: Action, out: Out, base: dict[str, Any], shown: str,
           result: Outcome, timeout: float, deadline: float, interval: float,
           poll: float = 0.5) -> int:
    """After a ``done`` that only asked the guest: wait, within the same --timeout, until
    status.xml shows the guest did it (shutdown: shut off; reboot: running, read by a later
    pass).  status.xml changes only when a pass reads the new state: with cron that is the
    next pass, so the wait spans passes; nothing more is written to the spool meanwhile."""
    vm = ref.vm
    data = {**base, "stage": result.stage, "outcome": result.outcome,
            "message": result.message, "history": result.history, "log": result.line}
    if not out.as_json:  # what the pass said, while the wait goes on
        print(f"{vm}: {shown}: done: {result.message}", flush=True)
    record = logline.parse(result.line or "") or {}
    since = logline.seconds(record.get("time", "")) or time.time()
    progress = Progress(f"{vm}: {shown}")
    progress.STAGES = {"settling": f"waiting for the guest to {action.asks} (a pass reads "
                       "its state; passes run from cron)"}
    status: dict[str, Any] | None = None
    as_of: float | None = None
    try:
        while True:
            status = home.status(ref)
            as_of = home.as_of(ref, status)
            state = str((status or {}).get("state", ""))
            later = as_of is not None and as_of >= int(since) + 1
            if status is not None and settled(action, state, later):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                status = status or {}
                return not_settled(out, data, ref, action, status, as_of, timeout, interval)
            progress.tick("settling", timeout - left)
            time.sleep(min(poll, left))
    finally:
        progress.clear()
    fresh = freshness(as_of, interval)
    data.update(settled=True, state=state, **{k: v for k, v in fresh.items() if k != "text"})
    what = (f"the guest powered off: it is {state}" if not action.settles_later else
            f"the guest is {state} again (a pass read it after the {action.name} request; "
            "a reboot inside the guest shows libvirt no other state)")
    out.emit(data, lambda: [f"{vm}: {what} ({fresh['text']})"])
    return EXIT_OK


def not_settled(out: Out, data: dict[str, Any], ref: VmRef, action: Action,
                status: dict[str, Any], as_of: float | None, timeout: float,
                interval: float) -> int:
    """The guest did not do it within --timeout: say so, and what forces it (exit 4)."""
    vm = ref.vm
    state = describe_state(status) if status else "unknown (no status yet)"
    fresh = freshness(as_of, interval)
    data.update(settled=False, state=status.get("state"),
                **{k: v for k, v in fresh.items() if k != "text"})
    if out.as_json:
        out.emit(data, list)
    if action.settles_later:
        what = (f"no pass saw the guest {action.settles_in} again after the {action.name} "
                f"request within {timeout:g} s")
    else:
        what = f"the guest did not {action.asks} within {timeout:g} s"
    still = "still " if status.get("state") == "running" != action.settles_in else ""
    forced, does = action.forced_by
    print(f"wirt: {vm}: {what}; it is {still}{state}, {fresh['text']}; "
          f"`wirt {forced} {vm}` {does}", file=sys.stderr)
    return EXIT_TIMEOUT


def reached(home: Home, args: argparse.Namespace, out: Out, base: dict[str, Any], ref: VmRef,
            action: Action, written: Any) -> int:
    """console, screenshot, serial: wait for the pass, then show what it wrote."""
    vm = base["vm"]
    timeout = DEFAULT_TIMEOUT if args.timeout is None else args.timeout
    progress = Progress(f"{vm}: {action.name}")
    try:
        result = home.wait(written, timeout, progress.tick)
    finally:
        progress.clear()
    to_stdout = getattr(args, "output", None) == "-"
    if result.outcome != "done" or to_stdout:
        if to_stdout and result.outcome == "done":
            sys.stdout.buffer.write(home.info_file(ref, SCREEN_FILE, MAX_SCREEN))
            sys.stdout.flush()
            return EXIT_OK
        # with -o -, stdout is the image's: the outcome goes to stderr
        return report(Out(False) if to_stdout else out, base, vm, action.name, result, timeout,
                      sys.stderr if to_stdout else sys.stdout)
    where = ref.layout.shown(*(ref.layout.info or ()), vm, action.output)
    data = {**base, "stage": result.stage, "outcome": result.outcome,
            "message": result.message, "file": where}
    if action.output == CONSOLE_FILE:
        console = read_console(home.info_file(ref, CONSOLE_FILE, 4096), where)
        out.emit({**data, "console": console}, lambda: reach.console_lines(vm, console))
        if not out.as_json:
            reach.start_viewer(console["type"], console["host"], int(console["port"]),
                               console["password"])
    elif action.output == SCREEN_FILE:
        png = home.info_file(ref, SCREEN_FILE, MAX_SCREEN)
        size = reach.png_size(png)
        if args.output:
            with open(args.output, "wb") as handle:  # the user's own path, as the user
                handle.write(png)
        saved = f", saved as {args.output}" if args.output else ""
        shown_size = f"{size[0]}x{size[1]}" if size else "?"
        out.emit({**data, "width": size[0] if size else None,
                  "height": size[1] if size else None, "saved": args.output},
                 lambda: [f"{vm}: screenshot: {shown_size} in {where}{saved}"])
    else:
        text = reach.terminal_text(home.info_file(ref, SERIAL_FILE, MAX_SERIAL))
        if out.as_json:
            out.emit({**data, "serial": text}, list)
        else:
            sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    return EXIT_OK


def read_console(raw: bytes, where: str) -> dict[str, Any]:
    """console.json as a pass writes it (strict JSON, the console's shape), before its host
    and password reach a viewer; CliError naming the file and the rule otherwise."""
    try:
        return check_console(strictjson.loads(raw, max_bytes=4096, max_depth=1))
    except (strictjson.StrictJSONError, ProtocolError) as exc:
        raise CliError(f"{where}: not what a pass writes ({exc}); ask for a console "
                       "again") from None


def report(out: Out, base: dict[str, Any], vm: str, shown: str, result: Outcome,
           timeout: float, stream: Any = None) -> int:
    data = {**base, "stage": result.stage, "outcome": result.outcome,
            "message": result.message, "history": result.history, "log": result.line}
    if result.outcome in EXIT_BY_OUTCOME:
        message = f": {result.message}" if result.message else ""
        if stream is not None and stream is not sys.stdout:
            print(shown_line(f"{vm}: {shown}: {result.outcome}{message}"), file=stream)
        else:
            out.emit(data, lambda: [f"{vm}: {shown}: {result.outcome}{message}"])
        return EXIT_BY_OUTCOME[str(result.outcome)]
    if result.stage == "vanished":
        text = (f"{vm}: {shown}: the command file disappeared but no pass recorded it "
                "(was it removed?)")
    elif result.stage == "pending":
        text = (f"{vm}: {shown}: still waiting after {timeout:g} s: no pass has picked it up "
                f"yet (passes run from cron; libvirt may be down). It stays in "
                f"{base['file']} and runs later")
    else:
        text = (f"{vm}: {shown}: picked up (kept as {result.history}) but no outcome after "
                f"{timeout:g} s; see: wirt log {vm}")
    if out.as_json:
        out.emit(data, list)
    print(f"wirt: {text}", file=sys.stderr)
    return EXIT_TIMEOUT


def cmd_log(home: Home, args: argparse.Namespace, out: Out) -> int:
    ref = home.find(chosen_vm(args, home), args.layout)
    lines = home.log_lines(ref, max(args.lines, 0))
    if not args.follow:
        out.emit([log_fields(line) for line in lines], lambda: lines)
        return EXIT_OK
    # Following: one line at a time (with --json: one JSON object per line).
    def show(line: str) -> str:
        return json.dumps(log_fields(line), sort_keys=True) if out.as_json else shown(line)

    for line in lines:
        print(show(line))
    sys.stdout.flush()
    for text in home.follow(ref):
        for line in text.splitlines():
            print(show(line))
        sys.stdout.flush()
    return EXIT_OK


def log_fields(line: str) -> dict[str, Any]:
    """A log line for scripts: a command's fields (rules.logline), else its text."""
    found = logline.parse(line)
    if found is None:
        return {"text": line.rstrip("\n")}
    return {"time": found["time"], "vm": found["vm"], "action": found["action"],
            "params": found["params"].split(), "outcome": found["outcome"],
            "message": found["message"], "file": found["file"],
            "history": found["history"] or None, "id": found["id"]}


def fit(lines: list[str], width: int) -> list[str]:
    """Table lines cut to the terminal's width (the last column, the longest, gives way)."""
    return [line if len(line) <= width else line[:max(width - 3, 0)] + "..." for line in lines]


def cmd_history(home: Home, args: argparse.Namespace, out: Out) -> int:
    vm = getattr(args, "vm_arg", None) or args.vm
    if vm:
        try:
            check_vm_name(vm)  # no find(): the log of a removed VM folder is still shown
        except Rejection as exc:
            raise UsageError(str(exc)) from None
    records = home.history(vm)
    if args.layout:
        records = [r for r in records if r.get("layout") == args.layout]
    if args.lines > 0:
        records = records[-args.lines:]

    def text() -> list[str]:
        rows = [[when(r.get("time", "")), r.get("vm", ""),
                 " ".join(filter(None, [r.get("action", ""), r.get("params", "")])),
                 r.get("outcome", "") or "?", r.get("message", ""), r.get("history", "")]
                for r in records]
        if not rows:
            return ["no handled commands yet"]
        # the message last: the column a narrow terminal cuts
        rows = [[r[0], r[1], r[2], r[3], r[5], r[4]] for r in rows]
        lines = table(rows, ["TIME", "VM", "COMMAND", "OUTCOME", "KEPT AS", "MESSAGE"])
        return fit(lines, shutil.get_terminal_size().columns) if sys.stdout.isatty() \
            or "COLUMNS" in os.environ else lines

    out.emit(records, text)
    return EXIT_OK


# -- the VM's settings file (SPEC section 9) ------------------------------------------
REMOVE = object()  # KEY= on the command line: take the key out of the file
INTEGER = re.compile(r"-?[0-9]{1,30}")


def max_file_bytes(config: Config | None) -> int:
    return (config.limits if config is not None else Limits()).max_file_bytes


def refused(exc: Rejection) -> UsageError:
    """A rule of the settings grammar, for the command line: nothing was written."""
    text = str(exc).removesuffix("; nothing of the file was applied")
    return UsageError(f"{text}; nothing was written")


def setting_value(word: str) -> tuple[str, Any]:
    """``KEY=VALUE`` as the JSON value the file will hold (the grammar judges it later)."""
    key, sep, value = word.partition("=")
    if not sep:
        raise UsageError(f"'{word}' is not KEY=VALUE (keys: {', '.join(settings_rules.KEYS)}; "
                         "e.g. wirt set web memory_mib=2048 vcpus=2)")
    if key not in settings_rules.KEYS:
        raise UsageError(f"'{key}' is not a setting (known: {', '.join(settings_rules.KEYS)})")
    if value == "":
        return key, REMOVE
    if key in ("memory_mib", "vcpus"):
        return key, int(value) if INTEGER.fullmatch(value) else value
    if key == "cdrom":
        return key, None if value.lower() in ("none", "null", "eject") else value
    return key, [item.strip() for item in value.split(",")]


def shown_value(key: str, value: Any) -> str:
    if key == "boot":
        return ",".join(value)
    if key == "cdrom":
        return "none (eject)" if value is None else str(value)
    return str(value)


def describe_wanted(wanted: dict[str, Any]) -> str:
    return " ".join(f"{k}={shown_value(k, wanted[k])}" for k in settings_rules.KEYS
                    if k in wanted) or "nothing (every setting is left as it is)"


def current_settings(home: Home, ref: VmRef, limit: int) -> dict[str, Any]:
    """The keys of the VM's config as they are (unknown or bad values kept: KEY= removes them)."""
    raw = home.read_config(ref)
    if raw is None:
        return {}
    where = ref.shown(settings_rules.FILE)
    try:
        data = strictjson.loads(raw, max_bytes=limit, max_depth=2, floats=False)
    except strictjson.StrictJSONError:
        data = None
    if isinstance(data, dict) and raw.isascii():
        return data
    try:
        settings_rules.parse(raw, limit)
    except Rejection as exc:
        raise UsageError(f"{where} cannot be merged into: {exc}. Fix it, or remove it and "
                         "run wirt set again; nothing was written") from None
    raise UsageError(f"{where} cannot be merged into; nothing was written")  # (not reached)


def unknown_iso(name: str, isos: list[str]) -> UsageError:
    if not isos:
        return UsageError(f"cdrom: '{name}' is not in the catalogue: {ISOS_SHOWN} lists no ISO "
                          "at all (ask the admin); nothing was written")
    few = list(dict.fromkeys([*difflib.get_close_matches(name, isos, 3), *sorted(isos)]))[:5]
    more = f", ... ({len(isos)} in all: wirt isos)" if len(isos) > len(few) else ""
    return UsageError(f"cdrom: '{name}' is not in the catalogue ({ISOS_SHOWN}); it has: "
                      f"{', '.join(few)}{more}; nothing was written")


def check_wanted(home: Home, ref: VmRef, wanted: dict[str, Any], config: Config | None) -> None:
    """What the pass would refuse, refused before anything is written (where wirt can tell)."""
    isos = home.isos()
    cdrom = wanted.get("cdrom")
    if cdrom is not None and isos is not None and cdrom not in isos:
        raise unknown_iso(cdrom, isos)
    if config is None:
        return  # the admin's limits are not readable here: the pass decides
    site = config.settings
    if not site.enabled:
        warn("the admin has turned settings off on this host ([settings] enabled = false): "
             "a pass will refuse the file")
    applied = (home.status(ref) or {}).get("settings") or {}
    catalogue: list[str] | None = None
    if site.iso_dir:
        catalogue = isos if isos is not None else ([cdrom] if cdrom else [])
    try:
        settings_rules.check_limits(
            wanted, max_memory_mib=site.max_memory_mib, max_vcpus=site.max_vcpus,
            isos=catalogue, has_cdrom=bool(applied.get("has_cdrom", True)))
    except Rejection as exc:
        raise refused(exc) from None


def cmd_set(home: Home, args: argparse.Namespace, out: Out, config: Config | None) -> int:
    words = list(args.words)
    if "=" not in words[0]:
        args.vm_arg = words.pop(0)
    if not words:
        raise UsageError("what to set? Give KEY=VALUE (keys: "
                         f"{', '.join(settings_rules.KEYS)}), e.g. wirt set web vcpus=2")
    changes: dict[str, Any] = {}
    for word in words:
        key, value = setting_value(word)
        if key in changes:
            raise UsageError(f"{key} is given twice; nothing was written")
        changes[key] = value
    vm = chosen_vm(args, home)
    ref = home.find(vm, args.layout)
    if args.wait and ref.layout.info is None:
        raise UsageError(f"--wait needs status.xml, which the {ref.layout.name} layout does not "
                         f"have; write without --wait and follow with: wirt log {vm} -f")
    problem = membership_problem(config, home.user)
    if problem:
        raise NotAllowed(problem)
    limit = max_file_bytes(config)
    before_raw = home.read_config(ref)
    merged = current_settings(home, ref, limit)
    for key, value in changes.items():
        if value is REMOVE:
            merged.pop(key, None)
        else:
            merged[key] = value
    try:  # the same grammar the pass parses the file with
        wanted = settings_rules.parse(json.dumps(merged).encode("ascii"), limit)
    except (Rejection, UnicodeEncodeError) as exc:
        if isinstance(exc, UnicodeEncodeError):
            raise UsageError("settings are plain ASCII; nothing was written") from None
        raise refused(exc) from None
    check_wanted(home, ref, wanted, config)
    data = settings_rules.dumps(wanted)
    if len(data) > limit:
        raise UsageError(f"the file would have {len(data)} bytes, more than the limit of "
                         f"{limit}; nothing was written")
    where = ref.shown(settings_rules.FILE)
    base = {"vm": vm, "layout": ref.layout.name, "file": where,
            "wanted": {k: list(v) if k == "boot" else v for k, v in wanted.items()},
            "removed": sorted(k for k, v in changes.items() if v is REMOVE)}
    if data == before_raw:
        out.emit({**base, "written": False, "stage": "unchanged"}, lambda: [
            f"{vm}: {where} already says {describe_wanted(wanted)}; nothing written "
            "(a pass applies each version of the file once)"])
        return EXIT_OK
    before = home.last_config(ref)
    home.write_config(ref, data)
    if not args.wait:
        out.emit({**base, "written": True, "stage": "pending"}, lambda: [
            f"{vm}: wrote {where}: {describe_wanted(wanted)}; the next pass applies it. "
            f"See: wirt settings {vm} (or use --wait)"])
        return EXIT_OK
    timeout = DEFAULT_TIMEOUT if args.timeout is None else args.timeout
    progress = Progress(f"{vm}: config")
    try:
        result = home.wait_config(ref, before, timeout, progress.tick)
    finally:
        progress.clear()
    if result is None:
        if out.as_json:
            out.emit({**base, "written": True, "stage": "pending"}, list)
        print(f"wirt: {vm}: config: still waiting after {timeout:g} s: no pass has applied "
              f"{where} yet (passes run from cron; libvirt may be down); a pass applies it "
              "later", file=sys.stderr)
        return EXIT_TIMEOUT
    outcome, message = result.get("outcome", ""), result.get("message", "")
    out.emit({**base, "written": True, "stage": "handled", "outcome": outcome,
              "message": message, "time": result.get("time", "")},
             lambda: [f"{vm}: config: {outcome}{': ' + message if message else ''}"])
    return EXIT_BY_OUTCOME.get(outcome, EXIT_BY_OUTCOME["failed"])


def cmd_settings(home: Home, args: argparse.Namespace, out: Out, config: Config | None) -> int:
    ref = home.find(chosen_vm(args, home), args.layout)
    raw = home.read_config(ref)
    wanted: dict[str, Any] | None = None
    problem = None
    if raw is not None:
        try:
            wanted = settings_rules.parse(raw, max_file_bytes(config))
        except Rejection as exc:
            problem = str(exc)
    status = home.status(ref)
    applied = (status or {}).get("settings")
    last = (status or {}).get("last_config")
    data = {
        "vm": ref.vm, "layout": ref.layout.name, "file": ref.shown(settings_rules.FILE),
        "exists": raw is not None, "problem": problem,
        "wanted": None if wanted is None else {
            k: list(v) if k == "boot" else v for k, v in wanted.items()},
        "applied": applied, "restart_needed": None if applied is None
        else applied.get("restart_needed"), "last_config": last,
    }

    def applied_value(key: str) -> str:
        if applied is None:
            return "?"
        if key == "memory_mib":
            return f"{applied.get('memory_mib', '?')} MiB"
        if key == "boot":
            return ",".join(applied.get("boot", [])) or "-"
        if key == "cdrom":
            if not applied.get("has_cdrom"):
                return "no CD-ROM drive"
            return applied.get("cdrom") or "none"
        return str(applied.get(key, "?"))

    def wanted_value(key: str) -> str:
        if wanted is None or key not in wanted:
            return "-"
        value = wanted[key]
        return f"{value} MiB" if key == "memory_mib" else shown_value(key, value)

    def text() -> list[str]:
        lines = [f"VM {ref.vm} ({ref.layout.name} layout), settings file {data['file']}"]
        if raw is None:
            lines.append(f"  no settings file: every setting stays as it is "
                         f"(wirt set {ref.vm} KEY=VALUE writes one)")
        elif problem:
            lines.append(f"  the file is refused by the rules: {problem}")
        lines.append("")
        lines += table([[key, wanted_value(key), applied_value(key)]
                        for key in settings_rules.KEYS],
                       ["SETTING", "WANTED (config)", "APPLIED (libvirt)"])
        lines.append("")
        if ref.layout.info is None:
            lines.append("applied: not reported in the legacy layout (no status.xml); "
                         f"see wirt log {ref.vm}")
        elif status is None:
            lines.append(f"applied: unknown: no pass has written the status yet "
                         f"(wirt refresh {ref.vm} --wait)")
        elif applied is None:
            lines.append("applied: not reported (this host's passes do not report settings)")
        else:
            lines.append("restart needed: " + (
                "yes (memory, vCPUs and boot order take effect at the next boot: "
                f"wirt reboot {ref.vm})" if applied.get("restart_needed") else "no"))
        if last:
            message = f": {last['message']}" if last.get("message") else ""
            lines.append(f"last config: {last.get('outcome', '?')}{message} "
                         f"({when(last.get('time', ''))})")
        elif ref.layout.info is not None:
            lines.append("last config: none yet")
        return lines

    out.emit(data, text)
    return EXIT_OK


def cmd_isos(home: Home, args: argparse.Namespace, out: Out) -> int:
    isos = home.isos()
    if isos is None:
        out.emit({"published": False, "isos": []}, lambda: [
            f"No ISO catalogue is published yet ({ISOS_SHOWN} does not exist): the admin "
            "sets settings.iso_dir, and a pass writes the list."])
        return EXIT_OK
    out.emit({"published": True, "isos": isos}, lambda: isos or [
        f"The catalogue is empty ({ISOS_SHOWN}): the admin has published no ISO."])
    return EXIT_OK


def run_user(args: argparse.Namespace, out: Out) -> int:
    if os.geteuid() == 0:
        raise NotAllowed("root has no spool: wirt serves the members of the group. "
                         "As root, use: wirt admin assign|unassign|run|audit|quota")
    home = Home()
    config = site_config(args.config)
    try:
        if args.command == "list":
            return cmd_list(home, args, out, config)
        if args.command == "status":
            return cmd_status(home, args, out, config)
        if args.command == "create":
            return cmd_create(home, args, out, config)
        if args.command == "cancel":
            return cmd_cancel(home, args, out)
        if args.command == "log":
            return cmd_log(home, args, out)
        if args.command == "history":
            return cmd_history(home, args, out)
        if args.command == "set":
            return cmd_set(home, args, out, config)
        if args.command == "settings":
            return cmd_settings(home, args, out, config)
        if args.command == "isos":
            return cmd_isos(home, args, out)
        if args.command == "snapshots":
            return cmd_snapshots(home, args, out)
        return cmd_action(home, args, out, config)
    finally:
        for message in dict.fromkeys(home.warnings):
            warn(message)


# The admin verbs run as root with virsh_wrapper's start-up guarantees (clean
# environment, isolated interpreter, code checked): a fresh interpreter, not this one.
ADMIN_MODULE = "wirt_wrapper.root.admin"


def admin_argv(argv: list[str]) -> list[str] | None:
    """The arguments for ``wirt admin`` (options before 'admin' kept), or None if not admin."""
    index = 0
    while index < len(argv) and argv[index].startswith("-"):
        takes_value = argv[index] in ("--vm", "--config", "--layout", "--host")
        index += 2 if takes_value else 1
    if index < len(argv) and argv[index] == "admin":
        return argv[:index] + argv[index + 1:]
    return None


def run_admin(forwarded: list[str]) -> int:
    if os.geteuid() != 0:
        raise NotAllowed("'wirt admin' is for the admin: run it as root "
                         "(sudo wirt admin assign|unassign|run|audit|quota ...)")
    argv = [sys.executable, "-I", "-m", ADMIN_MODULE, *forwarded]
    clean = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    sys.stdout.flush()
    os.execve(sys.executable, argv, clean)  # noqa: S606 - a fixed program, no shell


def show_help(parser: Parser, topic: str | None) -> int:
    """``wirt help [COMMAND]``: the same text as ``wirt [COMMAND] --help``."""
    if topic is None:
        parser.print_help()
        return EXIT_OK
    try:
        parser.parse_args([topic, "--help"])
    except SystemExit:  # argparse's --help prints, then exits 0
        pass
    return EXIT_OK


def without_host(argv: list[str]) -> list[str]:
    """The command line as given, minus ``--host HOST`` (the remote wirt gets the rest)."""
    left: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == "--host":
            skip = True
        elif not word.startswith("--host="):
            left.append(word)
    return left


def run_remote(host: str, args: argparse.Namespace, argv: list[str]) -> int:
    """``wirt --host HOST ...``: the same command run by wirt on HOST, over the user's ssh;
    for console, an ssh -L tunnel too; for screenshot -o FILE, the PNG comes back here."""
    reach.check_host(host)
    action = lookup_action(args.action) if args.command == "action" else None
    if action is not None and action.output == CONSOLE_FILE:
        return remote_console(host, args, argv)
    if action is not None and action.output == SCREEN_FILE and args.output \
            and args.output != "-":
        local = args.output
        argv = [*argv, "--output=-"]  # the last -o wins: the PNG comes back on stdout
        proc = reach.remote(host, argv, capture=True)
        if proc.returncode == 0:
            with open(local, "wb") as handle:
                handle.write(proc.stdout)
            size = reach.png_size(proc.stdout)
            shown_size = f"{size[0]}x{size[1]}" if size else "?"
            print(f"{args.vm_arg or args.vm or ''}: screenshot: {shown_size} from {host}, "
                  f"saved as {local}".lstrip(": "))
        return proc.returncode
    return reach.remote(host, argv).returncode


def remote_console(host: str, args: argparse.Namespace, argv: list[str]) -> int:
    proc = reach.remote(host, [*argv, "--json"] if not args.json else argv, capture=True)
    if proc.returncode != 0:
        return proc.returncode
    try:
        data = json.loads(proc.stdout)
        console = check_console(data["console"])
    except (ValueError, KeyError, TypeError, ProtocolError) as exc:
        why = f": {exc}" if isinstance(exc, ProtocolError) else ""
        raise CliError(f"wirt on {host} did not answer with a console{why}") from None
    tunnel, port = reach.tunnel_console(host, console)
    local = {**console, "host": "127.0.0.1", "port": port}
    try:
        if args.json:
            reach.print_json({**data, "tunnel": {"host": "127.0.0.1", "port": port}})
        else:
            for line in reach.console_lines(data["vm"], local, f" (tunnel to {host})"):
                print(shown(line))
            sys.stdout.flush()
        if reach.start_viewer(local["type"], "127.0.0.1", port, local["password"]) is None:
            print("the tunnel stays open until you press Ctrl-C", file=sys.stderr)
            tunnel.wait()
    except KeyboardInterrupt:
        pass
    finally:
        tunnel.terminate()
        tunnel.wait()
    return EXIT_OK


def check_options(args: argparse.Namespace) -> None:
    """Options that would do nothing here are refused, not ignored."""
    if getattr(args, "timeout", None) is not None and not getattr(args, "wait", False):
        raise UsageError("--timeout only counts with --wait (it says how long to wait); "
                         "add --wait, or leave --timeout out")


def main(argv: list[str] | None = None) -> int:
    try:
        forwarded = admin_argv(sys.argv[1:] if argv is None else argv)
        if forwarded is not None:
            return run_admin(forwarded)
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        command = getattr(args, "subcommand", args.command)  # refresh, not status
        if extra:  # named after the subcommand, whose help lists what it takes
            raise UsageError(f"{command}: unrecognized arguments: {' '.join(extra)} "
                             f"(see wirt {command} --help)")
        if args.command == "help":
            return show_help(parser, args.topic)
        try:
            check_options(args)
            host = args.host
            if host is None and os.geteuid() != 0:
                host = default_host(Home())
            if host:
                return run_remote(host, args,
                                  without_host(sys.argv[1:] if argv is None else argv))
            return run_user(args, Out(args.json))
        except UsageError as exc:  # every usage error points at the help that would help
            if "--help" in str(exc):
                raise
            raise UsageError(f"{exc} (see wirt {command} --help)") from None
    except CliError as exc:
        print(f"wirt: {shown(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:
        print(f"wirt: {exc}", file=sys.stderr)
        return CliError.exit_code


if __name__ == "__main__":
    sys.exit(main())
