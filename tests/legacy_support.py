"""Helpers for the legacy-layout tests: a test-driver host with shut-off domains,
readers for what a legacy user sees in ``~/virsh/log`` and ``~/virsh/history``,
and the ``deployed`` fixture: the old cron line through the real shim and sudo.

``deployed`` puts the repository's files in place the way deploy/install.sh
does, with three differences it has to have on a shared test machine: the
wrapper user has a unique name, the shim and the executable live in a
root-owned temporary folder (their fixed paths rendered into them, and into
the sudoers drop-in, with the same substitutions the installer makes), and
the shim's interpreter is this test run's virtualenv.  The sudoers drop-in
is a real file in /etc/sudoers.d (checked with visudo -cf before it is put
there, removed afterwards).
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, Host, User, remove_user, sh

TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
OWNER_NS = "http://wirt.weimarnetz.de/xmlns/owner/1"
SHUTOFF = 5  # virDomainState; the test driver starts every other domain running

# what the legacy names look like with wirt's unique legacy stamp
STAMP = r"[0-9]{2}_[A-Z][a-z]{2}_[0-9]{2}_[0-9]{2}\.[0-9]{2}\.[0-9]{2}"

EXE_PATH = "/usr/local/sbin/virsh_wrapper"
SHIM_PATH = "/usr/local/bin/virsh_wrapper/backend/virsh_wrapper.sh"
SUDOERS_D = Path("/etc/sudoers.d")


def legacy_cron_command() -> str:
    """The command of the old cron line (legacy/cron.d/virsh-wrapper), run by 'wrapper'."""
    lines = [line for line in (REPO / "legacy/cron.d/virsh-wrapper").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    [line] = lines
    fields = line.split(None, 6)
    assert fields[:6] == ["*/2", "*", "*", "*", "*", "wrapper"], fields
    return fields[6]


def render_sudoers(user: str, exe: str, shim: str) -> str:
    """sudoers.d/wirt for another user name and paths (deploy/install.sh does the name)."""
    text = (REPO / "sudoers.d/wirt").read_text()
    text = re.sub(r"^Defaults:wrapper ", f"Defaults:{user} ", text, flags=re.M)
    text = re.sub(r"^wrapper ALL", f"{user} ALL", text, flags=re.M)
    return text.replace(SHIM_PATH, shim).replace(EXE_PATH, exe)


@dataclass
class Deployed:
    folder: Path
    exe: str
    shim: str
    wrapper: User
    cron_command: str

    def as_user(self, user: User, command: str, env: dict[str, str] | None = None,
                ) -> subprocess.CompletedProcess[str]:
        """Run *command* with /bin/sh as *user*, in their home, the way cron does."""
        base = {"HOME": str(user.home), "LOGNAME": user.name, "SHELL": "/bin/sh",
                "PATH": "/usr/bin:/bin"}
        return subprocess.run(
            ["/usr/sbin/runuser", "-u", user.name, "--", "/bin/sh", "-c", command],
            cwd=user.home, env={**base, **(env or {})}, capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=120,
        )

    def cron(self, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.as_user(self.wrapper, self.cron_command, env)

    def pass_ok(self) -> None:
        """One pass from the old cron line, as cron runs it; it must end well and quietly."""
        proc = self.cron()
        assert proc.returncode == 0 and proc.stderr == "", proc


@pytest.fixture
def deployed(host: Host) -> Iterator[Deployed]:
    name = f"{host.prefix}w"
    sh("useradd", "-m", "-U", name)  # not a member of the group
    entry = pwd.getpwnam(name)
    wrapper = User(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))
    folder = Path(tempfile.mkdtemp(prefix=f"wirt-{host.prefix}-", dir="/var/tmp"))
    folder.chmod(0o755)
    sudoers = SUDOERS_D / f"wirt-test-{host.prefix}"
    try:
        exe, shim = str(folder / "virsh_wrapper"), str(folder / "virsh_wrapper.sh")
        text = (REPO / "deploy/virsh_wrapper").read_text()
        Path(exe).write_text(re.sub(r"^#!.*", f"#!{sys.executable} -I", text, count=1))
        text = (REPO / "bin/virsh_wrapper.sh").read_text()
        for key, value in (("SELF", shim), ("PYTHON", sys.executable),
                           ("CONFIG", str(host.config))):
            text = re.sub(rf"^{key}=.*$", f"{key}={value}", text, count=1, flags=re.M)
        Path(shim).write_text(text)
        os.chmod(exe, 0o755)
        os.chmod(shim, 0o755)
        draft = folder / "sudoers"
        draft.write_text(render_sudoers(name, exe, shim))
        sh("visudo", "-cqf", str(draft))  # never install a drop-in that could break sudo
        os.chmod(draft, 0o440)
        os.rename(draft, sudoers)
        yield Deployed(folder, exe, shim, wrapper,
                       legacy_cron_command().replace(SHIM_PATH, shim))
    finally:
        sudoers.unlink(missing_ok=True)
        subprocess.run(["rm", "-rf", str(folder)], check=False)
        remove_user(name)


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
