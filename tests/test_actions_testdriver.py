"""Every action through a real pass on libvirt's test driver: fast, no daemon, no guest.

The same scenarios as test_realvm.py, at unit speed.  The test driver keeps
its state inside the process, and each pass is a new process, so every pass
starts from the host file written here (with ``<test:runstate>`` for domains
that start shut off or paused).  Within one pass the state carries over, so
queued commands see each other's effects.

What the test driver really does differs from QEMU in places, and the
tests assert what it does: it rejects ``start --paused``/``--force-boot`` and
``shutdown --mode ...`` with "unsupported flags", its shutdown is immediate
(there is no guest to ask), and its error words differ from QEMU's.
"""

from __future__ import annotations

from typing import Any

from conftest import Host, User
from lxml import etree

from wirt_wrapper.rules.actions import no_domain

TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
OWNER_NS = "http://wirt.weimarnetz.de/xmlns/owner/1"
RUNSTATE = {"running": 1, "paused": 3, "shut off": 5}


def node_xml(domains: dict[str, tuple[str, str | None]]) -> str:
    """A test-driver host file: {domain: (initial state, metadata owner or None)}."""
    body = []
    for name, (state, owner) in domains.items():
        meta = (f"<metadata><wirt:owner xmlns:wirt='{OWNER_NS}'>{owner}</wirt:owner>"
                "</metadata>") if owner else ""
        body.append(
            f"<domain type='test' xmlns:test='{TEST_NS}'><name>{name}</name>"
            f"<memory>65536</memory><vcpu>1</vcpu>{meta}<os><type>hvm</type></os>"
            "<devices><graphics type='vnc' port='5901' listen='127.0.0.1'/></devices>"
            f"<test:runstate>{RUNSTATE[state]}</test:runstate></domain>"
        )
    return f"<node>{''.join(body)}</node>"


def use_node(host: Host, domains: dict[str, tuple[str, str | None]]) -> None:
    node = host.root / "etc" / "node.xml"
    node.parent.mkdir(mode=0o755, exist_ok=True)
    node.write_text(node_xml(domains))
    host.uri = f"test://{node}"
    host.write_config()


def read_status(user: User, vm: str) -> dict[str, Any]:
    root = etree.fromstring(user.status(vm).encode())
    state = root.find("state")
    last = root.find("last-command")
    problem = root.find("problem")
    return {
        "state": None if state is None else (state.text, state.get("reason")),
        "autostart": root.findtext("autostart"),
        "problem": None if problem is None else problem.get("kind"),
        "last": None if last is None else (last.get("action"), last.get("outcome")),
    }


# vm folder: (initial state, command file, content, outcome, reason starts with, state after)
CASES: dict[str, tuple[str, str, str, str, str, tuple[str, str] | None]] = {
    "start-off": ("shut off", "start", "", "done", "", ("running", "booted")),
    "start-running": ("running", "start", "", "failed",
                      "libvirt: internal error: Domain '{domain}' is already running",
                      ("running", "unknown")),
    "start-paused": ("shut off", "start", "--paused", "failed",
                     "libvirt: unsupported flags (0x1)", ("shut off", "unknown")),
    "start-force": ("shut off", "start", "--force-boot", "failed",
                    "libvirt: unsupported flags (0x8)", ("shut off", "unknown")),
    # the test driver powers off at once: the message says the state read back (SPEC 3)
    "shutdown": ("running", "shutdown", "", "done",
                 "asked the guest to power off; it is shut off", ("shut off", "shutdown")),
    "stop": ("running", "stop", "", "done", "asked the guest to power off; it is shut off",
             ("shut off", "shutdown")),
    "shutdown-acpi": ("running", "shutdown", "--mode acpi", "failed",
                      "libvirt: unsupported flags (0x1)", ("running", "unknown")),
    "shutdown-off": ("shut off", "shutdown", "", "failed",
                     "libvirt: internal error: domain '{domain}' not running",
                     ("shut off", "unknown")),
    "destroy": ("running", "destroy", "", "done", "", ("shut off", "destroyed")),
    "kill-graceful": ("running", "kill", "--graceful", "done", "", ("shut off", "destroyed")),
    "destroy-off": ("shut off", "destroy", "", "failed",
                    "libvirt: Requested operation is not valid: domain is not running",
                    ("shut off", "unknown")),
    "reboot": ("running", "reboot", "", "done", "asked the guest to reboot; it is running",
               ("running", "booted")),
    "reboot-acpi": ("running", "reboot", "--mode=acpi", "done",
                    "asked the guest to reboot; it is running", ("running", "booted")),
    "reset": ("running", "reset", "", "done", "", ("running", "unknown")),
    "reset-off": ("shut off", "reset", "", "failed",
                  "libvirt: Requested operation is not valid: domain is not running",
                  ("shut off", "unknown")),
    "suspend": ("running", "suspend", "", "done", "", ("paused", "user")),
    "resume": ("paused", "resume", "", "done", "", ("running", "unpaused")),
    "resume-running": ("running", "resume", "", "failed",
                       "libvirt: internal error: domain '{domain}' not paused",
                       ("running", "unknown")),
    "autostart": ("shut off", "autostart", "", "done", "", ("shut off", "unknown")),
    "autostart-off": ("shut off", "autostart", "--disable", "done", "", ("shut off", "unknown")),
    "status": ("paused", "status", "", "done", "", ("paused", "unknown")),
    "injected": ("running", "start", "--domain other", "rejected",
                 "~/wirt/service/vm/injected/start: token '--domain' is not accepted",
                 ("running", "unknown")),
}


