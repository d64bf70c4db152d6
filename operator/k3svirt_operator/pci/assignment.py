"""Which host PCI functions a VM gets: a pure decision over the VM spec and the PCIPassthrough objects.

``VirtualMachine.spec.hostDevices[]`` is ``{name: <name in the VM>, pciPassthrough: <PCIPassthrough>}``
or ``{name, resource: k3svirt.io/pci-<vendor>-<device>}`` (any free device of that kind on the node).
A VM may use a PCIPassthrough when it is on the VM's node, its phase is ``Bound`` (or ``Assigned`` to
this same VM), it is open to the VM (``spec.assignTo`` names it, or ``spec.namespaces`` lists its
namespace: a device reserved for nobody is claimable by nobody, since VM authors are untrusted), it is
not assigned to another VM (``status.assignedTo``), and every endpoint of its IOMMU group is on a VFIO
driver and not in another VM.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from k3svirt_common.pci_resources import resource_of

from . import sysfs
from .conditions import COND_READY, set_condition
from .phases import PHASE_ASSIGNED, PHASE_BOUND, PHASE_PENDING

VFIO_DRIVERS = ("vfio-pci", "pci-stub")


@dataclass(frozen=True)
class ResolvedHostDevice:
    name: str  # the device's name in the VM (spec.hostDevices[].name)
    passthrough: str  # the PCIPassthrough object's name
    address: str  # host PCI address, "0000:03:00.0"
    group_members: tuple[str, ...] = ()
    numa_node: int | None = None

    @property
    def source_address(self) -> dict[str, str]:
        """Attributes for ``<hostdev><source><address .../>``: domain/bus/slot/function as ``0x..``."""
        return sysfs.address_parts(self.address)


@dataclass(frozen=True)
class HostDeviceError:
    name: str  # spec.hostDevices[].name (or the PCIPassthrough name when the entry has none)
    reason: str  # CamelCase, for the VM's HostDevicesReady condition
    message: str


class HostDeviceResolutionError(ValueError):
    """Every reason the VM's hostDevices cannot be satisfied (``.errors``); a ValueError for the reconciler."""

    def __init__(self, errors: list[HostDeviceError]) -> None:
        super().__init__("; ".join(e.message for e in errors))
        self.errors = list(errors)


def _ref(obj: Mapping[str, Any] | None) -> str | None:
    if not obj or not obj.get("name"):
        return None
    return f"{obj.get('namespace', '')}/{obj['name']}"


def _refusal(
    o: Mapping[str, Any], node: str, me: str, seen_addr: Mapping[str, str], others: Mapping[str, str]
) -> tuple[str, str] | None:
    """Why PCIPassthrough `o` cannot go to VM `me` on `node` now (reason, message), None if it can."""
    pname = o["metadata"]["name"]
    spec, st = o.get("spec") or {}, o.get("status") or {}
    phase = st.get("phase") or PHASE_PENDING
    if spec.get("nodeName") != node:
        return "WrongNode", f"PCIPassthrough {pname} is on node {spec.get('nodeName')}, VM is on node {node}"
    vm_namespace = me.split("/", 1)[0]
    reserved = _ref(spec.get("assignTo"))
    if reserved and reserved != me:
        return "ReservedForOtherVM", f"PCIPassthrough {pname} is reserved for VM {reserved}"
    if not reserved and vm_namespace not in (spec.get("namespaces") or []):
        return (
            "NotAssignable",
            f"PCIPassthrough {pname} is not open to namespace {vm_namespace}: its spec.assignTo must name "
            f"VM {me} (or its spec.namespaces list {vm_namespace}); a device reserved for no VM is "
            "claimed by none",
        )
    assigned = _ref(st.get("assignedTo"))
    if assigned and assigned != me:
        return "AssignedToOtherVM", f"PCIPassthrough {pname} is assigned to other VM {assigned}"
    if phase not in (PHASE_BOUND, PHASE_ASSIGNED) or (phase == PHASE_ASSIGNED and assigned != me):
        return "NotBound", f"PCIPassthrough {pname} is not Bound (phase {phase})"
    if (
        st.get("observedGeneration") is not None
        and (o["metadata"].get("generation") is not None)
        and st["observedGeneration"] != o["metadata"]["generation"]
    ):
        return "NotBound", f"PCIPassthrough {pname} has a spec change not yet reconciled"
    address = st.get("address")
    if not address:
        return "NotBound", f"PCIPassthrough {pname} has no resolved address"
    if address in seen_addr:
        return "DuplicateDevice", f"PCIPassthrough {pname} and {seen_addr[address]} both name {address}"
    members = st.get("groupMembers") or []
    bad = [m for m in members if not m.get("isBridge") and m.get("driver") not in (None, *VFIO_DRIVERS)]
    if bad:
        listing = ", ".join(f"{m['address']} ({m.get('driver')})" for m in bad)
        return (
            "GroupNotViable",
            f"IOMMU group {st.get('iommuGroup')} of PCIPassthrough {pname} is not viable: {listing} still on a "
            "host driver",
        )
    clash = [f"{m['address']} is in VM {others[m['address']]}" for m in members if m["address"] in others]
    if clash:
        return (
            "GroupInOtherVM",
            f"IOMMU group {st.get('iommuGroup')} of PCIPassthrough {pname} is split: "
            + "; ".join(clash)
            + " (a group can only belong to one VM)",
        )
    return None


