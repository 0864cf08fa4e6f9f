"""``wirt admin``: the admin's verbs (runs as root; refuses anyone else).

* ``assign DOMAIN USER [--as VM]`` / ``unassign DOMAIN``: write or remove the
  owner metadata (SPEC section 4; ``--as``: the user's VM folder that drives it)
  in the domain's persistent and live definitions through libvirt-python, read
  it back the way the pass does, update the pass's owner index
  (:mod:`wirt_wrapper.root.owners`) at once, and warn when no folder of the
  user's reaches the domain, by the folders the last pass saw (root never looks
  in a user's home);
* ``run``: a pass now (``virsh_wrapper --verbose``'s code, in this process);
* ``audit USER``: that user's records in the audit log (all events, rotated
  generations too), through ``wirt-audit``'s reader, which escapes every value;
* ``quota [USER]``: each member's memory and vCPUs, summed over every domain
  they own (the pass's ownership rule), against ``[quota]`` (SPEC section 9).

Trusts: root-owned code and config (checked as ``virsh_wrapper`` checks them),
and root's own command line.  User names are checked against the password
database before they are written into a domain.
"""

from __future__ import annotations

import argparse
import pwd
import sys
from typing import Any
from xml.sax.saxutils import escape

from wirt_wrapper.root import startup
from wirt_wrapper.rules.config import Config, load_config
from wirt_wrapper.rules.errors import (
    CLI_EXITS,
    EXIT_BY_OUTCOME,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PENDING,
    EXIT_TIMEOUT,
    CliError,
    ConfigError,
    NotAllowed,
    NotFound,
    NotRootError,
    SiteConfigError,
    Unavailable,
    UsageError,
    WirtError,
)
from wirt_wrapper.rules.output import Out, shown

__all__ = ["main"]

OWNER_KEY = "wirt"  # the namespace prefix libvirt writes: <wirt:owner xmlns:wirt=OWNER_NS>
MODULE = "wirt_wrapper.root.admin"  # how `wirt admin` starts this: python -I -m MODULE


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON for scripts")
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="site config (default /etc/wirt/wirt.toml)")
    common.add_argument("--layout", choices=("wirt", "legacy"), default=argparse.SUPPRESS,
                        help="run: which spool layout to serve")
    codes = ", ".join(f"{code} {kind}" for code, kind in CLI_EXITS
                      if code not in (*EXIT_BY_OUTCOME.values(), EXIT_TIMEOUT, EXIT_PENDING)
                      or code == EXIT_OK)
    admin = Parser(prog="wirt admin", parents=[common],
                   description="Admin verbs; run them as root.",
                   epilog=f"Exit status (wirt's table): {codes}.")
    admin.set_defaults(json=False, config=None, layout=None)
    verbs = admin.add_subparsers(dest="admin_command", metavar="verb", parser_class=Parser)
    verbs.required = True
    p = verbs.add_parser("assign", parents=[common],
                         help="make USER the owner of DOMAIN (libvirt owner metadata)")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("user", metavar="USER")
    p.add_argument("--host", metavar="NAME",
                   help="the [[hosts]] entry DOMAIN is on (needed when several have it)")
    p.add_argument("--as", dest="vm", metavar="VM",
                   help="the user's VM folder that drives DOMAIN, whatever it is called "
                   "(default: the folder its name gives, per domain_name)")
    p = verbs.add_parser("unassign", parents=[common],
                         help="remove DOMAIN's owner metadata (its name decides again)")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--host", metavar="NAME",
                   help="the [[hosts]] entry DOMAIN is on (needed when several have it)")
    p = verbs.add_parser("run", parents=[common], help="run a pass now (virsh_wrapper --verbose)")
    p.add_argument("--user", metavar="NAME", help="serve only this member")
    p.add_argument("--dry-run", action="store_true", help="judge everything, change nothing")
    p = verbs.add_parser("audit", parents=[common], help="a user's records in the audit log")
    p.add_argument("user", metavar="USER")
    p.add_argument("-n", "--lines", type=int, default=50,
                   help="how many of the newest records (0: all; default 50)")
    p = verbs.add_parser("quota", parents=[common],
                         help="memory and vCPUs each member's domains use, against [quota]",
                         description="quota: per member (or only USER), the memory (MiB) and "
                         "vCPUs of the persistent definitions of every domain they own, summed, "
                         "next to the per-user quota of [quota] (0 = none).")
    p.add_argument("user", metavar="USER", nargs="?", help="only this user")
    return admin


