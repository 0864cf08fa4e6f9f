"""Who may be served: group members, and PAM account management (runs as root).

Membership comes from the group database (supplementary members and users
whose primary group it is); root is never served.  Each member's account is
checked with ``pam_acct_mgmt`` every pass, as cron and atd do before they act
for a user: an expired or locked account is skipped.  One PAM transaction
serves the whole pass (``PAM_USER`` is set per member), through python-pam's
libpam bindings; the stack needs no authentication because no one is logging in.

python-pam finds its libraries with ``ctypes.util.find_library``, which runs
``ldconfig -p`` in a child process: root starts no program for that (the pass
failed when that child was killed), so the libraries are named by their
sonames here and the dynamic loader finds them (ld.so.cache).
"""

from __future__ import annotations

import ctypes
import grp
import pwd
from types import TracebackType

from pam import __internals as pam_lib

# The sonames Linux-PAM installs (the ones every PAM module links to).
SONAMES = {"pam": "libpam.so.0", "pam_misc": "libpam_misc.so.0"}

__all__ = ["AccountChecker", "group_lists", "members"]


def members(group: str) -> list[pwd.struct_passwd]:
    """Members of *group*, supplementary and primary, sorted by name; never root."""
    entry = grp.getgrnam(group)
    listed = set(entry.gr_mem)
    found = {p.pw_name: p for p in pwd.getpwall()
             if (p.pw_name in listed or p.pw_gid == entry.gr_gid) and p.pw_uid != 0}
    return [found[name] for name in sorted(found)]


def group_lists(users: list[pwd.struct_passwd]) -> dict[str, tuple[int, ...]]:
    """Each user's groups (primary first), from one read of the group database."""
    extra: dict[str, list[int]] = {u.pw_name: [] for u in users}
    for entry in grp.getgrall():
        for name in entry.gr_mem:
            if name in extra:
                extra[name].append(entry.gr_gid)
    return {u.pw_name: tuple(dict.fromkeys([u.pw_gid, *extra[u.pw_name]])) for u in users}


def _refuse(_n: int, _msg: object, _resp: object, _data: object) -> int:
    return int(pam_lib.PAM_CONV_ERR)  # an account check never prompts


_no_conversation = pam_lib.conv_func(_refuse)


class AccountChecker:
    """``problem(user)`` is None when PAM lets the account act now, else the reason."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.handle = pam_lib.PamHandle()
        self.lib = pam_lib.PamAuthenticator
        if not service:
            return
        pam_lib.find_library = SONAMES.get  # name them: no ldconfig child of root
        self.lib._ensure_libs()
        conv = pam_lib.PamConv(_no_conversation, None)
        self._conv = conv  # libpam keeps a pointer to it
        status = self.lib.pam_start(service.encode(), None, ctypes.byref(conv),
                                    ctypes.byref(self.handle))
        if status != pam_lib.PAM_SUCCESS:
            raise OSError(f"pam_start({service}) failed: status {status}")

    def problem(self, user: str) -> str | None:
        if not self.service:
            return None
        name = ctypes.c_char_p(user.encode())
        status = self.lib.pam_set_item(self.handle, pam_lib.PAM_USER, name)
        if status == pam_lib.PAM_SUCCESS:
            status = self.lib.pam_acct_mgmt(self.handle, pam_lib.PAM_SILENT)
        if status == pam_lib.PAM_SUCCESS:
            return None
        reason = self.lib.pam_strerror(self.handle, status) or b"unknown PAM error"
        return f"PAM ({self.service}): {reason.decode(errors='replace')}"

    def __enter__(self) -> AccountChecker:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.service:
            self.lib.pam_end(self.handle, pam_lib.PAM_SUCCESS)
