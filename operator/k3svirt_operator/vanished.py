"""Nodes removed from the cluster: what their operator can no longer do, another node's does.

A node's operator holds a finalizer (names.finalizer_for(node)) on every VM it runs, and publishes
NodePCIInventory/<node>, owned by the Node (ownerReference), so the garbage collector removes the
inventory when the Node goes. A node counts as vanished when its Node is gone and its inventory is
gone or abandoned: every running operator refreshes its inventory (status.updatedAt, every
pci_inventory_seconds), so a machine whose operator runs without a kubelet (no Node object ever)
is never taken for vanished while it runs; one whose operator has not written for the abandon window
(an hour by default) has left, and its inventory goes with the sweep. A VM being deleted whose node
vanished then gets that node's finalizer removed by any other node's operator: nobody else could
ever finish its deletion. (Its domain and disks went with the machine; its reservation pod goes with
the Node, by the pod GC, or with the VM. A machine that comes back after the window finds its
domains of VMs deleted meanwhile still defined.)

The same holds for VMTemplates: every node's operator guards a template's deletion (the template
must not be in use) with its own finalizer, so a template deleted after a node left would wait for
that node forever. Which node a finalizer names is looked up among the known nodes (those VMs name
and those with a NodePCIInventory, i.e. every node whose operator runs), else read from the
finalizer itself. A long name's finalizer is cut and hashed (names.finalizer_for) and then also
reads as a shorter name; a live node is always known, so such a reading is only ever made for a node
that is gone, and then the shorter name is gone as well.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from k3svirt_common import names


def node_of(vm: Mapping[str, Any]) -> str | None:
    """The node that runs the VM: spec.nodeName, else the node that claimed it (status.node)."""
    return (vm.get("spec") or {}).get("nodeName") or (vm.get("status") or {}).get("node") or None


def inventory_abandoned(inventory: Mapping[str, Any] | None, now: datetime.datetime, after_seconds: float) -> bool:
    """No NodePCIInventory, or one its operator has not refreshed for `after_seconds` (the last
    status.updatedAt, else its creation); a stamp that cannot be read counts as never refreshed."""
    if inventory is None:
        return True
    stamp = (inventory.get("status") or {}).get("updatedAt") or (inventory.get("metadata") or {}).get(
        "creationTimestamp"
    )
    try:
        written = datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return True
    if written.tzinfo is None:
        written = written.replace(tzinfo=datetime.UTC)
    return (now - written).total_seconds() > after_seconds


def finalizer_nodes(finalizers: Iterable[str], known: Iterable[str] = ()) -> dict[str, str]:
    """The node each of our node finalizers names ({finalizer: node}); unrecognised hashed ones left out."""
    by_finalizer = {names.finalizer_for(n): n for n in known if n}
    out = {}
    for f in finalizers:
        if not f.startswith(names.FINALIZER_PREFIX):
            continue
        node = f[len(names.FINALIZER_PREFIX) :]
        if f in by_finalizer:  # first: a long node's hashed finalizer also reads as a (shorter) name
            out[f] = by_finalizer[f]
        elif node and names.finalizer_for(node) == f:
            out[f] = node
    return out


def stuck_on_other_nodes(objs: Iterable[Mapping[str, Any]], own_node: str,
                         known: Iterable[str] = ()) -> list[tuple[Mapping[str, Any], list[str]]]:  # fmt: skip
    """Objects being deleted that wait for other nodes' finalizers: (object, those nodes)."""
    known = set(known)
    found = []
    for obj in objs:
        meta = obj.get("metadata") or {}
        if not meta.get("deletionTimestamp"):
            continue
        hint = node_of(obj)
        held = finalizer_nodes(meta.get("finalizers") or [], known | ({hint} if hint else set()))
        others = [n for n in held.values() if n != own_node]
        if others:
            found.append((obj, others))
    return found


def without_finalizers(obj: Mapping[str, Any], nodes: Iterable[str]) -> dict[str, Any]:
    """The merge patch that removes these nodes' finalizers, valid only for the version read."""
    meta = obj["metadata"]
    gone = {names.finalizer_for(n) for n in nodes}
    kept = [f for f in meta.get("finalizers") or [] if f not in gone]
    return {"metadata": {"finalizers": kept, "resourceVersion": meta["resourceVersion"]}}


def release(objs: Iterable[Mapping[str, Any]], own_node: str, vanished: Callable[[str], bool],
            patch: Callable[[Mapping[str, Any], dict[str, Any]], None],
            known: Iterable[str] = ()) -> list[str]:  # fmt: skip
    """Releases objects held by vanished nodes (`vanished(node)` asked once per node); their names.

    One patch per object removes every vanished node's finalizer at once (the patch carries the
    version read, so two patches for one object would conflict)."""
    verdict: dict[str, bool] = {}
    released = []
    for obj, nodes in stuck_on_other_nodes(objs, own_node, known):
        for node in nodes:
            if node not in verdict:
                verdict[node] = vanished(node)
        gone = [n for n in nodes if verdict[n]]
        if gone:
            patch(obj, without_finalizers(obj, gone))
            meta = obj["metadata"]
            released.append(f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"])
    return released
