"""Who may be served: group members, and PAM account management (runs as root).

Membership comes from the group database (supplementary members and users
whose primary group it is); root is never served.  Each member's account is
checked with ``pam_acct_mgmt`` every pass, as cron and atd do before they act
for a user: an expired or locked account is skipped.  One PAM transaction
serves the whole pass (``PAM_USER`` is set per member), through libpam's own
functions (``libpam.so.0``, bound here with ctypes: loading it starts no program);
the stack needs no authentication because no one is logging in.
"""

from __future__ import annotations

import ctypes
import functools
import grp
import pwd
from types import TracebackType

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


_SONAME = "libpam.so.0"  # the soname Linux-PAM installs, the one every PAM module links to

# The few constants of <security/_pam_types.h> the account check uses.
PAM_SUCCESS = 0
PAM_USER = 2
PAM_CONV_ERR = 19
PAM_SILENT = 0x8000

# int (*conv)(int num_msg, const struct pam_message **msg,
#             struct pam_response **resp, void *appdata_ptr)
_conv_func = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                              ctypes.c_void_p)


class _PamConv(ctypes.Structure):
    """``struct pam_conv``."""

    _fields_ = [("conv", _conv_func), ("appdata_ptr", ctypes.c_void_p)]


def _refuse(_n: int, _msg: object, _resp: object, _data: object) -> int:
    return PAM_CONV_ERR  # an account check never prompts


_no_conversation = _conv_func(_refuse)


@functools.cache
def _libpam() -> ctypes.CDLL:
    """libpam, loaded by its soname: the dynamic loader finds it (ld.so.cache), no program runs.

    (python-pam asks ``ctypes.util.find_library``, which runs ``ldconfig -p`` in a
    child of root: a root process should start no program for that, and the pass
    failed when that child was killed.)
    """
    try:
        lib = ctypes.CDLL(_SONAME)
    except OSError as exc:
        raise OSError(f"cannot load {_SONAME} (Linux-PAM) for the account check: {exc}") from None
    handle = ctypes.c_void_p  # pam_handle_t *, opaque
    for name, restype, argtypes in (
        ("pam_start", ctypes.c_int, [ctypes.c_char_p, ctypes.c_char_p,
                                     ctypes.POINTER(_PamConv), ctypes.POINTER(handle)]),
        ("pam_set_item", ctypes.c_int, [handle, ctypes.c_int, ctypes.c_void_p]),
        ("pam_acct_mgmt", ctypes.c_int, [handle, ctypes.c_int]),
        ("pam_strerror", ctypes.c_char_p, [handle, ctypes.c_int]),
        ("pam_end", ctypes.c_int, [handle, ctypes.c_int]),
    ):
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    return lib


class AccountChecker:
    """``problem(user)`` is None when PAM lets the account act now, else the reason."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.handle = ctypes.c_void_p()
        if not service:
            return
        self.lib = _libpam()
        conv = _PamConv(_no_conversation, None)
        self._conv = conv  # libpam keeps a pointer to it
        status = self.lib.pam_start(service.encode(), None, ctypes.byref(conv),
                                    ctypes.byref(self.handle))
        if status != PAM_SUCCESS:
            raise OSError(f"pam_start({service}) failed: status {status}")

    def problem(self, user: str) -> str | None:
        if not self.service:
            return None
        name = ctypes.c_char_p(user.encode())
        status = self.lib.pam_set_item(self.handle, PAM_USER, name)
        if status == PAM_SUCCESS:
            status = self.lib.pam_acct_mgmt(self.handle, PAM_SILENT)
        if status == PAM_SUCCESS:
            return None
        reason = self.lib.pam_strerror(self.handle, status) or b"unknown PAM error"
        return f"PAM ({self.service}): {reason.decode(errors='replace')}"

    def __enter__(self) -> AccountChecker:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.service:
            self.lib.pam_end(self.handle, PAM_SUCCESS)
