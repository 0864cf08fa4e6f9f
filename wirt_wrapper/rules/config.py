"""Reading and validating ``/etc/wirt/wirt.toml`` (runs as root).

The file decides which users are served and which libvirt is driven, so it
must be root-owned and writable by root alone, all the way up to ``/``.
Every key is optional; an unknown key or a value of the wrong type is an
error that names the key, so a typo never silently weakens a limit.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import stat
import string
import tomllib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wirt_wrapper.rules.errors import ConfigError
from wirt_wrapper.rules.settings import MIN_MEMORY_MIB

__all__ = ["Config", "ConsoleConfig", "HostConfig", "Limits", "MailConfig", "PassConfig",
           "QuotaConfig", "SettingsConfig", "SnapshotsConfig", "WatchConfig", "check_root_owned",
           "load_config", "DEFAULT_PATH"]

DEFAULT_PATH = "/etc/wirt/wirt.toml"
LAYOUT_NAMES = ("wirt", "legacy")


@dataclass(frozen=True)
class Limits:
    max_files_per_user: int = 100
    max_file_bytes: int = 4096
    seconds_per_user: float = 30.0
    libvirt_timeout: float = 60.0
    log_max_bytes: int = 1 << 20  # a user's log is rotated past this size
    log_keep: int = 3  # compressed generations kept: web.log.1.gz .. web.log.3.gz


@dataclass(frozen=True)
class MailConfig:
    enabled: bool = True
    sendmail: str = "/usr/sbin/sendmail"  # a command: path and options, run without a shell
    admin: str = "root"
    smtp_host: str = ""  # set: mail goes by SMTP to this host instead of sendmail
    smtp_port: int = 25
    domain: str = ""  # set: recipients are user@domain; else bare local names
    repeat_hours: float = 24.0  # the same problem is mailed at most once per this period

    def sendmail_argv(self) -> list[str]:
        return shlex.split(self.sendmail)


@dataclass(frozen=True)
class SettingsConfig:
    """The admin's limits on what a VM's settings file may ask (SPEC section 9)."""

    enabled: bool = True  # false: settings files are not applied
    max_memory_mib: int = 8192  # per VM
    max_vcpus: int = 4  # per VM
    iso_dir: str = ""  # the ISO catalogue folder; "" = no CD changes


@dataclass(frozen=True)
class QuotaConfig:
    """Per user, summed over every domain the user owns; 0 = no quota."""

    memory_mib: int = 0
    vcpus: int = 0


@dataclass(frozen=True)
class SnapshotsConfig:
    """How many snapshots made through wirt a user may keep (SPEC 11); 0 turns them off."""

    per_vm: int = 3  # per domain
    per_user: int = 10  # summed over the user's domains

    @property
    def enabled(self) -> bool:
        return self.per_vm > 0 and self.per_user > 0


@dataclass(frozen=True)
class PassConfig:
    """How often passes run (cron, or watch mode's safety net): ``wirt status`` calls a
    state stale when no pass confirmed it for twice this long."""

    interval_seconds: float = 120.0


@dataclass(frozen=True)
class HostConfig:
    """One ``[[hosts]]`` entry (SPEC section 13): a hypervisor host and its libvirt URI."""

    name: str
    uri: str


# The name of the one host when the config has ``uri`` and no ``[[hosts]]``.
SINGLE_HOST = "local"
HOST_NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@dataclass(frozen=True)
class WatchConfig:
    """``virsh_wrapper --watch`` (SPEC section 12)."""

    full_pass_seconds: float = 120.0  # the safety-net pass over everyone
    user_turns_per_second: float = 2.0  # per user; hints beyond it wait, never dropped


@dataclass(frozen=True)
class ConsoleConfig:
    """Reaching a VM's console (SPEC section 10)."""

    # a member's domain whose console has no password gets passwd='' in its definition
    lock: bool = True


@dataclass(frozen=True)
class Config:
    group: str = "vmguests"
    uri: str = "qemu:///system"
    hosts: tuple[HostConfig, ...] = ()  # [[hosts]]; empty: the one host "local" at uri
    layouts: tuple[str, ...] = ("wirt", "legacy")
    domain_name: str = "{user}-{vm}"
    pam_service: str = "wirt"
    audit_log: str = "/var/log/wirt/audit.log"
    lock_file: str = "/run/wirt/wirt.lock"
    state_dir: str = "/var/lib/wirt"
    syslog_socket: str = "/dev/log"  # "" turns syslog off
    limits: Limits = field(default_factory=Limits)
    mail: MailConfig = field(default_factory=MailConfig)
    settings: SettingsConfig = field(default_factory=SettingsConfig)
    quota: QuotaConfig = field(default_factory=QuotaConfig)
    snapshots: SnapshotsConfig = field(default_factory=SnapshotsConfig)
    passes: PassConfig = field(default_factory=PassConfig)  # the [pass] table
    watch: WatchConfig = field(default_factory=WatchConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    path: str = "(built-in defaults)"

    def host_list(self) -> tuple[HostConfig, ...]:
        """The hosts a pass drives: the ``[[hosts]]`` entries, or ``local`` at ``uri``."""
        return self.hosts or (HostConfig(SINGLE_HOST, self.uri),)


def _positive(key: str, value: Any, kind: type, *, zero_ok: bool = False) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    # TOML has nan and inf: neither is a usable limit (a nan deadline breaks select)
    if not isinstance(value, (int, float)) or not isinstance(value, kind) \
            or isinstance(value, bool) or not math.isfinite(value) or value < 0 \
            or (value == 0 and not zero_ok):
        sign = "non-negative" if zero_ok else "positive"
        raise ConfigError(f"{key}: must be a {sign} {kind.__name__}, got {value!r}")
    return value


def _string(key: str, value: Any, *, absolute: bool = False, empty_ok: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty_ok):
        kind = "string" if empty_ok else "non-empty string"
        raise ConfigError(f"{key}: must be a {kind}, got {value!r}")
    if absolute and not value.startswith("/"):
        raise ConfigError(f"{key}: must be an absolute path, got {value!r}")
    if any(ord(c) < 0x20 for c in value):
        raise ConfigError(f"{key}: contains a control character")
    return value


def _check_template(value: str) -> str:
    try:
        probe = value.format(user="u", vm="v")
        # the real fields, not the text: "{{user}}" is a literal, not a field
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(value)
                  if name is not None]
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ConfigError(f"domain_name: bad template {value!r} ({exc})") from None
    if sorted(fields) != [("user", "", None), ("vm", "", None)]:
        raise ConfigError("domain_name: must contain {user} and {vm} exactly once each "
                          "(plain fields, nothing else)")
    if "/" in probe:
        raise ConfigError("domain_name: a domain name cannot contain '/'")
    return value


def _sub_table(key: str, raw: Any, cls: type, kinds: dict[str, type],
               zero_ok: frozenset[str] = frozenset()) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{key}]: must be a table")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in kinds:
            raise ConfigError(f"{key}.{name}: unknown key (known: {', '.join(sorted(kinds))})")
        kind = kinds[name]
        full = f"{key}.{name}"
        if kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{full}: must be true or false, got {value!r}")
        elif kind is str:
            value = _string(full, value, empty_ok=True)
        else:
            value = _positive(full, value, kind, zero_ok=name in zero_ok)
        values[name] = value
    return cls(**values)


