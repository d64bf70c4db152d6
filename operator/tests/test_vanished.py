"""Which VMs of nodes that left the cluster get their finalizer released (k3svirt_operator.vanished)."""

from __future__ import annotations

from k3svirt_common import names
from k3svirt_operator import vanished


def vm(name: str, *, node: str | None = None, claimed: str | None = None, deleting: bool = True,
       finalizers: list[str] | None = None) -> dict:  # fmt: skip
    if finalizers is None:
        finalizers = [names.finalizer_for(node or claimed or "")]
    meta = {"namespace": "ns", "name": name, "resourceVersion": "7", "finalizers": finalizers}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T03:00:00Z"
    spec = {"nodeName": node} if node else {}
    return {"metadata": meta, "spec": spec, "status": {"node": claimed} if claimed else {}}


def test_only_deleting_vms_held_by_another_nodes_finalizer_are_candidates():
    vms = [
        vm("gone-named", node="n2"),
        vm("gone-claimed", claimed="n2"),
        vm("mine", node="n1"),
        vm("running", node="n2", deleting=False),
        vm("released-already", node="n2", finalizers=["other.io/keep"]),
        vm("unplaced", finalizers=["other.io/keep"]),
    ]
    got = [(v["metadata"]["name"], n) for v, n in vanished.stuck_on_other_nodes(vms, "n1")]
    assert got == [("gone-named", "n2"), ("gone-claimed", "n2")]


def test_release_asks_once_per_node_and_patches_only_vanished_ones():
    vms = [vm("a", node="n2", finalizers=[names.finalizer_for("n2"), "other.io/keep"]), vm("b", node="n2"),
           vm("c", node="n3")]  # fmt: skip
    asked, patched = [], []
    released = vanished.release(vms, "n1", lambda n: asked.append(n) or n == "n2",
                                lambda v, body: patched.append((v["metadata"]["name"], body)))  # fmt: skip
    assert asked == ["n2", "n3"]
    assert released == ["ns/a", "ns/b"]
    # Other finalizers stay; the patch is valid only for the version read (optimistic concurrency).
    assert patched[0] == ("a", {"metadata": {"finalizers": ["other.io/keep"], "resourceVersion": "7"}})
    assert patched[1] == ("b", {"metadata": {"finalizers": [], "resourceVersion": "7"}})
