"""Which VMs this node's operator claims and watches (k3svirt_operator.placement): the pure decisions and
the claimer's bookkeeping over watch events. The field selectors themselves against the real API server:
tests/test_vm_field_selectors.py; two operators claiming one VM: tests/e2e/test_vm_placement.py."""

from __future__ import annotations

import pytest
from k3svirt_common.kube import SYNC, ApiError, WatchEvent
from k3svirt_operator import placement


def vm(name: str, *, node: str | None = None, selector: dict | None = None, claimed: str | None = None,
       deleting: bool = False, rv: str = "5") -> dict:  # fmt: skip
    meta = {"namespace": "ns", "name": name, "resourceVersion": rv}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T03:00:00Z"
    spec = {"nodeName": node} if node else ({"nodeSelector": selector} if selector is not None else {})
    return {"metadata": meta, "spec": spec, "status": {"node": claimed} if claimed else {}}


def test_selectors_name_this_node():
    assert placement.watch_selector("n1") == "status.node=n1"
    assert placement.claim_selectors("n1") == ("spec.nodeName=n1,status.node=", "spec.nodeName=,status.node=")


def test_decide():
    labels = {"pool": "a"}
    assert placement.decide(vm("pinned", node="n1"), "n1", labels) == "claim"
    assert placement.decide(vm("elsewhere", node="n2"), "n1", labels) == "skip"
    assert placement.decide(vm("matched", selector={"pool": "a"}), "n1", labels) == "claim"
    assert placement.decide(vm("no-selector", selector={}), "n1", labels) == "claim"  # any node
    assert placement.decide(vm("nomatch", selector={"pool": "b"}), "n1", labels) == "wait"
    assert placement.decide(vm("taken", node="n1", claimed="n2"), "n1", labels) == "skip"
    assert placement.decide(vm("taken", selector={"pool": "a"}, claimed="n2"), "n1", labels) == "skip"
    assert placement.decide(vm("going", node="n1", deleting=True), "n1", labels) == "skip"
    assert placement.decide({"metadata": {"name": "bare"}}, "n1", labels) == "claim"  # no spec at all


class Recorder:
    def __init__(self, owner: str = "n1", fail: ApiError | None = None) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.owner, self.fail = owner, fail

    def __call__(self, ns: str, name: str, rv: str) -> str | None:
        self.calls.append((ns, name, rv))
        if self.fail is not None:
            raise self.fail
        return self.owner


def test_claimer_claims_pinned_and_matching_and_keeps_the_rest_waiting_until_the_labels_match():
    labels = {"pool": "a"}
    claim = Recorder()
    c = placement.Claimer(None, "n1", lambda: labels, claim)  # type: ignore[arg-type]
    items = [vm("pinned", node="n1"), vm("match", selector={"pool": "a"}), vm("later", selector={"pool": "b"}, rv="9")]
    c._event(WatchEvent(SYNC, {"items": items, "metadata": {}}))
    assert claim.calls == [("ns", "pinned", "5"), ("ns", "match", "5")]
    assert c.claimed == 2 and set(c._waiting) == {("ns", "later")}
    c.relabeled()  # nothing new matches
    assert len(claim.calls) == 2
    labels["pool"] = "b"
    c.relabeled()
    assert claim.calls[-1] == ("ns", "later", "9") and not c._waiting


def test_claimer_forgets_a_waiting_vm_that_left_the_selection_or_changed_its_selector():
    claim = Recorder()
    c = placement.Claimer(None, "n1", lambda: {}, claim)  # type: ignore[arg-type]
    c._event(WatchEvent("ADDED", vm("w", selector={"pool": "b"})))
    assert set(c._waiting) == {("ns", "w")}
    c._event(WatchEvent("DELETED", vm("w", selector={"pool": "b"})))  # deleted, or claimed by another node
    assert not c._waiting
    c._event(WatchEvent("ADDED", vm("w2", selector={"pool": "b"})))
    c._event(WatchEvent("MODIFIED", vm("w2", selector={}, rv="6")))  # edited: now matches any node
    assert claim.calls == [("ns", "w2", "6")] and not c._waiting
    c._event(WatchEvent(SYNC, {"items": [], "metadata": {}}))  # a relist replaces what waits
    assert not c._waiting


def test_claimer_lost_race_and_gone_vm_are_no_error_but_an_unreachable_api_server_is():
    lost = Recorder(owner="n2")
    c = placement.Claimer(None, "n1", lambda: {}, lost)  # type: ignore[arg-type]
    c._event(WatchEvent("ADDED", vm("x", node="n1")))
    assert c.claimed == 0
    gone = Recorder(fail=ApiError(404, "NotFound", "gone"))
    c = placement.Claimer(None, "n1", lambda: {}, gone)  # type: ignore[arg-type]
    c._event(WatchEvent("ADDED", vm("x", node="n1")))
    down = Recorder(fail=ApiError(0, "Unreachable", "no answer"))
    c = placement.Claimer(None, "n1", lambda: {}, down)  # type: ignore[arg-type]
    with pytest.raises(ApiError):  # the thread starts a new list+watch after a back-off: it finds the VM again
        c._event(WatchEvent("ADDED", vm("x", node="n1")))
