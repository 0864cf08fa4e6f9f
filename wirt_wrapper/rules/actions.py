"""The one table of actions, and the closed grammar of everything a user may write.

Pure functions, no I/O, no privilege.  The user side parses a command file
with :func:`parse_command`; the privileged side re-validates the result with
the same function before it calls libvirt.  Adding an action is one row in
:data:`ACTIONS`.  No accepted token can ever name a domain, a path or a URI:
options are fixed words, and option values come from fixed lists or are names
held to a strict pattern (:class:`Value`: a snapshot's name).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "ACTIONS",
    "CONSOLE_FILE",
    "DEFAULT_MINUTES",
    "MINUTES",
    "SCREEN_FILE",
    "SERIAL_FILE",
    "Action",
    "Call",
    "Claimants",
    "Command",
    "Option",
    "Rejection",
    "SNAPSHOT_NAME",
    "SnapshotCall",
    "Value",
    "VM_NAME",
    "asked",
    "ambiguous_domain",
    "canonical",
    "check_vm_name",
    "domain_for",
    "folder_domain",
    "lookup_action",
    "no_domain",
    "on_a_host_down",
    "owner_problem",
    "owns",
    "parse_command",
    "parse_params",
    "printable",
    "settled",
    "with_defaults",
]

VM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
BLANKS = re.compile(r"[ \t]+")


class Rejection(Exception):
    """A user's input broke a rule; the message says which token and which rule."""


@dataclass(frozen=True)
class Value:
    """A kind of option value held to a strict pattern: never a path, a URI or a domain."""

    what: str  # the metavar: NAME
    pattern: re.Pattern[str]
    rule: str  # the pattern in words, for a refusal

    def check(self, option: str, value: str) -> str:
        if not self.pattern.fullmatch(value):
            raise Rejection(f"token '{_show(value)}' is not a valid value of '{option}' "
                            f"({self.rule}); choose another {self.what}")
        return value


# SPEC 11: a snapshot's name
SNAPSHOT_NAME = Value("NAME", re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}"),
                      "a snapshot name: letters, digits, '_', '.', '-'; starts with a letter "
                      "or digit; at most 32")


@dataclass(frozen=True)
class Option:
    """``--name`` alone (a flag), ``--name VALUE`` with VALUE from a fixed list, or
    ``--name VALUE`` with VALUE of a :class:`Value` kind (*value*).

    *help* says what it does: the one text that ``wirt``'s help, the README's
    action table and its tests use.  *required*: the action cannot run without
    it.  *default*: a ``strftime`` format (UTC) that root fills in when the option
    is not given, once, when it records the command (so a command's value never
    changes after that).
    """

    name: str
    values: tuple[str, ...] = ()
    help: str = ""
    value: Value | None = None
    required: bool = False
    default: str = ""

    @property
    def takes_value(self) -> bool:
        return bool(self.values) or self.value is not None

    def form(self) -> str:
        """How it is written: ``--paused``, ``--mode acpi|agent``, ``--name NAME``."""
        if self.value is not None:
            return f"{self.name} {self.value.what}"
        return f"{self.name} {'|'.join(self.values)}" if self.values else self.name


Params = Mapping[str, str]


@dataclass(frozen=True)
class Call:
    """The libvirt call of an action, as data: a ``virDomain`` method and its argument.

    *flags* names the libvirt constants (``VIR_...``) to OR together for the
    parameters given; *value* gives a plain integer argument instead; with
    neither, the method takes no argument.  Root resolves the names in
    libvirt (the rules never load it).
    """

    method: str
    flags: Callable[[Params], tuple[str, ...]] | None = None
    value: Callable[[Params], int] | None = None

    def invoke(self, dom: Any, params: Params, constants: Any) -> object:
        method = getattr(dom, self.method)
        if self.flags is not None:
            mask = 0
            for name in self.flags(params):
                mask |= int(getattr(constants, name))
            return method(mask)
        if self.value is not None:
            return method(self.value(params))
        return method()


@dataclass(frozen=True)
class SnapshotCall:
    """A snapshot action (SPEC 11): *op* is ``create``, ``revert`` or ``delete``.

    Not a plain :class:`Call`: root checks the disks, the quotas and who made the
    snapshot on the libvirt thread first (``Hypervisor.snapshot``).
    """

    op: str


def _given(*pairs: tuple[str, str]) -> Callable[[Params], tuple[str, ...]]:
    """Flags for options: ``("--paused", "VIR_DOMAIN_START_PAUSED"), ...``."""
    return lambda params: tuple(flag for option, flag in pairs if option in params)


