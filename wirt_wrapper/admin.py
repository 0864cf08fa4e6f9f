"""``wirt admin``: the admin's verbs (runs as root; refuses anyone else).

* ``assign DOMAIN USER`` / ``unassign DOMAIN``: write or remove the owner
  metadata (SPEC section 4) in the domain's persistent and live definitions
  through libvirt-python, then read it back the way the pass does
  (:func:`hypervisor._parse_xml`);
* ``run``: a pass now, by exec'ing the installed ``virsh_wrapper --verbose``;
* ``audit USER``: that user's records in the audit log (all events, rotated
  generations too), through ``wirt-audit``'s reader, which escapes every value.

Trusts: root-owned code and config (checked as ``virsh_wrapper`` checks them),
and root's own command line.  User names are checked against the password
database before they are written into a domain.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
from typing import Any
from xml.sax.saxutils import escape

from .clierrors import EXIT_OK, CliError, NotAllowed, NotFound, Unavailable, UsageError
from .config import Config, load_config
from .errors import WirtError

__all__ = ["add_admin_parser", "run_admin"]

OWNER_KEY = "wirt"  # the namespace prefix libvirt writes: <wirt:owner xmlns:wirt=OWNER_NS>


def add_admin_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    admin = sub.add_parser("admin", parents=[common], help="admin verbs (root only)",
                           description="Admin verbs; run them as root.")
    verbs = admin.add_subparsers(dest="admin_command", metavar="verb",
                                 parser_class=type(admin))
    verbs.required = True
    p = verbs.add_parser("assign", parents=[common],
                         help="make USER the owner of DOMAIN (libvirt owner metadata)")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("user", metavar="USER")
    p = verbs.add_parser("unassign", parents=[common],
                         help="remove DOMAIN's owner metadata (its name decides again)")
    p.add_argument("domain", metavar="DOMAIN")
    p = verbs.add_parser("run", parents=[common], help="run a pass now (virsh_wrapper --verbose)")
    p.add_argument("--user", metavar="NAME", help="serve only this member")
    p.add_argument("--dry-run", action="store_true", help="judge everything, change nothing")
    p = verbs.add_parser("audit", parents=[common], help="a user's records in the audit log")
    p.add_argument("user", metavar="USER")
    p.add_argument("-n", "--lines", type=int, default=50,
                   help="how many of the newest records (0: all; default 50)")


def run_admin(args: argparse.Namespace, out: Any) -> int:
    verb = args.admin_command
    if os.geteuid() != 0:
        raise NotAllowed(f"'wirt admin {verb}' is for the admin: run it as root "
                         f"(sudo wirt admin {verb} ...)")
    from .main import check_code

    try:
        check_code()
        config = load_config(args.config)
    except WirtError as exc:
        raise CliError(str(exc)) from None
    if verb == "run":
        return run_pass(args, config)
    if verb == "audit":
        return audit(args, config, out)
    return assign(args, config, out)


def _owner_user(name: str, config: Config) -> None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise NotFound(f"there is no user '{name}'") from None
    if entry.pw_uid == 0:
        raise UsageError("root is never served by a pass; assign the domain to a member")
    import grp

    try:
        group = grp.getgrnam(config.group)
    except KeyError:
        return
    if name not in group.gr_mem and entry.pw_gid != group.gr_gid:
        print(f"wirt: warning: {name} is not in the group '{config.group}': a pass will not "
              "serve them until they are", file=sys.stderr)


def assign(args: argparse.Namespace, config: Config, out: Any) -> int:
    import libvirt

    from .hypervisor import OWNER_NS, _parse_xml

    user: str | None = getattr(args, "user", None) if args.admin_command == "assign" else None
    if user is not None:
        _owner_user(user, config)
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.open(config.uri)
    except libvirt.libvirtError as exc:
        raise Unavailable(f"cannot connect to {config.uri}: {exc.get_error_message()}") from None
    try:
        try:
            dom = conn.lookupByName(args.domain)
        except libvirt.libvirtError as exc:
            raise NotFound(f"no domain '{args.domain}' on {config.uri}: "
                           f"{exc.get_error_message()}") from None
        persistent, active = bool(dom.isPersistent()), bool(dom.isActive())
        flags = (libvirt.VIR_DOMAIN_AFFECT_CONFIG if persistent else 0) | (
            libvirt.VIR_DOMAIN_AFFECT_LIVE if active else 0)
        before = _parse_xml(dom.XMLDesc(0))[0]
        element = f"<owner>{escape(user)}</owner>" if user is not None else None
        try:
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, element,
                            OWNER_KEY if user is not None else None, OWNER_NS, flags)
        except libvirt.libvirtError as exc:
            raise CliError(f"libvirt refused the metadata: {exc.get_error_message()}") from None
        # Read it back the way the pass reads it: live definition, and the persistent one.
        views = [dom.XMLDesc(0)]
        if persistent:
            views.append(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        seen = {_parse_xml(xml)[0] for xml in views}
        if seen != {user}:
            raise CliError(f"the owner read back from '{args.domain}' is {sorted(map(str, seen))},"
                           f" not {user!r}")
    finally:
        conn.close()
    where = " and ".join(w for w, on in (("persistent", persistent), ("live", active)) if on)
    data = {"domain": args.domain, "owner": user, "previous": before, "changed": where}
    if user is not None:
        text = f"{args.domain}: assigned to {user} ({where} definition; was: {before or 'none'})"
    else:
        text = f"{args.domain}: no owner metadata any more ({where}; was: {before or 'none'})"
    out.emit(data, lambda: [text])
    return EXIT_OK


def virsh_wrapper_path() -> str:
    """The virsh_wrapper installed beside this wirt (same scripts folder), else on PATH."""
    folders = [os.path.dirname(os.path.abspath(sys.argv[0])), os.path.dirname(sys.executable),
               "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin"]
    for folder in folders:
        candidate = os.path.join(folder, "virsh_wrapper")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise NotFound("virsh_wrapper is not installed beside wirt nor in the system folders")


def run_pass(args: argparse.Namespace, config: Config) -> int:
    argv = [virsh_wrapper_path(), "--verbose"]
    if args.config:
        argv += ["--config", args.config]
    if args.layout:
        argv += ["--layout", args.layout]
    if args.user:
        argv += ["--user", args.user]
    if args.dry_run:
        argv.append("--dry-run")
    sys.stdout.flush()
    os.execv(argv[0], argv)  # noqa: S606 (a fixed path, no shell)
    return 70  # not reached


def audit(args: argparse.Namespace, config: Config, out: Any) -> int:
    """Every record about *user* (all events), through wirt-audit's reader and table."""
    from .auditquery import COLUMNS, print_table, query, rotated_files

    try:
        files = rotated_files(config.audit_log)
    except OSError as exc:
        raise NotFound(f"audit log {config.audit_log}: {exc.strerror} "
                       "(no pass has run yet?)") from None
    records = [record for _, record in query(files, event=None, filters={"user": [args.user]})]
    if args.lines > 0:
        records = records[-args.lines:]
    if not records:
        print(f"wirt: no audit records for {args.user} in {config.audit_log}", file=sys.stderr)
    if out.as_json:
        out.emit(records, list)
    elif records:
        print_table(records, sys.stdout, COLUMNS)
    return EXIT_OK
