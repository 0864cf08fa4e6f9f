"""Helpers for the legacy-layout tests: a test-driver host with shut-off domains,
and readers for what a legacy user sees in ``~/virsh/log`` and ``~/virsh/history``."""

from __future__ import annotations

import os
import re
from pathlib import Path

from conftest import Host, User

TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
OWNER_NS = "http://wirt.weimarnetz.de/xmlns/owner/1"
SHUTOFF = 5  # virDomainState; the test driver starts every other domain running

# what the legacy names look like with wirt's unique legacy stamp
STAMP = r"[0-9]{2}_[A-Z][a-z]{2}_[0-9]{2}_[0-9]{2}\.[0-9]{2}\.[0-9]{2}"


def write_host(host: Host, running: dict[str, str | None] | None = None,
               off: dict[str, str | None] | None = None, extra: str = "") -> None:
    """A test-driver host: domains ``{name: owner}``, running or shut off; and the config."""
    body = ""
    for names, state in ((running or {}, None), (off or {}, SHUTOFF)):
        for name, owner in names.items():
            meta = (f"<metadata><wirt:owner xmlns:wirt='{OWNER_NS}'>{owner}</wirt:owner>"
                    "</metadata>") if owner else ""
            runstate = f"<test:runstate>{state}</test:runstate>" if state else ""
            body += (f"<domain type='test' xmlns:test='{TEST_NS}'><name>{name}</name>"
                     f"<memory>65536</memory><vcpu>1</vcpu>{meta}<os><type>hvm</type></os>"
                     f"{runstate}</domain>")
    (host.root / "etc").mkdir(mode=0o755, exist_ok=True)
    path = host.root / "etc" / "host.xml"
    path.write_text(f"<node>{body}</node>")
    host.uri = f"test://{path}"
    host.extra_config = extra
    host.write_config()


def legacy_logs(user: User) -> dict[str, str]:
    """``~/virsh/log``: file name -> content."""
    folder = user.home / "virsh" / "log"
    if not folder.is_dir():
        return {}
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def legacy_history(user: User) -> dict[str, str]:
    folder = user.home / "virsh" / "history"
    if not folder.is_dir():
        return {}
    return {p.name: p.read_text() for p in sorted(folder.iterdir()) if p.is_file()}


def log_for(user: User, vm: str, action: str) -> list[str]:
    """Contents of the per-command logs of *vm*/*action* (legacy name pattern)."""
    pattern = re.compile(rf"{STAMP}-{re.escape(user.name)}-dom-{re.escape(vm)}-"
                         rf"{re.escape(action)}(-[0-9]+)?\.log")
    return [text for name, text in legacy_logs(user).items() if pattern.fullmatch(name)]


def not_owned_by(user: User, root: Path) -> list[str]:
    bad = []
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            st = os.lstat(os.path.join(folder, name))
            if st.st_uid != user.uid:
                bad.append(os.path.join(folder, name))
    return bad