def main(argv: list[str] | None = None) -> int:
    """``wirt admin VERB ...``: the same start-up guarantees as virsh_wrapper, then the verb."""
    try:
        try:
            startup.prepare("wirt admin", MODULE, argv)
        except NotRootError:
            raise NotAllowed("'wirt admin' is for the admin: run it as root "
                             "(sudo wirt admin ...)") from None
        except ConfigError as exc:  # the installed code or interpreter
            raise SiteConfigError(str(exc)) from None
        except WirtError as exc:
            raise CliError(str(exc)) from None
        args = build_parser().parse_args(argv)
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            raise SiteConfigError(str(exc)) from None
        out = Out(args.json)
        if args.admin_command == "run":
            return run_pass(args)
        if args.admin_command == "audit":
            return audit(args, config, out)
        if args.admin_command == "quota":
            return quota(args, config, out)
        return assign(args, config, out)
    except CliError as exc:
        print(f"wirt: {shown(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


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


def assign(args: argparse.Namespace, config: Config, out: Out) -> int:
    import libvirt

    from wirt_wrapper.root.hypervisor import OWNER_NS, parse_domain_xml
    from wirt_wrapper.rules.actions import Rejection, check_vm_name, domain_for

    user: str | None = getattr(args, "user", None) if args.admin_command == "assign" else None
    vm: str | None = getattr(args, "vm", None) if user is not None else None
    if vm is not None:
        try:
            check_vm_name(vm)
        except Rejection as exc:
            raise UsageError(f"--as: {exc}") from None
    if user is not None:
        _owner_user(user, config)
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    host, conn, dom = _find_domain(config, args.domain, getattr(args, "host", None))
    try:
        persistent, active = bool(dom.isPersistent()), bool(dom.isActive())
        flags = (libvirt.VIR_DOMAIN_AFFECT_CONFIG if persistent else 0) | (
            libvirt.VIR_DOMAIN_AFFECT_LIVE if active else 0)
        before = parse_domain_xml(dom.XMLDesc(0))[0]
        folder = f' vm="{vm}"' if vm is not None else ""  # VM_NAME: nothing to escape
        element = f"<owner{folder}>{escape(user)}</owner>" if user is not None else None
        try:
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, element,
                            OWNER_KEY if user is not None else None, OWNER_NS, flags)
        except libvirt.libvirtError as exc:
            raise CliError(f"libvirt refused the metadata: {exc.get_error_message()}") from None
        # Read it back the way the pass reads it: live definition, and the persistent one.
        views = [dom.XMLDesc(0)]
        if persistent:
            views.append(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        seen = {(parse_domain_xml(xml)[0], _folder_of(xml)) for xml in views}
        if seen != {(user, vm)}:
            raise CliError(f"the owner read back from '{args.domain}' is {sorted(map(str, seen))},"
                           f" not {(user, vm)!r}")
        uuid = dom.UUIDString()
        named_other = None
        if user is not None and vm is not None:
            named = domain_for(config.domain_name, user, vm)
            if named != args.domain:
                try:
                    other_xml = conn.lookupByName(named).XMLDesc(0)
                    if parse_domain_xml(other_xml)[0] in (None, user) and \
                            _folder_of(other_xml) in (None, vm):
                        named_other = named
                except libvirt.libvirtError:
                    pass
    finally:
        conn.close()
    _update_index(config, uuid, (user, vm) if user is not None else None)
    warnings = _reach_warnings(config, args.domain, user, vm, named_other) \
        if user is not None else []
    for warning in warnings:
        print(f"wirt: warning: {warning}", file=sys.stderr)
    where = " and ".join(w for w, on in (("persistent", persistent), ("live", active)) if on)
    data = {"domain": args.domain, "owner": user, "vm": vm, "previous": before,
            "changed": where, "host": host, "warnings": warnings}
    on = f" on host {host}" if config.hosts else ""
    if user is not None:
        whose = f"{user}'s VM folder '{vm}'" if vm is not None else user
        text = (f"{args.domain}: assigned to {whose}{on} ({where} definition; "
                f"was: {before or 'none'})")
    else:
        text = (f"{args.domain}: no owner metadata any more{on} ({where}; "
                f"was: {before or 'none'})")
    out.emit(data, lambda: [text])
    return EXIT_OK


def _open(uri: str) -> Any:
    import libvirt

    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise Unavailable(f"cannot connect to {uri}: {exc.get_error_message()}") from None


def _find_domain(config: Config, domain: str, host: str | None) -> tuple[str, Any, Any]:
    """(host name, its open connection, the domain) for *domain*: on *host*, or on the one
    host that has it (SPEC 13).  Refused when several have it, naming them."""
    import libvirt

    from wirt_wrapper.rules.actions import ambiguous_domain

    hosts = config.host_list()
    if host is not None:
        hosts = tuple(h for h in hosts if h.name == host)
        if not hosts:
            known = ", ".join(h.name for h in config.host_list())
            raise UsageError(f"--host {host}: no such host in {config.path} (hosts: {known})")
    found: list[tuple[str, Any, Any]] = []
    missing: list[str] = []
    down: list[str] = []
    try:
        for entry in hosts:
            try:
                conn = _open(entry.uri)
            except Unavailable as exc:
                if len(hosts) == 1:
                    raise
                down.append(f"host {entry.name}: {exc}")
                continue
            try:
                found.append((entry.name, conn, conn.lookupByName(domain)))
            except libvirt.libvirtError as exc:
                conn.close()
                missing.append(f"on {entry.uri}: {exc.get_error_message()}")
        if len(found) > 1:
            raise UsageError(f"{ambiguous_domain(domain, [f[0] for f in found])}, or name "
                             "the host: --host NAME")
    except BaseException:
        for _, conn, _ in found:
            conn.close()
        raise
    if not found:
        raise NotFound(f"no domain '{domain}' " + "; ".join(missing + down))
    if down:
        print(f"wirt: warning: {'; '.join(down)} (not looked at: '{domain}' may be there "
              "too)", file=sys.stderr)
    return found[0]


def _folder_of(xml: str) -> str | None:
    """The VM folder a domain XML's owner metadata names, read as the pass reads it."""
    from lxml import etree

    from wirt_wrapper.root.hypervisor import owner_vm_of

    return owner_vm_of(etree.fromstring(xml.encode()))


def _update_index(config: Config, uuid: str, claim: tuple[str, str | None] | None) -> None:
    """Tell the pass's owner index at once (it reads only new domains' metadata)."""
    from wirt_wrapper.root.owners import OwnerIndex
    from wirt_wrapper.root.state import secure_folder

    secure_folder(config.state_dir, "state_dir")
    index = OwnerIndex(config.state_dir)
    index.learn(uuid, claim)
    index.save()


def _reach_warnings(config: Config, domain: str, user: str, vm: str | None,
                    named_other: str | None) -> list[str]:
    """Why the assignment may not help yet: no folder of *user*'s reaches *domain*.

    The folders are those the last pass saw (root never looks in a user's home):
    what the user's last full turn reported, in root's records.
    """
    from wirt_wrapper.root.records import Records
    from wirt_wrapper.rules.actions import Claimants

    if vm is None:
        found = Claimants(config.domain_name, [user]).find(domain)
        if not found:
            example = config.domain_name.format(user=user, vm="VM")
            return [f"no VM folder of {user}'s reaches '{domain}' by its name (their "
                    f"folders drive the domains named {example}); give it a folder: "
                    f"wirt admin assign {domain} {user} --as VM"]
        vm = found[0][1]
    warnings = []
    if named_other is not None:
        warnings.append(f"{user}'s VM folder '{vm}' also names the domain '{named_other}': "
                        f"the pass refuses that folder as ambiguous until '{named_other}' is "
                        f"assigned to another folder (wirt admin assign {named_other} {user} "
                        "--as OTHER) or renamed")
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        return warnings
    folders = {name for vms in Records(config.state_dir).idle_of(uid).values() for name in vms}
    if vm not in folders:
        warnings.append(f"{user} has no VM folder '{vm}' yet as of the last pass (they "
                        f"create it with: wirt create {vm})")
    return warnings


def run_pass(args: argparse.Namespace) -> int:
    """A pass now, in this process: it is virsh_wrapper's own code, checked as it checks it."""
    from wirt_wrapper.root.main import main as pass_main

    argv = ["--verbose"]
    if args.config:
        argv += ["--config", args.config]
    if args.layout:
        argv += ["--layout", args.layout]
    if args.user:
        argv += ["--user", args.user]
    if args.dry_run:
        argv.append("--dry-run")
    return pass_main(argv)


def audit(args: argparse.Namespace, config: Config, out: Out) -> int:
    """Every record about *user* (all events), through wirt-audit's reader and table."""
    from wirt_wrapper.root.auditquery import COLUMNS, print_table, query, rotated_files

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


_KIB_PER = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024,
            "m": 1024, "mib": 1024, "mb": 1e6 / 1024, "g": 1 << 20, "gib": 1 << 20,
            "gb": 1e9 / 1024, "t": 1 << 30, "tib": 1 << 30, "tb": 1e12 / 1024}


