"""The pass's Baton (root.scheduler): root's code runs one thread at a time, and a thread
that waits for libvirt lets the others run meanwhile (issue 13: calls pipelined across
users).  Plain threads stand in for the turns' threads and a sleep for libvirt's answer:
what is tested is the hand-over, which needs no libvirt."""

from __future__ import annotations

import threading
import time

from wirt_wrapper.root.scheduler import Baton


def test_a_wait_lets_another_thread_run_and_root_code_never_overlaps() -> None:
    baton = Baton()
    inside = 0
    overlap: list[int] = []
    order: list[str] = []

    def turn(name: str) -> None:
        nonlocal inside
        with baton:
            inside += 1
            overlap.append(inside)
            order.append(f"{name} asks")
            inside -= 1
            with baton.let_go():  # waiting for libvirt
                time.sleep(0.2)
            inside += 1
            overlap.append(inside)
            order.append(f"{name} answered")
            inside -= 1

    threads = [threading.Thread(target=turn, args=(n,)) for n in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # both asked before either was answered: the two waits overlapped
    assert order[:2] in (["alice asks", "bob asks"], ["bob asks", "alice asks"])
    assert max(overlap) == 1  # never two threads in root's code at once


def test_a_thread_without_the_baton_just_waits() -> None:
    """A host's connect thread waits for libvirt without the baton: let_go is a no-op
    for it (it must not release what another thread holds)."""
    baton = Baton()
    with baton:
        done = threading.Event()

        def other() -> None:
            with baton.let_go():
                done.set()

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(1)
        assert done.is_set()
        # the baton is still ours: another thread cannot take it
        taken = threading.Event()
        grab = threading.Thread(target=lambda: (baton.__enter__(), taken.set(),
                                                baton.__exit__()))
        grab.start()
        grab.join(0.2)
        assert not taken.is_set()
    grab.join(1)
    assert taken.is_set()
