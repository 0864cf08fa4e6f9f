"""The tool's own errors: one small hierarchy, each class carrying its exit code.

A user's bad command file is *not* an error of the tool: it ends as a
``rejected`` outcome and the pass exits 0.  These exceptions are for the
admin: the tool cannot run at all, or a user side broke its protocol.
``main()`` maps them to messages and exit codes; nothing leaks to cron.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EXIT_CONFIG",
    "EXIT_INTERNAL",
    "EXIT_NOT_ROOT",
    "EXIT_OK",
    "LockError",
    "NotRootError",
    "ProtocolError",
    "WirtError",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_CONFIG = 2
EXIT_NOT_ROOT = 3
EXIT_LOCK = 4


class WirtError(Exception):
    """wirt failed; see the message."""

    exit_code = EXIT_INTERNAL


class NotRootError(WirtError):
    """virsh_wrapper must run as root (through sudo by the wrapper user, or by root)."""

    exit_code = EXIT_NOT_ROOT


class ConfigError(WirtError):
    """The configuration file is unsafe or malformed."""

    exit_code = EXIT_CONFIG


class LockError(WirtError):
    """The lock file is unsafe (not a root-owned regular file)."""

    exit_code = EXIT_LOCK


class ProtocolError(WirtError):
    """The unprivileged side sent a message outside the protocol table."""