def _mode_flag(acpi: str, agent: str) -> Callable[[Params], tuple[str, ...]]:
    """The flag for ``--mode acpi|agent``; none: libvirt chooses."""
    return lambda params: {"acpi": (acpi,), "agent": (agent,)}.get(params.get("--mode", ""), ())


@dataclass(frozen=True)
class Action:
    name: str
    aliases: tuple[str, ...]
    options: tuple[Option, ...]
    call: Call | SnapshotCall | None  # None: no libvirt effect, only a status refresh
    summary: str
    # what the call can change, so that only that is read back for status.xml:
    # "state", "autostart", "devices" (the live XML: console port, memory, ...)
    touches: frozenset[str] = frozenset({"state", "devices"})
    # what a call that succeeded is known to have set (no need to ask libvirt)
    sets: Callable[[Params], dict[str, bool]] | None = None
    # the request only asks the guest (SPEC 3): what it is asked to do ("power off"); the
    # state that shows it did, which `wirt ACTION --wait` waits for (see settled); the
    # action that forces it when the guest does not comply, and what that does
    asks: str = ""
    settles_in: str | None = None
    settles_later: bool = False  # the state must be read by a later pass than the request's
    forced_by: tuple[str, str] = ("", "")
    # the file the action produces in the VM's info folder (SPEC 10), written by the
    # user side from root's answer; "" for none.  Such an action has no plain Call.
    output: str = ""
    # the console lock (SPEC 10) is applied to the definition before the call
    locks: bool = False

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def usage(self) -> str:
        if not self.options:
            return "takes no parameters"
        forms = [o.form() + (" (optional)" if o.value and not o.required else "")
                 for o in self.options]
        return "accepted: " + ", ".join(forms)


_MODE = Option("--mode", ("acpi", "agent"),
               "how to ask the guest: acpi presses its ACPI power button, agent asks the "
               "QEMU guest agent in it; left out, libvirt chooses")


_STATE = frozenset({"state"})
_SNAP_NAME = Option("--name", help="which of your snapshots (wirt snapshots VM lists them)",
                    value=SNAPSHOT_NAME, required=True)

# What the SPEC 10 actions produce, in ~/wirt/info/vm/<vm>/ (written as the user).
CONSOLE_FILE, SCREEN_FILE, SERIAL_FILE = "console.json", "screen.png", "serial.log"
MINUTES = ("5", "15", "60", "240")  # --minutes: how long a console password is valid
DEFAULT_MINUTES = "15"

# fmt: off
ACTIONS: tuple[Action, ...] = (
    Action("start", (),
           (Option("--paused", help="start with the vCPUs paused; wirt resume continues"),
            Option("--force-boot", help="boot afresh even if libvirt holds a saved state "
                   "of the VM (managed save), which is then discarded")),
           Call("createWithFlags", _given(("--paused", "VIR_DOMAIN_START_PAUSED"),
                                          ("--force-boot", "VIR_DOMAIN_START_FORCE_BOOT"))),
           "boot the VM", locks=True),
    Action("shutdown", ("stop",), (_MODE,),
           Call("shutdownFlags", _mode_flag("VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN",
                                            "VIR_DOMAIN_SHUTDOWN_GUEST_AGENT")),
           "ask the guest to power off", asks="power off", settles_in="shut off",
           forced_by=("destroy", "forces it off")),
    Action("destroy", ("kill",),
           (Option("--graceful", help="end QEMU with SIGTERM only, so it can flush its disk "
                   "writes; never SIGKILL (fails if QEMU does not end)"),),
           Call("destroyFlags", _given(("--graceful", "VIR_DOMAIN_DESTROY_GRACEFUL"))),
           "hard power-off"),
    Action("reboot", (), (_MODE,),
           Call("reboot", _mode_flag("VIR_DOMAIN_REBOOT_ACPI_POWER_BTN",
                                     "VIR_DOMAIN_REBOOT_GUEST_AGENT")),
           "ask the guest to reboot", _STATE, asks="reboot", settles_in="running",
           settles_later=True, forced_by=("reset", "resets it hard")),
    Action("reset", (), (), Call("reset", value=lambda p: 0), "hard reset", _STATE),
    Action("suspend", (), (), Call("suspend"), "pause the vCPUs", _STATE),
    Action("resume", (), (), Call("resume"), "continue the paused vCPUs", _STATE),
    Action("autostart", (),
           (Option("--disable", help="do not start the VM when the host boots (clears "
                   "autostart)"),),
           Call("setAutostart", value=lambda p: 0 if "--disable" in p else 1),
           "start the VM when the host boots", frozenset(),
           lambda p: {"autostart": "--disable" not in p}),
    Action("status", (), (), None, "refresh status.xml now",
           frozenset({"state", "autostart", "devices"})),
    Action("snapshot", (),
           (Option("--name", help="the new snapshot's name; left out: snap-YYYYmmdd-HHMMSS (UTC)",
                   value=SNAPSHOT_NAME, default="snap-%Y%m%d-%H%M%S"),),
           SnapshotCall("create"),
           "take an internal snapshot (a running VM's with its memory)"),
    Action("revert", (), (_SNAP_NAME,), SnapshotCall("revert"),
           "go back to one of your snapshots, in the state it was taken in"),
    Action("snapshot-delete", (), (_SNAP_NAME,), SnapshotCall("delete"),
           "delete one of your snapshots"),
    Action("console", (),
           (Option("--minutes", MINUTES, "how long the new password stays valid, in minutes "
                   "(left out: 15); the console refuses it after that"),), None,
           "a fresh console password, valid 15 minutes or --minutes, in console.json",
           output=CONSOLE_FILE, locks=True),
    Action("screenshot", (), (), None, "the running VM's screen as screen.png", frozenset(),
           output=SCREEN_FILE),
    Action("serial", (), (), None, "the last 64 KiB of the serial console log as serial.log",
           frozenset(), output=SERIAL_FILE),
)
# fmt: on

