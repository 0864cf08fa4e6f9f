"""Every executable's errors and exit codes: one hierarchy (pure data, no I/O).

Each class's docstring says what went wrong in general and the message says
what to do; each class carries its exit code.  Each executable has one
``main()`` that maps :class:`WirtError` to its message and code; nothing
else exits, and no code is written as a literal elsewhere.

A user's bad command file is *not* an error of the tool: it ends as a
``rejected`` outcome and the pass exits 0.

Exit status of ``virsh_wrapper`` (and ``wirt-migrate-legacy``):

====  ==========================================================================
0     the pass ran (user commands may have failed or been rejected)
1     internal error, or a user side broke its protocol
2     the configuration is unsafe or malformed
3     not run as root
4     the lock or root's state is unsafe
130   interrupted (Ctrl-C)
====  ==========================================================================

Exit status of ``wirt-migrate-legacy``: 0 everything moved (or nothing to
move), 1 something stays where it is (listed), 2 run as root.

Exit status of ``wirt`` (the user CLI), ``wirt admin`` and ``wirt-audit``:
:data:`CLI_EXITS`, the table their ``--help`` and the README print.  The
same kind of failure gets the same code in all three (``wirt-audit`` never
waits, so 1 to 5 are not its codes).
"""

from __future__ import annotations

__all__ = [
    "EXIT_AS_ROOT",
    "CLI_EXITS",
    "EXIT_BY_OUTCOME",
    "EXIT_CONFIG",
    "EXIT_DROP_FAILED",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_KEPT",
    "EXIT_LOCK",
    "EXIT_NOT_ROOT",
    "EXIT_OK",
    "EXIT_PENDING",
    "EXIT_TIMEOUT",
    "CliError",
    "ConfigError",
    "LockError",
    "NotAllowed",
    "NotFound",
    "NotRootError",
    "Pending",
    "ProtocolError",
    "SiteConfigError",
    "Unavailable",
    "UnsafeInstall",
    "UsageError",
    "WirtError",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_CONFIG = 2
EXIT_NOT_ROOT = 3
EXIT_LOCK = 4
EXIT_INTERRUPTED = 130  # the shell's 128 + SIGINT
# wirt --wait: the command's outcome is the exit status
EXIT_BY_OUTCOME = {"done": 0, "failed": 1, "rejected": 2, "interrupted": 3}
EXIT_TIMEOUT = 4
EXIT_PENDING = 5
EXIT_KEPT = 1  # wirt-migrate-legacy: some entries stay where they are
EXIT_AS_ROOT = 2  # wirt-migrate-legacy: run by root instead of the user
# a user side or helper whose privilege drop or identity switch failed (BSD EX_SOFTWARE)
EXIT_DROP_FAILED = 70

# wirt, wirt admin and wirt-audit: one code per kind of failure (BSD sysexits from 64 on);
# their --help lists these words, the README's table says more about each
CLI_EXITS: tuple[tuple[int, str], ...] = (
    (0, "success"),
    (1, "failed"),
    (2, "rejected"),
    (3, "interrupted"),
    (4, "no outcome in time"),
    (5, "already pending"),
    (64, "usage"),
    (66, "not found"),
    (69, "libvirt unreachable"),
    (70, "internal error"),
    (77, "not allowed"),
    (78, "config unsafe or malformed"),
)


class WirtError(Exception):
    """wirt failed; see the message."""

    exit_code = EXIT_INTERNAL


class NotRootError(WirtError):
    """virsh_wrapper must run as root (through sudo by the wrapper user, or by root)."""

    exit_code = EXIT_NOT_ROOT


class ConfigError(WirtError):
    """The configuration file is unsafe or malformed."""

    exit_code = EXIT_CONFIG


class UnsafeInstall(ConfigError):
    """The installed code or interpreter is unsafe (writable by others) or unusable."""


class LockError(WirtError):
    """The lock or a root state file is unsafe (not root's alone)."""

    exit_code = EXIT_LOCK


class ProtocolError(WirtError):
    """The unprivileged side sent a message outside the protocol."""


class CliError(WirtError):
    """wirt failed (internal error)."""

    exit_code = 70


class UsageError(CliError):
    """The command line is not valid."""

    exit_code = 64


class NotFound(CliError):
    """A VM folder or a spool does not exist."""

    exit_code = 66


class Unavailable(CliError):
    """A service wirt needs (libvirt) cannot be reached."""

    exit_code = 69


class NotAllowed(CliError):
    """wirt will not do this for you (group, unsafe path, privilege)."""

    exit_code = 77


class SiteConfigError(CliError):
    """The site config, or the installed code, is unsafe or malformed."""

    exit_code = 78


class Pending(CliError):
    """A command of that name is already waiting for the next pass."""

    exit_code = EXIT_PENDING
