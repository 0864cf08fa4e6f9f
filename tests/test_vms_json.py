"""~/wirt/info/vms.json: every domain the member owns, folder or not (issue 15 item 8).

A new member with no folders at all learns which VMs the admin made for them:
the pass writes the list as the member (atomically, only when it changes), ``wirt
list`` shows those without a folder, and ``wirt create`` warns for a name that has
no domain.  The real executables, real users; libvirt's test driver (each pass
reads the host file again, so states stay as written).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest
from conftest import BIN, Host, User, owner_meta, readable_config

WIRT = str(BIN / "wirt")


@pytest.fixture
def site(host: Host) -> Iterator[tuple[Host, User, User, str]]:
    """alice owns alice-web (by name) and other-box (assigned to her folder 'box');
    alice-db is bob's by metadata; carol owns nothing.  Nobody has a folder."""
    alice, carol = host.add_user("alice"), host.add_user("carol")
    bob = host.add_user("bob")
    host.write_config({})
    domains = {f"{alice.name}-web": "", f"{host.prefix}other-box": owner_meta(alice.name, "box"),
               f"{alice.name}-db": owner_meta(bob.name)}
    body = "".join(
        f"<domain type='test'><name>{name}</name><memory>65536</memory>{meta}"
        "<os><type>hvm</type></os></domain>" for name, meta in domains.items())
    (host.root / "etc" / "host.xml").write_text(f"<node>{body}</node>")
    with readable_config(host) as config:
        yield host, alice, carol, config


def wirt(user: User, config: str, *args: str) -> subprocess.CompletedProcess[str]:
    return user.run('exec "$@"', WIRT, "--config", config, *args, check=False)


def test_a_member_without_folders_learns_their_vms(site: tuple[Host, User, User, str]
                                                    ) -> None:
    host, alice, carol, config = site
    assert not (alice.home / "wirt").exists()
    before = wirt(alice, config, "list")
    assert "You have no VM folders yet" in before.stderr  # no pass yet: nothing known

    host.run()
    path = alice.home / "wirt/info/vms.json"
    st = path.lstat()
    assert (st.st_uid, st.st_mode & 0o777) == (alice.uid, 0o644)
    listed = json.loads(path.read_text())["vms"]
    assert listed == [
        {"vm": "box", "domain": f"{host.prefix}other-box", "state": "running"},
        {"vm": "web", "domain": f"{alice.name}-web", "state": "running"}]
    assert not (carol.home / "wirt").exists()  # nothing to list: no folder made in a home

    proc = wirt(alice, config, "list")
    assert proc.returncode == 0, proc.stderr
    assert "You have no VM folders yet" not in proc.stderr
    assert "  web  (no folder yet: wirt create web)" in proc.stdout.splitlines()
    assert "  box  (no folder yet: wirt create box)" in proc.stdout.splitlines()
    items = json.loads(wirt(alice, config, "list", "--json").stdout)
    assert [(i["vm"], i["domain"], i["folder"]) for i in items] == [
        ("box", f"{host.prefix}other-box", None), ("web", f"{alice.name}-web", None)]

    # an idle pass rewrites nothing
    host.run()
    assert path.lstat().st_ino == st.st_ino and path.lstat().st_mtime_ns == st.st_mtime_ns

    proc = wirt(alice, config, "create", "nothing")
    assert proc.returncode == 0, proc.stderr
    assert ("wirt: warning: no domain of yours is known for VM 'nothing' as of the last pass "
            "(~/wirt/info/vms.json lists: box, web)") in proc.stderr
    proc = wirt(alice, config, "create", "box")
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    assert f"It drives the libvirt domain '{host.prefix}other-box'." in proc.stdout
    listing = wirt(alice, config, "list").stdout
    assert "box  (no folder yet" not in listing and "web  (no folder yet" in listing

    # the list follows the domains: bob's alice-db never appears; a domain gone leaves it
    (host.root / "etc" / "host.xml").write_text("<node></node>")
    host.run()
    assert json.loads(path.read_text())["vms"] == []
    assert sorted(os.listdir(alice.home / "wirt/service/vm")) == ["box", "nothing"]
