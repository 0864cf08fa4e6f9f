"""The ``wirt`` CLI's errors and its exit status table (pure data, no I/O).

Each class's docstring says what went wrong in general; the message says
what to do.  ``cli.main()`` maps them to exit codes; nothing else exits.

Exit status of ``wirt``:

====  ==========================================================================
0     success; with ``--wait``: the command's outcome was ``done``
1     ``--wait``: the outcome was ``failed`` (libvirt said no)
2     ``--wait``: the outcome was ``rejected`` (the command broke a rule)
3     ``--wait``: the outcome was ``interrupted`` (a pass died mid-command)
4     ``--wait``: timed out (the command stays pending, or has no outcome yet)
5     a command of that name is already pending for that VM; nothing written
64    usage: bad command line, unknown action, flag not accepted, bad VM name
66    not found: unknown VM, spool missing
69    libvirt unreachable (admin verbs)
70    internal error
77    not allowed: not in the group, unsafe path (link, foreign owner), admin
      verbs without root
====  ==========================================================================
"""

from __future__ import annotations

__all__ = [
    "EXIT_BY_OUTCOME",
    "EXIT_OK",
    "EXIT_PENDING",
    "EXIT_TIMEOUT",
    "CliError",
    "NotAllowed",
    "NotFound",
    "Pending",
    "Unavailable",
    "UsageError",
]

EXIT_OK = 0
EXIT_BY_OUTCOME = {"done": 0, "failed": 1, "rejected": 2, "interrupted": 3}
EXIT_TIMEOUT = 4
EXIT_PENDING = 5


class CliError(Exception):
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


class Pending(CliError):
    """A command of that name is already waiting for the next pass."""

    exit_code = EXIT_PENDING