def domain_use(xml: str) -> tuple[str | None, int, int]:
    """Owner metadata, memory (MiB, from ``<memory>``) and vCPUs (``<vcpu>``) of a definition."""
    from lxml import etree

    from wirt_wrapper.root.hypervisor import OWNER_NS

    root = etree.fromstring(xml.encode(), etree.XMLParser(resolve_entities=False,
                                                          no_network=True))
    owner = root.findtext(f"metadata/{{{OWNER_NS}}}owner")
    memory = root.find("memory")
    kib = 0.0
    if memory is not None and (memory.text or "").strip().isdigit():
        kib = int((memory.text or "").strip()) * _KIB_PER.get(
            memory.get("unit", "KiB").lower(), 1)
    vcpus = (root.findtext("vcpu") or "").strip()
    return (owner.strip() if owner else None), int(kib) // 1024, \
        int(vcpus) if vcpus.isdigit() else 0


def quota(args: argparse.Namespace, config: Config, out: Out) -> int:
    """Each member's use (the persistent definitions of the domains they own) against [quota]."""
    import libvirt

    from wirt_wrapper.root.accounts import members
    from wirt_wrapper.rules.actions import Claimants, owns

    try:
        names = [entry.pw_name for entry in members(config.group)]
    except KeyError:
        raise NotFound(f"the group '{config.group}' does not exist") from None
    users = names
    if args.user is not None:
        _owner_user(args.user, config)
        users = [args.user]
    claimants = Claimants(config.domain_name, sorted({*names, *users}))
    quota_memory, quota_vcpus = config.quota.memory_mib, config.quota.vcpus  # 0: none

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    domains: list[tuple[str, str | None, int, int, bool]] = []
    for entry in config.host_list():  # a quota sums over every host (SPEC 13)
        conn = _open(entry.uri)
        try:
            for dom in conn.listAllDomains(0):
                try:
                    persistent = bool(dom.isPersistent())
                    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if persistent else 0)
                except libvirt.libvirtError:
                    continue  # undefined meanwhile
                owner, memory, vcpus = domain_use(xml)
                domains.append((dom.name(), owner, memory, vcpus, persistent))
        finally:
            conn.close()

    rows: list[dict[str, Any]] = []
    for user in users:
        theirs = [d for d in sorted(domains) if owns(user, d[0], d[1], claimants)]
        mine = [{"domain": name, "memory_mib": memory, "vcpus": vcpus, "persistent": persistent}
                for name, _, memory, vcpus, persistent in theirs]
        use_memory = sum(d[2] for d in theirs)
        use_vcpus = sum(d[3] for d in theirs)
        over = [key for key, use, limit in (("memory_mib", use_memory, quota_memory),
                                            ("vcpus", use_vcpus, quota_vcpus))
                if limit and use > limit]
        rows.append({"user": user, "domains": mine, "memory_mib": use_memory,
                     "vcpus": use_vcpus,
                     "quota": {"memory_mib": quota_memory, "vcpus": quota_vcpus},
                     "over": over})

    def text() -> list[str]:
        header = ["USER", "DOMAINS", "MEMORY MIB", "QUOTA MIB", "VCPUS", "QUOTA VCPUS", ""]
        table = [[row["user"], str(len(row["domains"])), str(row["memory_mib"]),
                  str(quota_memory or "none"), str(row["vcpus"]), str(quota_vcpus or "none"),
                  "OVER: " + ", ".join(row["over"]) if row["over"] else ""] for row in rows]
        widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                 for r in [header, *table]]
        if not rows:
            lines.append(f"(the group '{config.group}' has no members)")
        return lines

    out.emit(rows, text)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