# Local user names, or a mailbox; never anything that could carry a second header.
MAIL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,63}(@[A-Za-z0-9][A-Za-z0-9.-]{0,252})?")
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:-]{0,252}")


def _check_mail(mail: MailConfig) -> MailConfig:
    try:
        argv = mail.sendmail_argv()
    except ValueError as exc:
        raise ConfigError(f"mail.sendmail: cannot be split into words ({exc})") from None
    if not argv or not argv[0].startswith("/"):
        raise ConfigError(f"mail.sendmail: must start with an absolute path, got {mail.sendmail!r}")
    if not MAIL_NAME.fullmatch(mail.admin):
        raise ConfigError(f"mail.admin: must be a user name or name@domain, got {mail.admin!r}")
    if mail.domain and not HOST_NAME.fullmatch(mail.domain):
        raise ConfigError(f"mail.domain: must be a domain name, got {mail.domain!r}")
    if mail.smtp_host and not HOST_NAME.fullmatch(mail.smtp_host):
        raise ConfigError(f"mail.smtp_host: must be a host name or address, got {mail.smtp_host!r}")
    if mail.smtp_port > 65535:
        raise ConfigError(f"mail.smtp_port: must be at most 65535, got {mail.smtp_port}")
    return mail


# Upper bounds: a limit is there to bound work and memory, so it is bounded too.
MAX_FILE_BYTES = 1 << 20  # a command file is read whole into memory
MAX_FILES_PER_USER = 100_000