def _pick(
    resource: str,
    objs: Mapping[str, Mapping[str, Any]],
    node: str,
    me: str,
    seen_addr: Mapping[str, str],
    others: Mapping[str, str],
) -> tuple[Mapping[str, Any] | None, str]:
    """The PCIPassthrough a `resource` entry gets: one this VM holds already, else the first free one
    by name (deterministic, so a pass repeated picks the same); else None and why none fits."""
    kind = [o for o in objs.values() if (o.get("spec") or {}).get("nodeName") == node and resource_of(o) == resource]
    usable = [o for o in kind if _refusal(o, node, me, seen_addr, others) is None]
    usable.sort(key=lambda o: (_ref((o.get("status") or {}).get("assignedTo")) != me, o["metadata"]["name"]))
    if usable:
        return usable[0], ""
    held = sorted(
        f"{o['metadata']['name']} ({_ref((o.get('status') or {}).get('assignedTo')) or 'not usable by this VM'})"
        for o in kind
    )
    return None, (
        f"no free {resource} on node {node} for VM {me}: "
        + (f"{len(kind)} of that kind here, none free and open to it: {', '.join(held)}" if kind else "none here")
    )


def resolve_host_devices(
    vm_spec: Mapping[str, Any],
    pcip_objects: Iterable[Mapping[str, Any]],
    node: str,
    *,
    vm_namespace: str,
    vm_name: str,
) -> list[ResolvedHostDevice]:
    """Resolve ``vm_spec["hostDevices"]`` to host addresses for the domain XML.

    ``pcip_objects`` are whole PCIPassthrough objects (metadata/spec/status), all of them or at least
    those on ``node``. An entry names its PCIPassthrough, or asks for any free device of a kind
    (``resource: k3svirt.io/pci-<vendor>-<device>``). Raises :class:`HostDeviceResolutionError`
    listing every problem.
    """
    objs = {o["metadata"]["name"]: o for o in pcip_objects}
    me = f"{vm_namespace}/{vm_name}"
    errors: list[HostDeviceError] = []
    out: list[ResolvedHostDevice] = []
    seen_addr: dict[str, str] = {}
    # Addresses assigned to other VMs, for the IOMMU group check.
    others: dict[str, str] = {}
    for o in objs.values():
        st = o.get("status") or {}
        who = _ref(st.get("assignedTo"))
        if who and who != me and st.get("address") and (o.get("spec") or {}).get("nodeName") == node:
            others[st["address"]] = f"{who} (via PCIPassthrough {o['metadata']['name']})"

    # Named devices first: a kind-based entry never takes a device another entry of the VM names.
    items = sorted(vm_spec.get("hostDevices") or [], key=lambda i: "resource" in i)
    for item in items:
        name = item.get("name") or item.get("pciPassthrough", "?")
        if item.get("resource"):
            o, why = _pick(item["resource"], objs, node, me, seen_addr, others)
            if o is None:
                errors.append(HostDeviceError(name, "NoFreeDevice", why))
                continue
        else:
            pname = item.get("pciPassthrough") or ""
            o = objs.get(pname)
            if o is None:
                errors.append(HostDeviceError(name, "PCIPassthroughNotFound", f"PCIPassthrough {pname} does not exist"))
                continue
            refused = _refusal(o, node, me, seen_addr, others)
            if refused is not None:
                errors.append(HostDeviceError(name, *refused))
                continue
        st = o.get("status") or {}
        seen_addr[st["address"]] = o["metadata"]["name"]
        members = st.get("groupMembers") or []
        out.append(
            ResolvedHostDevice(
                name=name,
                passthrough=o["metadata"]["name"],
                address=st["address"],
                group_members=tuple(m["address"] for m in members),
                numa_node=st.get("numaNode"),
            )
        )
    if errors:
        raise HostDeviceResolutionError(errors)
    order = [i.get("name") for i in vm_spec.get("hostDevices") or []]
    return sorted(out, key=lambda d: order.index(d.name) if d.name in order else len(order))


