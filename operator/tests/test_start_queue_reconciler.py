"""A burst of starts: the reconciler starts at most N domains at once and reports the others' place."""

from __future__ import annotations

import pytest
from k3svirt_common import names
from k3svirt_operator.domains import Observed
from k3svirt_operator.lifecycle import Power, ShutoffReason
from k3svirt_operator.startqueue import StartQueue
from k3svirt_operator.vm_reconciler import SpecProblem, VMReconciler
from k3svirt_operator.vmstate import VMState


class Dom:
    def __init__(self) -> None:
        self.created = 0

    def create(self) -> None:
        self.created += 1


def power_on(reconciler: VMReconciler, key: tuple[str, str], dom: Dom) -> float | None:
    observed = Observed(dom, Power.SHUTOFF, ShutoffReason.NONE, None, None)  # type: ignore[arg-type]
    return reconciler._apply_power(names.RunStrategy.ALWAYS, observed, None, [], VMState(), 1, 30.0, key=key)


def test_starts_beyond_the_slots_are_queued_with_their_position() -> None:
    queue = StartQueue(1)
    reconciler = VMReconciler(None, None, None, lambda ns, n: None, starts=queue)  # type: ignore[arg-type]
    first, second, third = Dom(), Dom(), Dom()
    queue.try_acquire(("ns", "busy"))  # a start under way holds the only slot
    with pytest.raises(SpecProblem) as waiting:
        power_on(reconciler, ("ns", "a"), first)
    problem = waiting.value
    assert (problem.status, problem.cond_type, problem.reason) == ("Starting", names.COND_READY, "Queued")
    assert "position 1 of 1" in problem.message and problem.requeue and not problem.warning and problem.once
    with pytest.raises(SpecProblem) as behind:
        power_on(reconciler, ("ns", "b"), second)
    assert "position 2 of 2" in behind.value.message
    assert first.created == second.created == 0

    queue.release(("ns", "busy"))
    power_on(reconciler, ("ns", "a"), first)  # its turn: started, and the slot is free again
    assert first.created == 1 and queue.starting == 0
    power_on(reconciler, ("ns", "b"), second)
    power_on(reconciler, ("ns", "c"), third)
    assert (second.created, third.created, queue.waiting) == (1, 1, 0)


def test_a_vm_that_no_longer_wants_to_start_leaves_the_line() -> None:
    queue = StartQueue(1)
    reconciler = VMReconciler(None, None, None, lambda ns, n: None, starts=queue)  # type: ignore[arg-type]
    queue.try_acquire(("ns", "busy"))
    with pytest.raises(SpecProblem):
        power_on(reconciler, ("ns", "a"), Dom())
    observed = Observed(Dom(), Power.SHUTOFF, ShutoffReason.NONE, None, None)  # type: ignore[arg-type]
    reconciler._apply_power(names.RunStrategy.HALTED, observed, None, [], VMState(), 1, 30.0, key=("ns", "a"))
    assert queue.position(("ns", "a")) is None