def _check_limits(limits: Limits) -> Limits:
    if limits.log_keep > 99:
        raise ConfigError(f"limits.log_keep: must be at most 99, got {limits.log_keep}")
    if limits.max_file_bytes > MAX_FILE_BYTES:
        raise ConfigError(f"limits.max_file_bytes: must be at most {MAX_FILE_BYTES}, "
                          f"got {limits.max_file_bytes}")
    if limits.max_files_per_user > MAX_FILES_PER_USER:
        raise ConfigError(f"limits.max_files_per_user: must be at most {MAX_FILES_PER_USER}, "
                          f"got {limits.max_files_per_user}")
    return limits


# SPEC 9: a VM's memory is at least this (rules.settings.MIN_MEMORY_MIB), so a
# lower limit would refuse every value; the upper bounds are far past any host.
MAX_VM_MEMORY_MIB = 16 << 20  # 16 TiB
MAX_VM_VCPUS = 4096
MAX_QUOTA_MEMORY_MIB = 1 << 30  # 1 PiB, summed over a user's domains
MAX_QUOTA_VCPUS = 1 << 20
MAX_SNAPSHOTS = 1000  # per VM or per user: each one is a full memory image in the disk


def _at_most(key: str, value: int, bound: int) -> None:
    if value > bound:
        raise ConfigError(f"{key}: must be at most {bound}, got {value}")


def _check_settings(settings: SettingsConfig) -> SettingsConfig:
    if settings.max_memory_mib < MIN_MEMORY_MIB:
        raise ConfigError(f"settings.max_memory_mib: must be at least {MIN_MEMORY_MIB} "
                          f"(the smallest memory a VM may ask for), got {settings.max_memory_mib}")
    _at_most("settings.max_memory_mib", settings.max_memory_mib, MAX_VM_MEMORY_MIB)
    _at_most("settings.max_vcpus", settings.max_vcpus, MAX_VM_VCPUS)
    if settings.iso_dir:
        _string("settings.iso_dir", settings.iso_dir, absolute=True)
        # a path root opens and users read in isos.txt: no DEL or C1 controls either
        if any(unicodedata.category(c) == "Cc" for c in settings.iso_dir):
            raise ConfigError("settings.iso_dir: contains a control character")
    return settings


def _check_quota(quota: QuotaConfig) -> QuotaConfig:
    _at_most("quota.memory_mib", quota.memory_mib, MAX_QUOTA_MEMORY_MIB)
    _at_most("quota.vcpus", quota.vcpus, MAX_QUOTA_VCPUS)
    return quota