def host_device_map(resolved: Iterable[ResolvedHostDevice]) -> dict[str, str]:
    """``{hostDevices[].name: address}``: what ``domain_xml.DomainContext(host_devices=...)`` takes."""
    return {d.name: d.address for d in resolved}


# The claims a VM makes -------------------------------------------------------------------------

StatusPatch = tuple[str, dict[str, Any]]  # (PCIPassthrough name, its new status)


@dataclass(frozen=True)
class Assignment:
    devices: dict[str, str]  # {hostDevices[].name: host address} for DomainContext.host_devices
    patches: list[StatusPatch] = field(default_factory=list)  # statuses that record the claims


def plan_for_vm(
    objs: Iterable[Mapping[str, Any]], node: str, vm: Mapping[str, str], spec: Mapping[str, Any]
) -> Assignment:
    """Resolve a VM's hostDevices on ``node`` and the status patches that mark its PCIPassthroughs
    ``Assigned`` to it; entries dropped from the spec are unassigned. Raises
    :class:`HostDeviceResolutionError` (a ValueError)."""
    objs = list(objs)
    me = f"{vm['namespace']}/{vm['name']}"
    resolved = resolve_host_devices(spec, objs, node, vm_namespace=vm["namespace"], vm_name=vm["name"])
    by_name = {o["metadata"]["name"]: o for o in objs}
    patches: list[StatusPatch] = []
    for d in resolved:
        st = by_name[d.passthrough].get("status") or {}
        if _ref(st.get("assignedTo")) != me:
            patches.append((d.passthrough, assigned_status(st, vm["namespace"], vm["name"], vm.get("uid"))))
    patches += plan_release(objs, vm, keep={d.passthrough for d in resolved})
    return Assignment(host_device_map(resolved), patches)


def plan_release(
    objs: Iterable[Mapping[str, Any]], vm: Mapping[str, str], keep: Iterable[str] = ()
) -> list[StatusPatch]:
    """The patches that clear ``status.assignedTo`` of every PCIPassthrough assigned to the VM
    (but those in ``keep``): domain undefined, VM deleted, entry dropped from the spec."""
    me, keep = f"{vm['namespace']}/{vm['name']}", set(keep)
    out = []
    for o in objs:
        name, st = o["metadata"]["name"], o.get("status") or {}
        if name not in keep and _ref(st.get("assignedTo")) == me:
            out.append((name, unassigned_status(st)))
    return out


def assigned_status(
    status: Mapping[str, Any], vm_namespace: str, vm_name: str, vm_uid: str | None = None, now: str | None = None
) -> dict[str, Any]:
    """Status that records a VM's claim on the device."""
    who = {"namespace": vm_namespace, "name": vm_name}
    if vm_uid:
        who["uid"] = vm_uid
    out = {**status, "assignedTo": who, "phase": PHASE_ASSIGNED, "printableStatus": PHASE_ASSIGNED}
    out["conditions"] = set_condition(
        status.get("conditions"), COND_READY, True, PHASE_ASSIGNED, f"assigned to VM {vm_namespace}/{vm_name}", now
    )
    return out


def unassigned_status(status: Mapping[str, Any], now: str | None = None) -> dict[str, Any]:
    """Status after the VM released the device (domain stopped/undefined or hostDevices entry removed)."""
    out = {**status, "assignedTo": None}
    if status.get("phase") == PHASE_ASSIGNED:
        out["phase"] = out["printableStatus"] = PHASE_BOUND
        out["conditions"] = set_condition(
            status.get("conditions"), COND_READY, True, PHASE_BOUND, f"{status.get('address')} is bound and free", now
        )
    return out
