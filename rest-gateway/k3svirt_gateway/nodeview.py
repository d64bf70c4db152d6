"""Pure views of Nodes and of what runs on them: capacity/allocatable, conditions, and the CPU/memory
that VirtualMachines (their merged spec) and pods (their requests) take on each node."""

from __future__ import annotations

from typing import Any

from k3svirt_common.names import PrintableStatus
from k3svirt_common.quantity import parse_quantity, quantity_value

from .podview import pod_resources

# VM states in which the domain exists on the node and holds its vCPUs and RAM.
ACTIVE_VM_STATES = frozenset(
    {PrintableStatus.RUNNING, PrintableStatus.PAUSED, PrintableStatus.STARTING, PrintableStatus.STOPPING}
)
TERMINAL_POD_PHASES = frozenset({"Succeeded", "Failed"})


def _number(value: Any) -> float | None:
    try:
        return float(quantity_value(value))
    except ValueError:
        return None


def resources(raw: dict[str, Any] | None) -> dict[str, Any]:
    """capacity/allocatable as given (quantities) plus parsed cpuCores, memoryBytes, pods."""
    raw = dict(raw or {})
    cpu, mem, pods = _number(raw.get("cpu")), _number(raw.get("memory")), _number(raw.get("pods"))
    eph = _number(raw.get("ephemeral-storage"))
    return {
        "cpuCores": cpu,
        "memoryBytes": None if mem is None else int(mem),
        "pods": None if pods is None else int(pods),
        "ephemeralStorageBytes": None if eph is None else int(eph),
        "quantities": {str(k): str(v) for k, v in raw.items()},
    }


def node_ready(node: dict[str, Any]) -> str:
    """ "Ready", "NotReady" or "Unknown" from the Ready condition (kubectl's STATUS without extras)."""
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return {"True": "Ready", "False": "NotReady"}.get(cond.get("status", ""), "Unknown")
    return "Unknown"


def node_view(node: dict[str, Any]) -> dict[str, Any]:
    md = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    info = status.get("nodeInfo") or {}
    ready = node_ready(node)
    return {
        "name": md.get("name", ""),
        "status": ready,
        "ready": ready == "Ready",
        "unschedulable": bool(spec.get("unschedulable")),
        "created": md.get("creationTimestamp", ""),
        "labels": md.get("labels") or {},
        "taints": [{k: t[k] for k in ("key", "value", "effect") if k in t} for t in spec.get("taints") or []],
        "addresses": [
            {"type": a.get("type", ""), "address": a.get("address", "")} for a in status.get("addresses") or []
        ],
        "kubeletVersion": info.get("kubeletVersion", ""),
        "containerRuntimeVersion": info.get("containerRuntimeVersion", ""),
        "osImage": info.get("osImage", ""),
        "kernelVersion": info.get("kernelVersion", ""),
        "architecture": info.get("architecture", ""),
        "capacity": resources(status.get("capacity")),
        "allocatable": resources(status.get("allocatable")),
        "conditions": [
            {k: c[k] for k in ("type", "status", "reason", "message", "lastHeartbeatTime") if k in c}
            for c in status.get("conditions") or []
        ],
    }


def vm_resources(spec: dict[str, Any]) -> tuple[int, int | None]:
    """(vCPUs, guest RAM bytes) of a merged, defaulted VM spec (k3svirt_common.schema.apply_vm_defaults)."""
    cpu = spec.get("cpu") or {}
    vcpus = int(cpu.get("sockets", 1)) * int(cpu.get("cores", 1)) * int(cpu.get("threads", 1))
    size = (spec.get("memory") or {}).get("size")
    try:
        memory = None if size is None else parse_quantity(size, field="spec.memory.size")
    except ValueError:
        memory = None
    return vcpus, memory


def vm_usage(node_name: str, vms: list[tuple[dict[str, Any], dict[str, Any] | None]]) -> dict[str, Any]:
    """What the VMs placed on `node_name` (status.node) take: `vms` are (VM object, merged spec or None
    when its template could not be resolved). Only VMs in ACTIVE_VM_STATES count towards the sums."""
    items = []
    vcpus = memory = 0
    for vm, spec in vms:
        status = vm.get("status") or {}
        if status.get("node") != node_name:
            continue
        md = vm.get("metadata") or {}
        state = status.get("printableStatus") or PrintableStatus.PENDING
        item: dict[str, Any] = {"name": md.get("name", ""), "namespace": md.get("namespace", ""), "status": state}
        if spec is None:
            item["note"] = "template could not be resolved: resources unknown"
        else:
            item["vcpus"], item["memoryBytes"] = vm_resources(spec)
            if state in ACTIVE_VM_STATES:
                vcpus += item["vcpus"]
                memory += item["memoryBytes"] or 0
        items.append(item)
    active = sum(1 for i in items if i["status"] in ACTIVE_VM_STATES)
    return {"count": len(items), "active": active, "vcpus": vcpus, "memoryBytes": memory, "items": items}


def pod_usage(node_name: str, pods: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum of the requests of the non-terminated pods bound to `node_name` (what the scheduler counts)."""
    cpu = memory = 0.0
    count = 0
    for p in pods:
        if (p.get("spec") or {}).get("nodeName") != node_name:
            continue
        if (p.get("status") or {}).get("phase") in TERMINAL_POD_PHASES:
            continue
        req = pod_resources(p, "requests")
        cpu += req["cpu"] or 0.0
        memory += req["memory"] or 0.0
        count += 1
    return {"count": count, "cpuRequestCores": round(cpu, 3), "memoryRequestBytes": int(memory)}


def node_usage(
    node: dict[str, Any], vms: list[tuple[dict[str, Any], dict[str, Any] | None]], pods: list[dict[str, Any]]
) -> dict[str, Any]:
    """VM + pod totals against the node's allocatable resources."""
    name = (node.get("metadata") or {}).get("name", "")
    v, p = vm_usage(name, vms), pod_usage(name, pods)
    alloc = resources((node.get("status") or {}).get("allocatable"))
    cpu = v["vcpus"] + p["cpuRequestCores"]
    memory = v["memoryBytes"] + p["memoryRequestBytes"]

    def pct(part: float, whole: float | None) -> float | None:
        return round(100.0 * part / whole, 2) if whole else None

    return {
        "vms": v,
        "pods": p,
        "total": {
            "cpuCores": round(cpu, 3),
            "memoryBytes": memory,
            "cpuPercentOfAllocatable": pct(cpu, alloc["cpuCores"]),
            "memoryPercentOfAllocatable": pct(memory, alloc["memoryBytes"]),
        },
    }
