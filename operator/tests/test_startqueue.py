"""At most N domain starts at once; the others wait in line, know their place, and are woken."""

from __future__ import annotations

import threading

import pytest
from k3svirt_operator.startqueue import StartQueue, StartQueueMetrics


def test_slots_then_positions_in_arrival_order() -> None:
    q = StartQueue(2)
    assert q.try_acquire("a") == 0 and q.try_acquire("b") == 0
    assert [q.try_acquire(k) for k in ("c", "d", "e")] == [1, 2, 3]
    assert q.try_acquire("d") == 2  # asking again keeps the place
    assert (q.waiting, q.starting) == (3, 2)
    assert q.message(2) == (
        "waiting to start: position 2 of 3 in this node's start queue (at most 2 domains start at once)"
    )


def test_release_wakes_the_next_and_only_they_get_the_slot() -> None:
    woken: list[str] = []
    q = StartQueue(1, wake=woken.append)
    assert q.try_acquire("a") == 0
    assert q.try_acquire("b") == 1 and q.try_acquire("c") == 2
    assert q.try_acquire("c") == 2  # no slot free: c stays behind b
    q.release("a")
    assert woken == ["b"]
    assert q.try_acquire("c") == 2  # the free slot is b's
    assert q.try_acquire("b") == 0
    assert q.position("c") == 1
    assert q.started_total == 1 and q.queued_total == 2


def test_acquire_while_holding_is_idempotent() -> None:
    q = StartQueue(1)
    assert q.try_acquire("a") == 0 and q.try_acquire("a") == 0
    assert q.starting == 1 and q.waiting == 0


def test_leave_frees_the_line_for_those_behind() -> None:
    woken: list[str] = []
    q = StartQueue(1, wake=woken.append)
    q.try_acquire("a")
    q.try_acquire("b")
    q.try_acquire("c")
    q.leave("b")  # b was deleted while waiting
    assert q.position("c") == 1 and woken == []  # still no free slot
    q.leave("a")  # a's loop ended while holding a slot
    assert woken == ["c"] and q.try_acquire("c") == 0
    q.leave("nobody")  # harmless
    assert woken == ["c"]


def test_many_threads_never_exceed_the_slots() -> None:
    q = StartQueue(3)
    running, peak, lock = [0], [0], threading.Lock()

    def vm(key: int) -> None:
        while q.try_acquire(key):
            threading.Event().wait(0.001)
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        threading.Event().wait(0.002)
        with lock:
            running[0] -= 1
        q.release(key)

    threads = [threading.Thread(target=vm, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert peak[0] == 3 and q.started_total == 40 and q.waiting == 0 and q.starting == 0


def test_metrics() -> None:
    q = StartQueue(2)
    for k in "abcd":
        q.try_acquire(k)
    values = {m.name: m.samples[0].value for m in StartQueueMetrics(q).collect()}
    assert values["k3svirt_start_queue_waiting"] == 2
    assert values["k3svirt_start_queue_starting"] == 2
    assert values["k3svirt_start_queue_slots"] == 2
    assert values["k3svirt_start_queue_queued"] == 2


def test_slots_must_be_positive() -> None:
    with pytest.raises(ValueError):
        StartQueue(0)