def test_each_action_in_one_pass(host: Host) -> None:
    alice = host.add_user("alice")
    use_node(host, {f"{alice.name}-{vm}": (case[0], None) for vm, case in CASES.items()})
    for vm, (_, action, content, *_) in CASES.items():
        alice.write(f"wirt/service/vm/{vm}/{action}", content)
    host.run()

    records = {r["vm"]: r for r in host.commands()}
    got, want = {}, {}
    for vm, (_, action, _content, outcome, reason, after) in CASES.items():
        record = records[vm]
        domain = f"{alice.name}-{vm}"
        got[vm] = (record["outcome"], str(record["reason"])[:len(reason.format(domain=domain))],
                   read_status(alice, vm)["state"])
        want[vm] = (outcome, reason.format(domain=domain), after)
        # the user's log says the same as root's audit log
        assert f" {vm} " in alice.vm_log(vm) and f": {outcome}" in alice.vm_log(vm)
        assert read_status(alice, vm)["last"] == (record["action"] or action, outcome)
    assert got == want
    assert read_status(alice, "autostart")["autostart"] == "yes"
    assert read_status(alice, "autostart-off")["autostart"] == "no"
    assert len(alice.history()) == len(CASES)


def test_queued_commands_share_one_pass(host: Host) -> None:
    """Within one pass (one process) the test driver keeps state: order decides the end."""
    alice = host.add_user("alice")
    use_node(host, {f"{alice.name}-a": ("shut off", None), f"{alice.name}-b": ("running", None)})
    alice.write("wirt/service/vm/a/start", mtime=1_000_000)
    alice.write("wirt/service/vm/a/shutdown", mtime=1_000_010)  # name order would run it first
    alice.write("wirt/service/vm/b/suspend", mtime=1_000_000)
    alice.write("wirt/service/vm/b/autostart", mtime=1_000_005)
    alice.write("wirt/service/vm/b/resume", mtime=1_000_010)
    host.run()
    order = [(r["vm"], r["action"], r["outcome"]) for r in host.commands()]
    assert order == [("a", "start", "done"), ("a", "shutdown", "done"),
                     ("b", "suspend", "done"), ("b", "autostart", "done"),
                     ("b", "resume", "done")]
    assert read_status(alice, "a")["state"] == ("shut off", "shutdown")
    assert read_status(alice, "b")["state"] == ("running", "unpaused")
    assert read_status(alice, "b")["autostart"] == "yes"


def test_missing_and_foreign_domains(host: Host) -> None:
    alice = host.add_user("al")
    alice_x = host.add_user("al-x")
    bob = host.add_user("bob")
    use_node(host, {f"{alice.name}-pinned": ("shut off", bob.name),
                    f"{alice_x.name}-web": ("shut off", None),
                    f"{alice.name}-up": ("running", None)})
    for vm in ("gone", "pinned", "x-web", "up"):
        alice.write(f"wirt/service/vm/{vm}/start")
    alice_x.write("wirt/service/vm/web/start")
    host.run()
    got = {(r["user"], r["vm"]): (r["outcome"], str(r["reason"])) for r in host.commands()}
    assert got[(alice.name, "gone")] == (
        "failed", no_domain(f"{alice.name}-gone"))
    assert got[(alice.name, "pinned")][0] == "rejected"
    assert got[(alice.name, "pinned")][1].startswith(
        f"domain '{alice.name}-pinned' is assigned to another user (libvirt owner metadata)")
    for key in ((alice.name, "x-web"), (alice_x.name, "web")):
        assert got[key][0] == "rejected" and "is ambiguous" in got[key][1]
    assert got[(alice.name, "up")][0] == "failed"
    assert "is already running" in got[(alice.name, "up")][1]
    assert read_status(alice, "gone")["problem"] == "missing"
    assert read_status(alice, "pinned")["problem"] == "not-yours"


def test_unreachable_libvirt_leaves_commands_pending(host: Host) -> None:
    """The unit-level twin of "libvirtd stopped": a URI that cannot be opened."""
    alice = host.add_user("alice")
    domain = f"{alice.name}-web"
    host.uri = f"test://{host.root}/etc/missing-node.xml"
    host.write_config()
    alice.write("wirt/service/vm/web/destroy")
    proc = host.run()
    assert proc.returncode == 0
    assert "libvirt unreachable, commands stay pending" in proc.stderr
    assert [r["event"] for r in host.audit_records()] == ["libvirt-unreachable", "pass"]
    assert (alice.home / "wirt/service/vm/web/destroy").exists()
    assert alice.history() == [] and alice.vm_log("web") == ""

    use_node(host, {domain: ("running", None)})
    host.run()
    assert [(r["action"], r["outcome"]) for r in host.commands()] == [("destroy", "done")]
    assert read_status(alice, "web")["state"] == ("shut off", "destroyed")
    host.run()
    assert len(host.commands()) == 1  # nothing ran twice

