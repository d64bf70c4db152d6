"""Passthrough devices in the scheduler's books: extended resources on the Node.

Every PCIPassthrough that is Bound (free) or Assigned (held by a VM) on a node counts as one unit of
the extended resource `k3svirt.io/pci-<vendor>-<device>` in that Node's capacity and allocatable, and
a VM's reservation pod requests one unit per host device it uses. kube-scheduler and the kubelet then
count devices like CPU: a pod (or VM reservation) asking for a device class is placed only where a
unit is free, and ResourceQuota can limit them per namespace (`requests.k3svirt.io/pci-8086-10fb`).

Why the Node status and not the kubelet's device-plugin API (docs/pci-passthrough.md): the operator
is already the one authority on which device is free (it binds them to vfio-pci and records the
claims), the operator stays a single Python process without a gRPC stack, and the kubelet keeps
extended resources it did not create: it copies every capacity key into allocatable on each status
update. Only a kubelet that re-registers after losing its device-manager checkpoint zeroes them;
the operator's periodic publication restores them within one interval.

Pure functions; the operator publishes (k3svirt_operator.handlers), the gateway lists.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from . import names

PREFIX = f"{names.GROUP}/pci-"
COUNTED_PHASES = ("Bound", "Assigned")  # usable now or in use; Pending/Failed devices are not offered
_HEX4 = re.compile(r"(?:0x)?([0-9a-fA-F]{4})")


def resource_name(vendor_id: Any, device_id: Any) -> str | None:
    """`k3svirt.io/pci-8086-10fb` for vendor 8086, device 10fb (sysfs' "0x8086" also accepted);
    None when either is not 4 hex digits (nothing is advertised for an unresolved device)."""
    parts = []
    for value in (vendor_id, device_id):
        m = _HEX4.fullmatch(str(value or ""))
        if m is None:
            return None
        parts.append(m.group(1).lower())
    return f"{PREFIX}{parts[0]}-{parts[1]}"


def resource_of(pcip: Mapping[str, Any]) -> str | None:
    """The resource a PCIPassthrough object's device counts toward (from its resolved status)."""
    status = pcip.get("status") or {}
    return resource_name(status.get("vendorId"), status.get("deviceId"))


def node_capacity(pcips: Iterable[Mapping[str, Any]], node: str) -> dict[str, int]:
    """{resource: units} that `node` offers: its Bound or Assigned PCIPassthroughs, per device kind."""
    out: dict[str, int] = {}
    for p in pcips:
        meta, spec, status = p.get("metadata") or {}, p.get("spec") or {}, p.get("status") or {}
        if spec.get("nodeName") != node or meta.get("deletionTimestamp"):
            continue
        if status.get("phase") not in COUNTED_PHASES:
            continue
        res = resource_of(p)
        if res is not None:
            out[res] = out.get(res, 0) + 1
    return out


def capacity_patch(node_status: Mapping[str, Any], want: Mapping[str, int]) -> dict[str, Any] | None:
    """The merge patch of a Node's status that makes its `k3svirt.io/pci-*` capacity and allocatable
    equal `want` (other resources untouched; kinds no longer offered are removed with null), or None
    when they already are."""
    body: dict[str, Any] = {}
    for field in ("capacity", "allocatable"):
        have = {k: str(v) for k, v in (node_status.get(field) or {}).items() if k.startswith(PREFIX)}
        goal = {k: str(v) for k, v in want.items()}
        if have == goal:
            continue
        body[field] = {**{k: None for k in have if k not in goal}, **goal}
    return {"status": body} if body else None


def device_requests(spec: Mapping[str, Any], pcips: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """{resource: units} a VM's reservation requests for its spec.hostDevices: one per entry asking
    for a kind (`resource`) and one per named PCIPassthrough whose device kind is known (an unknown
    or unresolved one is refused by the claim itself, with its own reason, before any reservation)."""
    by_name = {(p.get("metadata") or {}).get("name"): p for p in pcips}
    out: dict[str, int] = {}
    for item in spec.get("hostDevices") or []:
        if item.get("resource"):  # any free device of that kind
            res = item["resource"]
            out[res] = out.get(res, 0) + 1
            continue
        p = by_name.get(item.get("pciPassthrough"))
        res = resource_of(p) if p is not None else None
        if res is not None:
            out[res] = out.get(res, 0) + 1
    return out
