"""Which VMs of nodes that left the cluster get their finalizer released (k3svirt_operator.vanished)."""

from __future__ import annotations

import datetime

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
    assert got == [("gone-named", ["n2"]), ("gone-claimed", ["n2"])]


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


def template(name: str, finalizers: list[str]) -> dict:
    meta = {"namespace": "lib", "name": name, "resourceVersion": "9", "finalizers": finalizers,
            "deletionTimestamp": "2026-12-02T03:00:00Z"}  # fmt: skip
    return {"metadata": meta, "spec": {}}


def test_a_template_held_by_every_nodes_finalizer_loses_those_of_vanished_nodes_in_one_patch():
    # Each node's operator guards a template's deletion with its own finalizer (kopf's persistence).
    fins = [names.finalizer_for(n) for n in ("n1", "n2", "n3", "n4")] + ["other.io/keep"]
    patched = []
    released = vanished.release([template("t", fins)], "n1", lambda n: n in ("n2", "n4"),
                                lambda o, body: patched.append(body))  # fmt: skip
    assert released == ["lib/t"]
    # n1's own and n3's (still there) stay; one patch, at the version read.
    assert patched == [{"metadata": {"finalizers": [fins[0], fins[2], "other.io/keep"], "resourceVersion": "9"}}]


def test_a_hashed_finalizer_is_read_as_the_known_node_it_stands_for():
    long_node = "edge-" + "x" * 80  # too long for a finalizer: cut and hashed
    fin = names.finalizer_for(long_node)
    assert fin != names.FINALIZER_PREFIX + long_node
    # Unknown, it reads as a shorter name (which is gone whenever the long node is: see vanished.py).
    assert vanished.finalizer_nodes([fin]) == {fin: fin.removeprefix(names.FINALIZER_PREFIX)}
    assert vanished.finalizer_nodes([fin], [long_node]) == {fin: long_node}
    # A VM names its node, which is how its own hashed finalizer is recognised.
    assert vanished.stuck_on_other_nodes([vm("v", node=long_node)], "n1") == [(vm("v", node=long_node), [long_node])]


def test_foreign_and_prefix_lookalike_finalizers_are_never_taken_for_nodes():
    fins = ["k3svirt.io/node-", "example.com/node-n2", "k3svirt.io/nodes-n2", "kubernetes"]
    assert vanished.finalizer_nodes(fins) == {}
    asked = []
    assert vanished.release([template("t", fins)], "n1", lambda n: asked.append(n) or True, lambda o, b: None) == []
    assert asked == []


NOW = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC)


def inventory(updated: str | None = None, created: str = "2026-12-01T00:00:00Z") -> dict:
    return {"metadata": {"name": "n2", "creationTimestamp": created},
            "status": {"updatedAt": updated} if updated else {}}  # fmt: skip


def test_an_inventory_its_operator_refreshes_keeps_its_node():
    assert not vanished.inventory_abandoned(inventory("2026-12-02T11:59:00Z"), NOW, 3600)
    assert not vanished.inventory_abandoned(inventory("2026-12-02T11:00:01Z"), NOW, 3600)


def test_no_inventory_or_one_not_refreshed_for_the_window_is_abandoned():
    assert vanished.inventory_abandoned(None, NOW, 3600)
    assert vanished.inventory_abandoned(inventory("2026-12-02T10:59:59Z"), NOW, 3600)


def test_an_inventory_never_refreshed_counts_from_its_creation():
    assert not vanished.inventory_abandoned(inventory(created="2026-12-02T11:30:00Z"), NOW, 3600)
    assert vanished.inventory_abandoned(inventory(created="2026-12-02T10:00:00Z"), NOW, 3600)


def test_an_unreadable_stamp_counts_as_never_refreshed():
    assert vanished.inventory_abandoned(inventory("yesterday"), NOW, 3600)
    assert vanished.inventory_abandoned({"metadata": {"name": "n2"}}, NOW, 3600)
