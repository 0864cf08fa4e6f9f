"""The outcome recorded when libvirt goes away in the middle of a pass.

A real ``kill -9 libvirtd`` (tests/test_realvm_libvirtd_down.py) cannot be
aimed at one moment of one command, so these tests aim it with stand-ins,
each named where it is used: a call that hangs past ``libvirt_timeout`` (as
a frozen libvirtd does), a call that fails while ``_alive()`` says the
connection is gone (as after a kill), or ``act`` raising what it raises
then.  Everything else is real: the Hypervisor on libvirt's test driver,
the pass object, its journal and audit log.
"""

from __future__ import annotations

import pwd
import time
from typing import Any

import libvirt
import pytest
from conftest import Host

from wirt_wrapper.root.hypervisor import Hypervisor, Interrupted, Trip, Unreachable
from wirt_wrapper.root.monitor import Deferred, UserContext
from wirt_wrapper.root.scheduler import Options, Pass
from wirt_wrapper.rules.actions import Action, Call, lookup_action
from wirt_wrapper.rules.config import load_config

LOST = "lost the connection to libvirt (End of file while reading data)"


@pytest.fixture
def hv(host: Host) -> Any:
    """A connected Hypervisor (timeout 0.5 s) on a test driver with one running domain."""
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None})
    hv = Hypervisor(load_config(str(host.config)).uri, timeout=0.5)
    hv.connect()
    hv.name = f"{alice.name}-web"
    return hv


class StandIn(Call):
    """A stand-in libvirt call: runs *act* (dom, params) where the real call would run."""

    def __init__(self, act: Any) -> None:
        super().__init__("destroy")
        object.__setattr__(self, "act", act)

    def invoke(self, dom: Any, params: Any, constants: Any) -> object:
        return self.act(dom, params)  # type: ignore[attr-defined]


def action(act: Any) -> Action:
    return Action("destroy", (), (), StandIn(act), "a stand-in action")


def mine(_owner: str | None, _vm: str | None) -> None:
    return None


def test_hung_after_the_call_was_sent_is_interrupted(hv: Any) -> None:
    hung = action(lambda dom, p: time.sleep(3))  # stand-in: libvirtd stops answering
    with pytest.raises(Interrupted, match="did not answer within 0.5 s"):
        hv.act_start(hv.name, hung, {}, mine).wait()


def test_hung_before_the_call_is_not_interrupted(hv: Any) -> None:
    def slow_owner_check(_owner: str | None, _vm: str | None) -> None:
        time.sleep(3)  # stand-in: stuck before anything was sent

    with pytest.raises(Unreachable) as caught:
        hv.act_start(hv.name, action(lambda dom, p: dom.destroy()), {}, slow_owner_check).wait()
    assert not isinstance(caught.value, Interrupted)


def test_connection_dropped_during_the_call_is_interrupted(
        hv: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def dropped(dom: Any, params: Any) -> None:
        monkeypatch.setattr(hv, "_alive", lambda: False)  # stand-in: libvirtd was killed
        raise libvirt.libvirtError("End of file while reading data")

    with pytest.raises(Interrupted, match="lost the connection to libvirt"):
        hv.act_start(hv.name, action(dropped), {}, mine).wait()
    assert hv.down


def test_libvirt_saying_no_is_still_failed(hv: Any) -> None:
    """The connection is fine: libvirt's own error is the outcome, nothing more."""
    outcome, message, info = hv.act_start(hv.name, lookup_action("start"), {}, mine).wait()
    assert (outcome, hv.down) == ("failed", None)
    assert "already running" in message and info is not None


def test_connection_dropped_after_the_call_keeps_done(
        hv: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def destroy_then_drop(dom: Any, params: Any) -> None:
        dom.destroy()  # the real action, done
        monkeypatch.setattr(hv, "_alive", lambda: False)  # stand-in: then libvirtd dies
        dom.state = lambda: (_ for _ in ()).throw(libvirt.libvirtError("Broken pipe"))

    assert hv.act_start(hv.name, action(destroy_then_drop), {}, mine).wait() == ("done", "", None)
    assert hv.down  # the next command stays pending instead of failing


@pytest.fixture
def run(host: Host) -> tuple[Pass, UserContext, dict[str, Any]]:
    alice = host.add_user("alice")
    host.write_config({f"{alice.name}-web": None})
    # The spawner (forks user sides) is not needed to answer one request.
    run = Pass(load_config(str(host.config)), Options(layouts=("wirt",)), spawner=None)  # type: ignore[arg-type]
    run.hv.connect()
    ctx = run.monitor.turn(pwd.getpwnam(alice.name), child=None, recovering=False)
    entry = {"domain": f"{alice.name}-web", "vm": "web", "action": "destroy", "tokens": []}
    return run, ctx, entry


def test_pass_records_interrupted_and_not_run(run: tuple[Pass, UserContext, dict[str, Any]],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Through 'run' as a user side sends it: the answer is deferred, and a trip that
    libvirt broke off is 'interrupted', one that never reached it 'failed'."""
    pass_, ctx, entry = run
    monitor = pass_.monitor

    def run_with(trip: Trip | None) -> dict[str, Any]:
        if trip is not None:
            monkeypatch.setattr(monitor.hv, "act_start", lambda *_args: trip)
        cid = f"{monitor.pass_id}-{len(ctx.ids) + 1}"
        ctx.ids.add(cid)
        monitor.journal.record(cid, "intent", uid=ctx.user.pw_uid, user=ctx.user.pw_name,
                               layout="wirt", file="destroy", ino=1, hist="h", **entry)
        answer = monitor.on_run(ctx, {"id": cid})
        assert isinstance(answer, Deferred)
        return answer.finish()

    reply = run_with(Trip.failing(Interrupted(LOST)))
    assert (reply["outcome"], reply["status"]) == ("interrupted", None)
    assert reply["message"].startswith(f"libvirt: {LOST} while this command ran; it may or may not")
    reply = run_with(Trip.failing(Unreachable(LOST)))
    assert (reply["outcome"], reply["message"], reply["status"]) == (
        "failed", f"libvirt: {LOST}; the command was not run: send it again", None)
    # and a trip that cannot start (libvirt down) is one that fails so
    monkeypatch.undo()
    pass_.hv.members[0].down = LOST
    reply = run_with(None)
    assert (reply["outcome"], reply["message"]) == (
        "failed", f"libvirt: {LOST}; the command was not run: send it again")


def test_pass_survives_losing_libvirt_during_an_inventory(
        run: tuple[Pass, UserContext, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: Unreachable escaped the pass (a traceback to cron, exit 1, users unserved)."""
    pass_, ctx, _ = run

    def lost(*_args: Any) -> None:
        raise Unreachable(LOST)  # what prefetch raises when the connection dropped

    monkeypatch.setattr(pass_.monitor.hv, "prefetch", lost)
    assert pass_.monitor.on_inventory(ctx, {"layout": "wirt", "vms": ["web"]}) == {"down": LOST}