def _check_hosts(raw: Any) -> tuple[HostConfig, ...]:
    """``[[hosts]]``: a non-empty array of tables, each with a unique name and a URI."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError("hosts: must be one or more [[hosts]] tables, each with name and uri")
    hosts: list[HostConfig] = []
    for number, entry in enumerate(raw, 1):
        where = f"hosts[{number}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a table ([[hosts]]) with name and uri")
        for key in entry:
            if key not in ("name", "uri"):
                raise ConfigError(f"{where}.{key}: unknown key (known: name, uri)")
        for key in ("name", "uri"):
            if key not in entry:
                raise ConfigError(f"{where}.{key}: missing (every [[hosts]] entry has name "
                                  "and uri)")
        name = _string(f"{where}.name", entry["name"])
        if not HOST_NAME_RULE.fullmatch(name):
            raise ConfigError(f"{where}.name: must be 1 to 63 letters, digits, '_', '.', '-', "
                              f"starting with a letter or digit, got {name!r}")
        if any(h.name == name for h in hosts):
            raise ConfigError(f"{where}.name: {name!r} is the name of an earlier entry too; "
                              "host names are unique")
        uri = _string(f"{where}.uri", entry["uri"])
        if any(c.isspace() for c in uri) or "://" not in uri:
            raise ConfigError(f"{where}.uri: must be a libvirt URI such as "
                              f"qemu+ssh://wirt@node2/system, got {uri!r}")
        hosts.append(HostConfig(name, uri))
    return tuple(hosts)
# A turn rate past this is no limit at all; a full pass more often than this is a busy loop.
MAX_TURNS_PER_SECOND = 1000.0
MIN_FULL_PASS_SECONDS = 1.0


def _check_watch(watch: WatchConfig) -> WatchConfig:
    if watch.full_pass_seconds < MIN_FULL_PASS_SECONDS:
        raise ConfigError(f"watch.full_pass_seconds: must be at least {MIN_FULL_PASS_SECONDS:g}, "
                          f"got {watch.full_pass_seconds:g}")
    if watch.user_turns_per_second > MAX_TURNS_PER_SECOND:
        raise ConfigError(f"watch.user_turns_per_second: must be at most "
                          f"{MAX_TURNS_PER_SECOND:g}, got {watch.user_turns_per_second:g}")
    return watch


def parse_config(data: dict[str, Any], path: str) -> Config:
    """Build a Config from parsed TOML, naming the key of the first problem."""
    known = {
        "group", "uri", "hosts", "layouts", "domain_name", "pam_service", "audit_log",
        "lock_file", "state_dir", "syslog_socket", "limits", "mail", "settings", "quota",
        "snapshots",
        "pass",
        "watch",
        "console",
    }
    values: dict[str, Any] = {"path": path}
    if "uri" in data and "hosts" in data:
        raise ConfigError("uri: not together with [[hosts]]; give every host, this one too, "
                          "its own [[hosts]] entry with name and uri")
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{key}: unknown key (known: {', '.join(sorted(known))})")
        if key == "limits":
            kinds = {"max_files_per_user": int, "max_file_bytes": int,
                     "seconds_per_user": float, "libvirt_timeout": float,
                     "log_max_bytes": int, "log_keep": int}
            values[key] = _check_limits(_sub_table(key, value, Limits, kinds))
        elif key == "mail":
            kinds = {"enabled": bool, "sendmail": str, "admin": str, "smtp_host": str,
                     "smtp_port": int, "domain": str, "repeat_hours": float}
            values[key] = _check_mail(_sub_table(key, value, MailConfig, kinds))
        elif key == "settings":
            kinds = {"enabled": bool, "max_memory_mib": int, "max_vcpus": int, "iso_dir": str}
            values[key] = _check_settings(_sub_table(key, value, SettingsConfig, kinds))
        elif key == "quota":
            kinds = {"memory_mib": int, "vcpus": int}
            values[key] = _check_quota(_sub_table(key, value, QuotaConfig, kinds,
                                                  zero_ok=frozenset(kinds)))
        elif key == "snapshots":
            kinds = {"per_vm": int, "per_user": int}
            found = _sub_table(key, value, SnapshotsConfig, kinds, zero_ok=frozenset(kinds))
            _at_most("snapshots.per_vm", found.per_vm, MAX_SNAPSHOTS)
            _at_most("snapshots.per_user", found.per_user, MAX_SNAPSHOTS)
            values[key] = found
        elif key == "pass":  # a keyword in Python: the field is 'passes'
            values["passes"] = _sub_table(key, value, PassConfig, {"interval_seconds": float})
        elif key == "hosts":
            values[key] = _check_hosts(value)
        elif key == "watch":
            kinds = {"full_pass_seconds": float, "user_turns_per_second": float}
            values[key] = _check_watch(_sub_table(key, value, WatchConfig, kinds))
        elif key == "console":
            values[key] = _sub_table(key, value, ConsoleConfig, {"lock": bool})
        elif key == "layouts":
            if (not isinstance(value, list) or not value
                    or any(v not in LAYOUT_NAMES for v in value)):
                raise ConfigError(f"layouts: must be a non-empty list of {LAYOUT_NAMES}")
            values[key] = tuple(dict.fromkeys(value))
        elif key == "domain_name":
            values[key] = _check_template(_string(key, value))
        elif key in ("audit_log", "lock_file", "state_dir"):
            values[key] = _string(key, value, absolute=True)
        elif key == "pam_service":
            values[key] = _string(key, value, empty_ok=True)
        elif key == "syslog_socket":
            values[key] = _string(key, value, absolute=bool(value), empty_ok=True)
        else:
            values[key] = _string(key, value)
    return Config(**values)


def check_root_owned(path: str, what: str) -> str:
    """Refuse *path* unless it and every folder above it are root's alone.

    Root-owned sticky folders (``/tmp``) are accepted: nobody else can rename
    or replace root's entries in them.  Returns the resolved path that was
    checked: open that one, not *path*, whose links someone else may retarget.
    """
    current = Path(os.path.realpath(path))
    for item in (current, *current.parents):
        try:
            st = os.stat(item)
        except OSError as exc:
            raise ConfigError(f"{what} {path}: cannot check {item}: {exc.strerror}") from None
        if st.st_uid != 0:
            raise ConfigError(f"{what} {path}: {item} is owned by uid {st.st_uid}, not root")
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        sticky = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        if writable and not sticky:
            raise ConfigError(f"{what} {path}: {item} is writable by group or others")
    return str(current)


def load_config(path: str | None) -> Config:
    """Load the config at *path* (default file, or built-in defaults when it is absent)."""
    explicit = path is not None
    path = path or DEFAULT_PATH
    if not explicit and not os.path.lexists(path):
        return Config()
    checked = check_root_owned(path, "config file")
    try:
        with open(checked, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    return parse_config(data, path)
