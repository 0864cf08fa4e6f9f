"""The monitor's answers (wirt_wrapper.root.monitor), without libvirt or state files.

The hypervisor here is a stand-in (:class:`StandInHypervisor`): it records the
actions it is asked to perform instead of calling libvirt, so each test can
say exactly what reached "libvirt".  The audit log, journal and records are
the real classes, kept in memory.  End to end, against the real executable
and a real libvirtd, the same attacks are in tests/attacks/test_subverted.py.
"""

from __future__ import annotations

import pwd
from typing import Any

import pytest

from wirt_wrapper.root.audit import AuditLog, Journal
from wirt_wrapper.root.hypervisor import DomainInfo, Trip
from wirt_wrapper.root.monitor import (
    NOTICE_RECORDS,
    Deferred,
    Monitor,
    Options,
    Summary,
    UserContext,
)
from wirt_wrapper.root.notify import Report
from wirt_wrapper.root.records import MAX_IDLE_VMS, Records
from wirt_wrapper.rules.actions import Action, Claimants
from wirt_wrapper.rules.config import Config
from wirt_wrapper.rules.errors import ProtocolError

ME = pwd.struct_passwd(("alice", "x", 2001, 2001, "", "/home/alice", "/bin/sh"))


class StandInHypervisor:
    """Stands in for root.hypervisor.Hypervisor: domains in a dict, actions recorded."""

    def __init__(self) -> None:
        self.down: str | None = None
        self.read_at = 1796126000.0  # when the snapshot read the states
        self.acted: list[tuple[str, str, dict[str, str]]] = []
        self.domains = {"alice-web": DomainInfo("alice-web", "shut off", "shutdown", False,
                                                True, 65536, 1, None)}

    # one unnamed host, as root.hosts.Hosts is without [[hosts]]
    named = False

    def ambiguous(self, name: str) -> str | None:
        return None

    def pending(self, name: str) -> str | None:
        return self.down

    def host_of(self, name: str) -> str | None:
        return "local"

    def problems(self) -> dict[str, str]:
        return {"local": self.down} if self.down else {}

    def prefetch(self, names: list[str]) -> None:
        pass

    def take_locked(self, domain: str) -> list[str]:
        return []  # the console lock closed no domain here

    def exists(self, name: str) -> bool:
        return name in self.domains

    def info(self, name: str) -> DomainInfo | None:
        return self.domains.get(name)

    def act(self, name: str, action: Action, params: dict[str, str],
            decide: Any) -> tuple[str, str, DomainInfo | None]:
        problem = decide(self.domains[name].owner, self.domains[name].owner_vm)
        if problem:
            return "rejected", problem, None
        self.acted.append((name, action.name, params))
        return "done", "", self.domains[name]

    def act_start(self, name: str, action: Action, params: dict[str, str],
                  decide: Any) -> Trip:
        return Trip.now(self.act(name, action, params, decide))


def monitor(*, dry_run: bool = False, max_files: int = 100) -> tuple[Monitor, UserContext]:
    from wirt_wrapper.rules.config import Limits

    config = Config(limits=Limits(max_files_per_user=max_files))
    options = Options(layouts=("wirt",), dry_run=dry_run)
    mon = Monitor(config, options, StandInHypervisor(), AuditLog(None), Journal(None),  # type: ignore[arg-type]
                  Records(None), Report(), Summary())
    mon.claimants = Claimants(config.domain_name, ["alice"])
    return mon, mon.turn(ME, child=None, recovering=False)


INTEND = {"op": "intend", "layout": "wirt", "vm": "web", "file": "autostart", "ino": 7,
          "action": "autostart", "tokens": [], "hist": "20261201-000000.000000-web-autostart"}


def test_a_command_runs_once_through_the_table() -> None:
    mon, ctx = monitor()
    mon.answer(ctx, {"op": "inventory", "layout": "wirt", "vms": ["web"]})
    cid = mon.answer(ctx, INTEND)["id"]  # type: ignore[index]
    answer = mon.answer(ctx, {"op": "run", "id": cid})
    assert isinstance(answer, Deferred)  # sent once its trip to libvirt is done
    reply = answer.finish()
    assert reply["outcome"] == "done"
    assert mon.hv.acted == [("alice-web", "autostart", {})]  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError, match="unknown or used command id"):
        mon.answer(ctx, {"op": "run", "id": cid})  # once only
    assert len(mon.hv.acted) == 1  # type: ignore[attr-defined]


