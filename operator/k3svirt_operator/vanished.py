"""Nodes removed from the cluster: what their operator can no longer do, another node's does.

A node's operator holds a finalizer (names.finalizer_for(node)) on every VM it runs, and publishes
NodePCIInventory/<node>, owned by the Node (ownerReference), so the garbage collector removes the
inventory when the Node goes. A node counts as vanished when both its Node and its inventory are
gone: a machine whose operator runs without a kubelet (no Node object ever) keeps its inventory and
is never taken for vanished. A VM being deleted whose node vanished then gets that node's finalizer
removed by any other node's operator: nobody else could ever finish its deletion. (Its domain and
disks went with the machine; its reservation pod goes with the Node, by the pod GC, or with the VM.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from k3svirt_common import names


def node_of(vm: Mapping[str, Any]) -> str | None:
    """The node that runs the VM: spec.nodeName, else the node that claimed it (status.node)."""
    return (vm.get("spec") or {}).get("nodeName") or (vm.get("status") or {}).get("node") or None


def stuck_on_other_nodes(vms: Iterable[Mapping[str, Any]], own_node: str) -> list[tuple[Mapping[str, Any], str]]:
    """VMs being deleted that wait for another node's finalizer: (vm, that node)."""
    found = []
    for vm in vms:
        meta = vm.get("metadata") or {}
        node = node_of(vm)
        if node and node != own_node and meta.get("deletionTimestamp") \
                and names.finalizer_for(node) in (meta.get("finalizers") or []):  # fmt: skip
            found.append((vm, node))
    return found


def without_finalizer(vm: Mapping[str, Any], node: str) -> dict[str, Any]:
    """The merge patch that removes `node`'s finalizer, valid only for the version read."""
    meta = vm["metadata"]
    kept = [f for f in meta.get("finalizers") or [] if f != names.finalizer_for(node)]
    return {"metadata": {"finalizers": kept, "resourceVersion": meta["resourceVersion"]}}


def release(vms: Iterable[Mapping[str, Any]], own_node: str, vanished: Callable[[str], bool],
            patch: Callable[[Mapping[str, Any], dict[str, Any]], None]) -> list[str]:  # fmt: skip
    """Releases the VMs of vanished nodes (`vanished(node)` asked once per node); their names."""
    verdict: dict[str, bool] = {}
    released = []
    for vm, node in stuck_on_other_nodes(vms, own_node):
        if node not in verdict:
            verdict[node] = vanished(node)
        if verdict[node]:
            patch(vm, without_finalizer(vm, node))
            released.append(f"{vm['metadata']['namespace']}/{vm['metadata']['name']}")
    return released
