"""/pci-devices: every node's PCI inventory (NodePCIInventory), joined with PCIPassthrough objects;
assign = create/update a PCIPassthrough for node+address reserved for the VM and add a hostDevices
entry to the VM; unassign = the reverse (a PCIPassthrough the gateway created is deleted, which
gives the device back to the host)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from flask import Blueprint, request
from k3svirt_common import pci_resources

from .. import contract as c
from ..api import check_name, json_body, op
from ..errors import Problem
from ..k8s import k3svirt_path
from ..schemas import PCI_ADDRESS_PATTERN, require_object, validate
from . import kube
from .vms import vm_path

bp = Blueprint("pci", __name__)

CREATED_BY = f"{c.GROUP}/created-by"
_ADDR = re.compile(PCI_ADDRESS_PATTERN)


def blueprints() -> list[Blueprint]:
    return [bp]


def pcip_path(name: str | None = None) -> str:
    return k3svirt_path(c.PCIP_PLURAL, None, name)


def inventory_path(name: str | None = None) -> str:
    return k3svirt_path(c.INVENTORY_PLURAL, None, name)


def normalize(address: str) -> str:
    """'03:00.0' -> '0000:03:00.0', lower-case; 422 when not a PCI address."""
    if not address or not _ADDR.match(address):
        raise Problem(
            422,
            f"{address!r} is not a PCI address (dddd:bb:ss.f)",
            title="Validation failed",
            errors=[{"field": "address", "message": "must look like 0000:03:00.0"}],
        )
    address = address.lower()
    return address if address.count(":") == 2 else "0000:" + address


def pcip_name(node: str, address: str) -> str:
    name = f"{node}-{address.replace(':', '-')}"
    if len(name) > 253:
        name = name[:240].rstrip("-.") + "-" + hashlib.sha256(name.encode()).hexdigest()[:10]
    return name


def device_name(address: str) -> str:
    return "pci-" + address.replace(":", "-").replace(".", "-")


def _pcip_address(p: dict[str, Any]) -> str | None:
    addr = (p.get("spec") or {}).get("address") or (p.get("status") or {}).get("address")
    try:
        return normalize(addr) if addr else None
    except Problem:
        return None


def _find_pcip(node: str, address: str, all_pcips: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    for p in all_pcips if all_pcips is not None else kube().get(pcip_path()).get("items", []):
        if (p.get("spec") or {}).get("nodeName") == node and _pcip_address(p) == address:
            return p
    return None


def _pcip_view(p: dict[str, Any]) -> dict[str, Any]:
    md = p.get("metadata") or {}
    status = p.get("status") or {}
    return {
        "name": md.get("name", ""),
        "spec": p.get("spec") or {},
        "phase": status.get("phase") or "Pending",
        "status": status,
    }


@op(
    bp,
    "/pci-devices",
    "GET",
    summary="Every node's PCI devices, joined with their PCIPassthrough state",
    response=(200, "PCIDeviceList", "devices"),
    query=("node",),
)
def list_devices():
    node_filter = request.args.get("node")
    if node_filter is not None:
        check_name(node_filter, "node")
    inventories = kube().get(inventory_path()).get("items", [])
    pcips = kube().get(pcip_path()).get("items", [])
    items = []
    for inv in inventories:
        node = (inv.get("metadata") or {}).get("name", "")
        if node_filter and node != node_filter:
            continue
        for dev in (inv.get("status") or {}).get("devices") or []:
            if not isinstance(dev, dict) or not dev.get("address"):
                continue
            try:
                address = normalize(dev["address"])
            except Problem:
                address = dev["address"]
            entry: dict[str, Any] = {"node": node, "address": address, "device": dev}
            resource = pci_resources.resource_name(dev.get("vendorId"), dev.get("deviceId"))
            if resource is not None:
                entry["resourceName"] = resource
            p = _find_pcip(node, address, pcips)
            if p is not None:
                entry["passthrough"] = _pcip_view(p)
                holder = (p.get("status") or {}).get("assignedTo")
                if holder:
                    entry["heldBy"] = {"name": holder.get("name", ""), "namespace": holder.get("namespace", "")}
                assigned = (p.get("status") or {}).get("assignedTo") or (p.get("spec") or {}).get("assignTo")
                if assigned:
                    entry["assignedTo"] = {
                        "name": assigned.get("name", ""),
                        "namespace": assigned.get("namespace", ""),
                    }
            items.append(entry)
    return {"items": items}


def _inventory_has(node: str, address: str) -> None:
    inv = kube().get(inventory_path(node))  # 404: the node publishes no inventory
    for dev in (inv.get("status") or {}).get("devices") or []:
        try:
            if isinstance(dev, dict) and normalize(dev.get("address", "")) == address:
                return
        except Problem:
            continue
    raise Problem(404, f"node {node!r} has no PCI device {address}")


def _update_host_devices(ns: str, name: str, change: Any, vm: dict[str, Any]) -> None:
    """Read-modify-write of spec.hostDevices with optimistic concurrency, retried on conflicts."""
    for attempt in range(5):
        new = change(list((vm.get("spec") or {}).get("hostDevices") or []))
        if new is None:
            return
        patch = {
            "metadata": {"resourceVersion": vm["metadata"].get("resourceVersion")},
            "spec": {"hostDevices": new or None},
        }
        try:
            kube().patch(vm_path(ns, name), patch)
            return
        except Problem as exc:
            if exc.status != 409 or attempt == 4:
                raise
        vm = kube().get(vm_path(ns, name))


@op(
    bp,
    "/pci-devices/<address>/assign",
    "POST",
    summary="Pass a host PCI device through to a VM (PCIPassthrough + VM hostDevices entry)",
    body="PCIAssign",
    response=(200, "PCIAssignment", "assigned"),
)
def assign(address: str):
    address = normalize(address)
    body = validate("PCIAssign", require_object(json_body()))
    ns = body.get("namespace") or request.args.get("namespace") or "default"
    check_name(ns, "namespace", label=True)
    node, vm_name = body["node"], body["vm"]
    vm = kube().get(vm_path(ns, vm_name))
    vm_node = (vm.get("spec") or {}).get("nodeName")
    if vm_node and vm_node != node:
        raise Problem(409, f"VirtualMachine {vm_name!r} is pinned to node {vm_node!r}, not {node!r}")
    _inventory_has(node, address)
    p = _find_pcip(node, address)
    want = {"namespace": ns, "name": vm_name}
    if p is None:
        name = pcip_name(node, address)
        obj = {
            "apiVersion": c.API_VERSION,
            "kind": c.PCIP_KIND,
            "metadata": {"name": name, "annotations": {CREATED_BY: "k3svirt-gateway"}},
            "spec": {"nodeName": node, "address": address, "assignTo": want},
        }
        p = kube().post(pcip_path(), obj)
    else:
        spec = p.get("spec") or {}
        current = spec.get("assignTo") or (p.get("status") or {}).get("assignedTo")
        if current and (current.get("namespace"), current.get("name")) != (ns, vm_name):
            raise Problem(
                409,
                f"PCI device {address} on {node} is assigned to {current.get('namespace')}/{current.get('name')}",
                reason="InUse",
            )
        if spec.get("assignTo") != want:
            p = kube().patch(
                pcip_path(p["metadata"]["name"]),
                {
                    "metadata": {"resourceVersion": p["metadata"].get("resourceVersion")},
                    "spec": {"assignTo": want},
                },
            )
    pname = p["metadata"]["name"]

    def add(host_devices: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        if any(h.get("pciPassthrough") == pname for h in host_devices):
            return None
        dname = device_name(address)
        if any(h.get("name") == dname for h in host_devices):
            dname = f"{dname}-{hashlib.sha256(pname.encode()).hexdigest()[:6]}"
        return [*host_devices, {"name": dname, "pciPassthrough": pname}]

    _update_host_devices(ns, vm_name, add, vm)
    return {"address": address, "node": node, "passthrough": pname, "vm": vm_name, "namespace": ns}


@op(
    bp,
    "/pci-devices/<address>/unassign",
    "POST",
    summary="Detach a host PCI device from its VM (and release it if the gateway created its PCIPassthrough)",
    body="PCIUnassign",
    response=(200, "PCIAssignment", "unassigned"),
)
def unassign(address: str):
    address = normalize(address)
    body = validate("PCIUnassign", require_object(json_body()))
    node = body["node"]
    p = _find_pcip(node, address)
    if p is None:
        raise Problem(404, f"no PCIPassthrough for {address} on node {node!r}")
    pname = p["metadata"]["name"]
    assigned = (p.get("spec") or {}).get("assignTo") or (p.get("status") or {}).get("assignedTo") or {}
    ns = body.get("namespace") or assigned.get("namespace") or "default"
    vm_name = body.get("vm") or assigned.get("name")
    if vm_name:
        try:
            vm = kube().get(vm_path(ns, vm_name))
        except Problem as exc:
            if exc.status != 404:
                raise
            vm = None
        if vm is not None:

            def remove(host_devices: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
                kept = [h for h in host_devices if h.get("pciPassthrough") != pname]
                return kept if len(kept) != len(host_devices) else None

            _update_host_devices(ns, vm_name, remove, vm)
    if ((p.get("metadata") or {}).get("annotations") or {}).get(CREATED_BY):
        kube().delete(pcip_path(pname))
    elif (p.get("spec") or {}).get("assignTo"):
        kube().patch(pcip_path(pname), {"spec": {"assignTo": None}})
    out = {"address": address, "node": node, "passthrough": pname}
    if vm_name:
        out.update({"vm": vm_name, "namespace": ns})
    return out