def test_a_dry_pass_never_acts_whatever_the_user_side_says() -> None:
    """Before: on_intend took the user side's 'dry' flag; one that left it out got an id
    and then a real libvirt action in a --dry-run pass."""
    mon, ctx = monitor(dry_run=True)
    mon.answer(ctx, {"op": "inventory", "layout": "wirt", "vms": ["web"]})
    assert mon.answer(ctx, INTEND) == {}
    assert mon.journal.entries == {}
    with pytest.raises(ProtocolError):
        mon.answer(ctx, {"op": "run", "id": f"{mon.pass_id}-1"})
    assert mon.hv.acted == []  # type: ignore[attr-defined]


def test_the_user_sides_own_dry_flag_is_outside_the_protocol() -> None:
    mon, ctx = monitor()
    mon.answer(ctx, {"op": "inventory", "layout": "wirt", "vms": ["web"]})
    with pytest.raises(ProtocolError, match="unexpected key 'dry'"):
        mon.answer(ctx, {**INTEND, "dry": True})


def test_notices_once_per_turn_and_capped_in_the_audit_log() -> None:
    """Before: 'notices' could be sent again and again, 1,000 audit records each time."""
    mon, ctx = monitor()
    items = [{"layout": "wirt", "key": f"entry:x{i}", "message": f"x{i} ignored"}
             for i in range(1000)]
    reply = mon.answer(ctx, {"op": "notices", "items": items})
    assert reply is not None and len(reply["new"]) == 1000  # the user is told everything
    notices = [r for r in mon.audit.kept if r["event"] == "notice"]
    assert len(notices) == NOTICE_RECORDS + 1 and notices[-1]["count"] == 1000 - NOTICE_RECORDS
    with pytest.raises(ProtocolError, match="after 'notices'"):
        mon.answer(ctx, {"op": "notices", "items": items})
    assert len([r for r in mon.audit.kept if r["event"] == "notice"]) == NOTICE_RECORDS + 1


def test_commands_per_turn_are_capped() -> None:
    mon, ctx = monitor(max_files=2)
    mon.answer(ctx, {"op": "inventory", "layout": "wirt", "vms": ["web"]})
    for n in range(2):
        mon.answer(ctx, {**INTEND, "hist": f"h{n}"})
    with pytest.raises(ProtocolError, match="more than 2 commands"):
        mon.answer(ctx, {**INTEND, "hist": "h3"})
    assert len(mon.journal.entries) == 2


def test_a_forged_name_meets_the_table_again() -> None:
    mon, ctx = monitor()
    mon.answer(ctx, {"op": "inventory", "layout": "wirt", "vms": ["web"]})
    cid = mon.answer(ctx, {**INTEND, "tokens": ["--domain", "bob-web"]})["id"]  # type: ignore[index]
    reply = mon.answer(ctx, {"op": "run", "id": cid})
    assert reply is not None and reply["outcome"] == "rejected"
    assert "'--domain' is not accepted" in reply["message"]
    with pytest.raises(Exception, match="VM folder name"):
        mon.answer(ctx, {**INTEND, "vm": "../bob-web", "hist": "h9"})
    assert mon.hv.acted == []  # type: ignore[attr-defined]


def test_a_rejection_text_is_cut_before_the_journal_and_audit() -> None:
    mon, ctx = monitor()
    mon.answer(ctx, {"op": "inventory", "layout": "wirt", "vms": ["web"]})
    cid = mon.answer(ctx, {**INTEND, "rejected": "r" * 4000})["id"]  # type: ignore[index]
    mon.answer(ctx, {"op": "run", "id": cid})
    (record,) = [r for r in mon.audit.kept if r["event"] == "command"]
    assert len(record["reason"]) <= 500 and record["outcome"] == "rejected"


def test_bye_replaces_what_root_remembers_of_the_user() -> None:
    mon, ctx = monitor()
    many = {f"vm{i}": ["d" * 32, [i], None] for i in range(MAX_IDLE_VMS + 50)}
    mon.answer(ctx, {"op": "bye", "statuses": {"wirt": many}})
    assert sum(len(v) for v in mon.records.idle_of(ME.pw_uid).values()) == MAX_IDLE_VMS
    mon.answer(mon.turn(ME, None, False),
               {"op": "bye", "statuses": {"wirt": {"web": ["d", [1], None]}}})
    assert mon.records.idle_of(ME.pw_uid) == {"wirt": {"web": ["d", [1], None]}}
