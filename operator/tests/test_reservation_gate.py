"""The start gate judges the reservation the watch shows now (vm_reconciler.newest_reservation): a pod
the kubelet admitted while the pass made disks starts the domain without a fresh GET."""

from __future__ import annotations

from typing import Any

from k3svirt_common import reservation as rsv
from k3svirt_operator.vm_reconciler import VMReconciler, newest_reservation
from k3svirt_operator.vmstate import VMState


def pod(uid: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "k3svirt-vm-a", "uid": uid}, "spec": {}, "status": status}


def test_the_live_pod_of_the_same_uid_wins():
    created = pod("p1")  # what this pass's POST answered: Pending
    admitted = pod("p1", startTime="2026-12-02T18:00:00Z")
    assert newest_reservation(created, admitted) is admitted
    assert newest_reservation(None, admitted) is admitted  # seen only by the watch so far
    assert newest_reservation(created, None) is created  # not in the index yet


def test_a_live_pod_of_another_uid_is_a_predecessor_and_does_not_count():
    held = pod("p2")
    predecessor = pod("p1", startTime="2026-12-02T18:00:00Z")
    assert newest_reservation(held, predecessor) is held


class Gate:
    """Stands in for Reservations: records what the gate judged."""

    def __init__(self) -> None:
        self.judged: list[Any] = []

    def admit_fresh(self, ns, name, uid, spec, pod, devices):  # noqa: ANN001, ANN201
        self.judged.append(pod)
        state = rsv.State.ADMITTED if (pod or {}).get("status", {}).get("startTime") else rsv.State.PENDING
        return rsv.View(state), pod


def test_the_gate_reads_the_live_index_before_judging():
    gate = Gate()
    reconciler = VMReconciler(None, None, None, lambda ns, n: None)  # type: ignore[arg-type]
    reconciler.reservations = gate  # type: ignore[assignment]
    admitted = pod("p1", startTime="2026-12-02T18:00:00Z")
    held: dict[str, Any] = {"pod": pod("p1"), "devices": None, "live": lambda: admitted}
    reconciler._admit("ns", "a", "vm-uid", {}, VMState(), held)  # admitted: returns, no exception
    assert gate.judged == [admitted] and held["pod"] is admitted
