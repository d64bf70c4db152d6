"""Process-wide state of the operator: settings, the libvirt connection, the running VM loops, this
node's PCI claims, and its reads and writes of Kubernetes objects."""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from k3svirt_common import names, templates
from k3svirt_common.kube import ApiError, Client, core_path, k3svirt_path

from . import device_capacity, vanished
from .accel import Acceleration
from .config import Settings
from .libvirt_conn import LibvirtConnection
from .pci.claims import Claims
from .vmstate import Loops

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Runtime:
    settings: Settings
    libvirt: LibvirtConnection
    accel: Acceleration
    api: Client
    loop: asyncio.AbstractEventLoop
    loops: Loops = field(init=False)
    claims: Claims = field(default_factory=Claims)

    def __post_init__(self) -> None:
        self.loops = Loops(self.loop)

    # ------------------------------------------------------------------ Kubernetes access
    def get_object(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.api.get_or_none(k3svirt_path(plural, namespace, name))

    def list_objects(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.api.get(k3svirt_path(plural, namespace))["items"]

    def scan(self, plural: str, namespace: str | None, keep: Callable[[dict[str, Any]], T | None],
             page: int = 200) -> list[T]:  # fmt: skip
        """keep(obj) of every object, in pages: only one page of whole objects is held at a time (a
        cluster's 2000 VMs are ~6 MiB of JSON). An expired continue token starts the scan over."""
        kept: list[T] = []
        token = None
        while True:
            try:
                out = self.api.get(k3svirt_path(plural, namespace), query={"limit": page, "continue": token})
            except ApiError as exc:
                if not (exc.expired and token):
                    raise
                kept, token = [], None
                continue
            kept.extend(k for k in map(keep, out.get("items") or ()) if k is not None)
            token = (out.get("metadata") or {}).get("continue")
            if not token:
                return kept

    def template_usage(self, namespace: str) -> list[dict[str, Any]]:
        """What VMTemplate status and the deletion guard read of each VM of the namespace."""
        return self.scan(names.VM_PLURAL, namespace, templates.usage_of)

    def deleting_objects(self, plural: str, nodes: set[str] | None = None) -> list[dict[str, Any]]:
        """The objects of a kind being deleted, cluster-wide (what vanished.release looks at); `nodes`
        collects the node of every object scanned (the known nodes of vanished.finalizer_nodes)."""

        def keep(obj: dict[str, Any]) -> dict[str, Any] | None:
            if nodes is not None and (node := vanished.node_of(obj)):
                nodes.add(node)
            return obj if obj["metadata"].get("deletionTimestamp") else None

        return self.scan(plural, None, keep)

    def claim_vm(self, namespace: str, name: str, resource_version: str) -> str | None:
        """Writes status.node = this node unless another operator got there first; returns the owner.

        The write carries the resourceVersion, so of two nodes claiming at once exactly one wins. A
        conflict caused by another change (e.g. a finalizer added) is retried with the fresh version.
        """
        for _ in range(10):
            body = {"metadata": {"resourceVersion": resource_version}, "status": {"node": self.settings.node_name}}
            try:
                self.api.patch(k3svirt_path(names.VM_PLURAL, namespace, name, "status"), body)
                return self.settings.node_name
            except ApiError as exc:
                if exc.status != 409:
                    raise
            current = self.get_object(names.VM_PLURAL, namespace, name)
            if current is None:
                return None
            owner = (current.get("status") or {}).get("node")
            if owner:
                return owner
            resource_version = current["metadata"]["resourceVersion"]
        return None

    def node_labels(self) -> dict[str, str]:
        """Labels of this node's Node object (none in a control plane without kubelets). Raises
        ApiError when the API server does not answer: the caller keeps the labels it had."""
        try:
            node = self.api.get(core_path("nodes", name=self.settings.node_name))
        except ApiError as exc:
            if not exc.answered:
                raise
            return {}
        return dict((node.get("metadata") or {}).get("labels") or {})

    def publish_device_capacity(self, passthroughs: Iterable[Mapping[str, Any]]) -> dict[str, int] | None:
        return device_capacity.publish(self.api, self.settings.node_name, passthroughs)

    def node_uid(self, node: str) -> str | None:
        """The uid of Node `node`, None when there is no such Node."""
        found = self.api.get_or_none(core_path("nodes", name=node))
        return None if found is None else found["metadata"]["uid"]

    def ensure_node_inventory(self, node: str) -> None:
        """NodePCIInventory/<node> exists and is owned by the Node (when there is one): the garbage
        collector removes it when the node leaves the cluster (vanished.py)."""
        uid = self.node_uid(node)
        owners = [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}] if uid else []
        body = {"apiVersion": names.API_VERSION, "kind": names.NODEPCIINVENTORY_KIND,
                "metadata": {"name": node, "ownerReferences": owners}}  # fmt: skip
        try:
            self.api.create(k3svirt_path(names.NODEPCIINVENTORY_PLURAL, None), body)
            return
        except ApiError as exc:
            if exc.status != 409:
                raise
        current = self.get_object(names.NODEPCIINVENTORY_PLURAL, None, node)
        if uid and current is not None and (current["metadata"].get("ownerReferences") or []) != owners:
            self.api.patch(
                k3svirt_path(names.NODEPCIINVENTORY_PLURAL, None, node), {"metadata": {"ownerReferences": owners}}
            )

    def node_vanished(self, node: str) -> bool:
        """Node `node` left the cluster: no Node, and no NodePCIInventory its operator still refreshes."""
        return self._left(node, self.get_object(names.NODEPCIINVENTORY_PLURAL, None, node))

    def abandoned_inventories(self, inventories: Iterable[Mapping[str, Any]]) -> list[str]:
        """Inventories of other nodes without a Node whose operator stopped writing them (vanished.py)."""
        return [n for inv in inventories if (n := inv["metadata"]["name"]) != self.settings.node_name
                and self._left(n, inv)]  # fmt: skip

    def _left(self, node: str, inventory: Mapping[str, Any] | None) -> bool:
        now = datetime.datetime.now(datetime.UTC)
        abandoned = vanished.inventory_abandoned(inventory, now, self.settings.abandoned_after_seconds)
        return abandoned and self.node_uid(node) is None

    def patch_object(self, plural: str, obj: Mapping[str, Any], body: Mapping[str, Any]) -> None:
        """A merge patch of an object read before (the body may carry its resourceVersion)."""
        meta = obj["metadata"]
        try:
            self.api.patch(k3svirt_path(plural, meta.get("namespace"), meta["name"]), dict(body))
        except ApiError as exc:
            if exc.status not in (404, 409):  # gone, or changed since read: the next round looks again
                raise

    def create_object(self, plural: str, namespace: str | None, body: Mapping[str, Any]) -> None:
        """Creates an object of ours; one that exists already (409) is left as it is."""
        try:
            self.api.create(k3svirt_path(plural, namespace), body)
        except ApiError as exc:
            if exc.status != 409:
                raise

    def create_vm(self, body: Mapping[str, Any]) -> None:
        """A restore's clone: the VM object, created once (ApiError 409 when the name is taken)."""
        self.api.create(k3svirt_path(names.VM_PLURAL, body["metadata"]["namespace"]), dict(body))

    def delete_object(self, plural: str, namespace: str | None, name: str) -> None:
        """Deletes an object of ours; one that is gone already (404) is fine."""
        try:
            self.api.delete(k3svirt_path(plural, namespace, name))
        except ApiError as exc:
            if exc.status != 404:
                raise

    def patch_status(self, plural: str, namespace: str | None, name: str, status: Mapping[str, Any]) -> None:
        try:
            self.api.patch(k3svirt_path(plural, namespace, name, "status"), {"status": dict(status)})
        except ApiError as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report on
                raise
