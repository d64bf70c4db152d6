"""This node's passthrough devices in its Node's status, as extended resources the scheduler and the
kubelet count (k3svirt_common.pci_resources has the rules; docs/pci-passthrough.md the design)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from k3svirt_common import pci_resources
from k3svirt_common.kube import Client, core_path

log = logging.getLogger(__name__)


def publish(api: Client, node: str, passthroughs: Iterable[Mapping[str, Any]]) -> dict[str, int] | None:
    """Makes `node`'s `k3svirt.io/pci-*` capacity and allocatable count its Bound/Assigned
    PCIPassthroughs; what it published, None without a Node object (a control plane without
    kubelets has nothing to schedule against). One GET, and a PATCH only when they differ."""
    want = pci_resources.node_capacity(passthroughs, node)
    found = api.get_or_none(core_path("nodes", name=node))
    if found is None:
        return None
    patch = pci_resources.capacity_patch(found.get("status") or {}, want)
    if patch is not None:
        api.patch(core_path("nodes", name=node, sub="status"), patch)
        log.info("device capacity published", extra={"node": node, "capacity": want})
    return want
