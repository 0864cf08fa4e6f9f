"""libvirt lifecycle events for the watch service (runs as root).

A VM that changes state by itself (the guest powered off, crashed) should
have its owner's status.xml refreshed without waiting for the full pass.
This module keeps one long-lived, read-only connection of its own with
libvirt's default event loop (registered before any connection is opened,
run on a daemon thread) and a lifecycle callback.  The callback runs on the
event thread and only queues the domain's name and wakes the service's
selector (a pipe): it never calls libvirt, and nothing here touches a
pass's connection.  The service hints the members whose VM folder would
name that domain (:class:`wirt_wrapper.rules.actions.Claimants`); their mini
pass reads the state and decides ownership as every pass does.

When libvirtd goes away (the close callback, or ``isAlive`` false), a keeper
thread reconnects with a growing pause (1 s up to 30 s) and then asks for a
full pass: events were missed meanwhile.
"""

from __future__ import annotations

import os
import queue
import threading
from contextlib import suppress
from typing import Any

import libvirt

__all__ = ["LifecycleEvents"]

ALIVE_CHECK = 5.0  # seconds between isAlive checks of the event connection
BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)

_loop_started = False
_loop_lock = threading.Lock()


def _start_event_loop() -> None:
    """libvirt's default event loop on a daemon thread (once per process)."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


class LifecycleEvents:
    """The domains (name and UUID) libvirt reported a lifecycle event for, and
    'reconnected'."""

    def __init__(self, uri: str) -> None:
        _start_event_loop()
        self.uri = uri
        self.names: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()  # (name, UUID)
        self.reconnected = threading.Event()
        self.connected = threading.Event()
        self.lost = threading.Event()
        self.stopping = threading.Event()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.conn: libvirt.virConnect | None = None
        self.keeper = threading.Thread(target=self._keep, name="libvirt-events-keeper",
                                       daemon=True)
        self.keeper.start()

    def fileno(self) -> int:
        return self.wake_r

    def _wake(self) -> None:
        with suppress(OSError):  # full: a wake-up is pending anyway
            os.write(self.wake_w, b"x")

    # -- the event thread ---------------------------------------------------------------
    def _on_lifecycle(self, _conn: Any, dom: Any, _event: int, _detail: int,
                      _opaque: Any) -> None:
        self.names.put((dom.name(), dom.UUIDString()))  # held by the object: no call
        self._wake()

    def _on_close(self, _conn: Any, _reason: int, _opaque: Any) -> None:
        self.lost.set()

    # -- the keeper thread ---------------------------------------------------------------
    def _keep(self) -> None:
        attempt = 0
        first = True
        while not self.stopping.is_set():
            try:
                conn = libvirt.openReadOnly(self.uri)
                conn.registerCloseCallback(self._on_close, None)
                conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                            self._on_lifecycle, None)
                with suppress(libvirt.libvirtError):
                    conn.setKeepAlive(5, 3)  # not every driver has keepalive (test://)
            except libvirt.libvirtError:
                self.stopping.wait(BACKOFF[min(attempt, len(BACKOFF) - 1)])
                attempt += 1
                continue
            self.conn = conn
            self.connected.set()
            if not first or attempt:  # it was away (or not there at the start): a full
                self.reconnected.set()  # pass serves what waited meanwhile
                self._wake()
            first, attempt = False, 0
            while not self.stopping.is_set():
                if self.lost.wait(ALIVE_CHECK):
                    break
                try:
                    if not conn.isAlive():
                        break
                except libvirt.libvirtError:
                    break
            self.lost.clear()
            self.connected.clear()
            self.conn = None
            with suppress(libvirt.libvirtError):
                conn.close()

    # -- the service's side ---------------------------------------------------------------
    def take(self) -> tuple[set[tuple[str, str]], bool]:
        """The domains (name, UUID) queued since the last call, and whether a reconnect
        happened."""
        with suppress(OSError):
            while os.read(self.wake_r, 4096):
                pass
        names: set[tuple[str, str]] = set()
        while True:
            try:
                names.add(self.names.get_nowait())
            except queue.Empty:
                break
        reconnected = self.reconnected.is_set()
        self.reconnected.clear()
        return names, reconnected

    def close(self) -> None:
        """Stop reconnecting; the daemon threads end with the process."""
        self.stopping.set()
        self.lost.set()