_BY_NAME: dict[str, Action] = {n: a for a in ACTIONS for n in (a.name, *a.aliases)}


def lookup_action(file_name: str) -> Action:
    """The action a command file's name asks for, or a Rejection naming it."""
    action = _BY_NAME.get(file_name)
    if action is None:
        known = ", ".join(sorted(_BY_NAME))
        close = difflib.get_close_matches(file_name, list(_BY_NAME), n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise Rejection(f"'{_show(file_name)}' is not an action (known: {known}); "
                        f"{hint}name the file after one of them")
    return action


def asked(action: Action, state: str | None) -> str:
    """The message of a ``done`` request that only asks the guest (SPEC 3): libvirt
    delivered it, and the state read back right after, e.g. "asked the guest to power
    off; it is still running".  The one wording, used by the pass (and read by ``wirt``)."""
    if state is None:
        return f"asked the guest to {action.asks}; its state could not be read back"
    still = "still " if state == "running" and action.settles_in != "running" else ""
    return f"asked the guest to {action.asks}; it is {still}{state}"


def settled(action: Action, state: str, read_later: bool) -> bool:
    """Whether *state* shows that the guest did what *action* asked: ``shutdown``: shut off;
    ``reboot``: running, read by a pass after the one that asked (*read_later*): a reboot
    inside QEMU shows libvirt no other state, so "running again" is all wirt can see."""
    if action.settles_in is None or state != action.settles_in:
        return False
    return read_later or not action.settles_later


def printable(text: str, limit: int = 255) -> str:
    """User-controlled text made safe for a log line, a mail, syslog or status.xml:
    one line of printable ASCII (everything else escaped), cut at *limit*."""
    return _show(text, limit)


def _show(text: str, limit: int = 40) -> str:
    """A token made safe to quote in a log line: ASCII, printable, short."""
    if text.isascii() and text.isprintable():  # the usual case: nothing to escape
        safe = text
    else:
        safe = text.encode("ascii", "backslashreplace").decode("ascii")
        safe = "".join(c if 0x20 <= ord(c) < 0x7F else f"\\x{ord(c):02x}" for c in safe)
    return safe if len(safe) <= limit else safe[:limit] + "..."


def parse_params(action: Action, tokens: Iterable[str]) -> dict[str, str]:
    """Validate *tokens* against *action*'s grammar; returns ``{option: value}``.

    A flag maps to ``""``.  Both ``--mode acpi`` and ``--mode=acpi`` are accepted.
    """
    params: dict[str, str] = {}
    pending = list(tokens)
    pending.reverse()
    while pending:
        token = pending.pop()
        name, eq, value = token.partition("=")
        option = action.option(name) if name.startswith("--") else None
        if option is None:
            fix = "write only those" if action.options else "leave the file empty"
            raise Rejection(
                f"token '{_show(token)}' is not accepted by '{action.name}' ({action.usage()}); "
                f"{fix}"
            )
        if name in params:
            raise Rejection(f"token '{_show(name)}' is given twice; give it once")
        if option.value is not None:
            if not eq:
                if not pending:
                    raise Rejection(f"'{name}' needs a value: {option.value.rule}")
                value = pending.pop()
            option.value.check(name, value)
        elif option.values:
            if not eq:
                if not pending:
                    raise Rejection(f"'{name}' needs a value: one of {', '.join(option.values)} "
                                    f"(for example '{name} {option.values[0]}')")
                value = pending.pop()
            if value not in option.values:
                raise Rejection(
                    f"token '{_show(value)}' is not a value of '{name}' "
                    f"(one of {', '.join(option.values)})"
                )
        elif eq:
            raise Rejection(f"token '{_show(token)}': '{name}' takes no value; "
                            f"write '{name}' alone")
        params[name] = value if option.takes_value else ""
    for option in action.options:
        if option.required and option.name not in params:
            raise Rejection(f"'{action.name}' needs '{option.form()}' "
                            f"({option.value.rule if option.value else 'required'}); "
                            f"write for example '{option.name} before-upgrade'")
    return params


def with_defaults(action: Action, params: Params, now_utc: datetime) -> dict[str, str]:
    """*params* with each option's default filled in (root does it once, when it records
    the command): ``snapshot`` without ``--name`` gets ``snap-YYYYmmdd-HHMMSS``."""
    filled = dict(params)
    for option in action.options:
        if option.default and option.name not in filled:
            filled[option.name] = now_utc.strftime(option.default)
    return filled


def _check_text(content: bytes, max_bytes: int) -> str:
    if len(content) > max_bytes:
        raise Rejection(f"the file has more than {max_bytes} bytes (the limit); "
                        "a command file holds one short line of parameters")
    if b"\0" in content:
        raise Rejection(f"a NUL byte at position {content.index(0)}; "
                        "write the parameters as plain text")
    # a trailing newline (LF or CRLF) and trailing blank lines are fine (SPEC 3)
    content = content.rstrip(b" \t\r\n")
    if b"\n" in content or b"\r" in content:
        raise Rejection("more than one line (a command file holds at most one line); "
                        "write one file per command, its parameters on one line")
    for index, byte in enumerate(content):
        if not (0x20 <= byte < 0x7F or byte == 0x09):
            raise Rejection(
                f"byte 0x{byte:02x} at position {index} is not printable ASCII; "
                "write the parameters in plain ASCII"
            )
    return content.decode("ascii")


@dataclass(frozen=True)
class Command:
    """A validated request: action and canonical parameters."""

    action: Action
    params: dict[str, str]

    def tokens(self) -> list[str]:
        return canonical(self.params)


def canonical(params: Params) -> list[str]:
    """Parameters in one canonical token list, the same on both sides of the boundary."""
    tokens: list[str] = []
    for name, value in sorted(params.items()):
        tokens += [name, value] if value else [name]
    return tokens


def parse_command(file_name: str, content: bytes, max_bytes: int) -> Command:
    """Judge one command file: its name and its content, nothing else."""
    action = lookup_action(file_name)
    text = _check_text(content, max_bytes)
    tokens = [t for t in BLANKS.split(text) if t]
    return Command(action, parse_params(action, tokens))


def no_domain(domain: str) -> str:
    """The words for a VM folder whose domain does not exist."""
    return (f"there is no domain named '{domain}'; check the VM folder's name, "
            "or ask the admin to create the VM")


def ambiguous_domain(domain: str, hosts: list[str]) -> str:
    """The words for a domain defined on more than one host (SPEC 13): nothing is run."""
    listed = ", ".join(hosts[:-1]) + f" and {hosts[-1]}"
    return (f"the domain '{domain}' is defined on the hosts {listed}; wirt drives a domain "
            "only when exactly one host has it: ask the admin to remove all but one")


def on_a_host_down(domain: str, down: dict[str, str]) -> str:
    """The words for a domain on no reachable host while some host is down (SPEC 13)."""
    names = ", ".join(sorted(down))
    return (f"the domain '{domain}' is on none of the reachable hosts, and host "
            f"{names} cannot be reached ({'; '.join(down[n] for n in sorted(down))}): it may "
            "be there, so its commands wait for the next pass")


def check_vm_name(name: str) -> str:
    if not VM_NAME.fullmatch(name):
        raise Rejection(
            f"VM folder name '{_show(name)}' is not allowed "
            "(letters, digits, '_', '.', '-'; starts with a letter or digit; at most 63); "
            "rename the folder"
        )
    return name


def domain_for(template: str, user: str, vm: str) -> str:
    return template.format(user=user, vm=check_vm_name(vm))


class Claimants:
    """Which members' VM folders would name a given domain (SPEC section 4 collisions).

    Built once per pass from the member list; a lookup costs the length of the
    domain name, not the number of members.
    """

    def __init__(self, template: str, members: Iterable[str]) -> None:
        self._by_prefix: dict[str, list[tuple[str, str]]] = {}
        for member in members:
            prefix, _, suffix = template.format(user=member, vm="\0").partition("\0")
            self._by_prefix.setdefault(prefix, []).append((member, suffix))

    def find(self, domain: str, *, besides: str = "") -> list[tuple[str, str]]:
        """Every (member, vm) whose folder would name *domain*, except member *besides*."""
        found = []
        for cut in range(len(domain) + 1):
            for member, suffix in self._by_prefix.get(domain[:cut], ()):
                if member == besides or not domain.endswith(suffix):
                    continue
                vm = domain[cut : len(domain) - len(suffix)]
                if len(domain) >= cut + len(suffix) and VM_NAME.fullmatch(vm):
                    found.append((member, vm))
        return found


def owns(user: str, domain: str, meta_owner: str | None, claimants: Claimants) -> bool:
    """Whether *domain* is *user*'s: named so in its owner metadata, or (without any) named
    by one of the user's VM folders and by no other member's (what quotas sum over)."""
    if meta_owner is not None:
        return meta_owner == user
    found = claimants.find(domain)
    return bool(found) and all(member == user for member, _ in found)


def owner_problem(user: str, domain: str, meta_owner: str | None,
                  others: list[tuple[str, str]], *, vm: str | None = None,
                  meta_vm: str | None = None, by_name: bool = True) -> str | None:
    """Why *user* may not drive *domain*, or None if they may (SPEC section 4).

    *others* are the other members whose VM folder would name the same domain.
    *vm* is the user's VM folder that asks, *meta_vm* the folder the owner metadata
    names (``<wirt:owner vm="box">``), and *by_name* whether the folder reaches the
    domain by its name (``domain_name``) rather than through the owner index: a
    domain reached through the index must still name this user and folder in its
    metadata, read fresh, so a stale index never hands anyone a domain.
    """
    if meta_owner is not None:
        if meta_owner != user:
            return (f"domain '{domain}' is assigned to another user (libvirt owner "
                    "metadata); you can drive only your own VMs: ask the admin if this one "
                    "should be yours")
        if vm is not None and meta_vm is not None and meta_vm != vm:
            return (f"domain '{domain}' is assigned to your VM folder '{meta_vm}' (libvirt "
                    f"owner metadata), not to '{vm}': send the command from '{meta_vm}'")
        if vm is not None and meta_vm is None and not by_name:
            return (f"domain '{domain}' is no longer assigned to your VM folder '{vm}' "
                    "(its owner metadata names no folder now); ask the admin to assign it "
                    f"again: wirt admin assign {domain} {user} --as {vm}")
        return None
    if not by_name:
        return (f"domain '{domain}' is not assigned to you (it has no owner metadata now); "
                "ask the admin if this one should be yours")
    if others:
        who = ", ".join(f"user '{u}' VM '{v}'" for u, v in others)
        return (
            f"domain name '{domain}' is ambiguous: it could also be {who}; "
            "ask the admin to assign it to you (owner metadata)"
        )
    return None


def folder_domain(user: str, vm: str, template: str, claimed: Iterable[str],
                  named_exists: bool, named_claim: tuple[str, str | None] | None
                  ) -> tuple[str, str | None]:
    """The domain *user*'s VM folder *vm* drives, and why it cannot (None if it can).

    *claimed*: the domains whose owner metadata says (*user*, *vm*) (the owner
    index); *named_exists*: whether the domain named per *template* exists, and
    *named_claim*: what its owner metadata says ((owner, folder) or None).  A
    domain assigned to the folder wins; the named one competes with it unless its
    metadata gives it to someone else or to another folder: two candidates are
    ambiguous, and both are named.
    """
    named = domain_for(template, user, vm)
    found = sorted(set(claimed))
    if len(found) > 1:
        listed = ", ".join(f"'{d}'" for d in found)
        return found[0], (f"VM folder '{vm}' is ambiguous: the domains {listed} are all "
                          f"assigned to {user}'s folder '{vm}' (libvirt owner metadata); ask "
                          "the admin to assign only one of them to it")
    if not found:
        return named, None
    competes = named_exists and named_claim in (None, (user, None))
    if competes and found[0] != named:
        return found[0], (f"VM folder '{vm}' is ambiguous: the domain '{found[0]}' is "
                          f"assigned to it (libvirt owner metadata) and the domain '{named}' "
                          f"is named for it; ask the admin to assign '{named}' to another "
                          f"folder (wirt admin assign {named} {user} --as OTHER) or to "
                          "rename one")
    return found[0], None
