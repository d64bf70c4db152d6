"""Status builders the kopf handlers call: everything here returns plain dicts for ``status``.

* :func:`node_inventory_status` -> ``NodePCIInventory.status`` (publish on startup and on a timer).
* :func:`reconcile_passthrough` -> ``PCIPassthrough.status`` after resolving, checking and binding.
* :func:`release_passthrough` -> restore the host drivers before the finalizer is removed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import binding, discovery, safety, sysfs
from .conditions import COND_READY, set_condition
from .pciids import PciIds
from .phases import PHASE_ASSIGNED, PHASE_AVAILABLE, PHASE_BOUND, PHASE_FAILED

COND_IOMMU_READY = "IOMMUReady"

# One node operator binds at a time: plan + bind must not interleave between two PCIPassthroughs.
BIND_LOCK = threading.Lock()


# NodePCIInventory ------------------------------------------------------------------------------


def node_inventory_status(
    sys_root: Path | str | None = None,
    proc_root: Path | str | None = None,
    denylist: Iterable[str] | None = None,
    now: str | None = None,
    facts: safety.HostFacts | None = None,
    ids: PciIds | None = None,
) -> dict[str, Any]:
    """The whole ``status`` of this node's ``NodePCIInventory``."""
    now = now or discovery.utcnow()
    denylist = tuple(denylist or ())
    facts = facts or safety.gather_host_facts(sys_root, proc_root)
    devices = discovery.inventory(sys_root, ids)
    for d in devices:
        d["hostUse"] = safety.host_use(d["address"], d, facts, denylist)
    problem = safety.iommu_problem(facts)
    cmdline = list(facts.cmdline)
    iommu_arg = discovery.cmdline_flag(cmdline, "iommu")
    cond = (
        set_condition(None, COND_IOMMU_READY, False, problem[0], problem[1], now)
        if problem
        else set_condition(None, COND_IOMMU_READY, True, "IOMMUEnabled", f"{facts.iommu_group_count} IOMMU groups", now)
    )
    return {
        "devices": devices,
        "iommuEnabled": facts.iommu_enabled,
        "iommuGroupCount": facts.iommu_group_count,
        "cpuVendor": facts.cpu_vendor,
        "kernelCmdline": {
            "flags": discovery.relevant_cmdline_flags(cmdline),
            "intelIommuOn": discovery.intel_iommu_requested(cmdline),
            "iommuPassthrough": iommu_arg == "pt",
        },
        "vfioPciLoaded": binding.VFIO_PCI in facts.drivers,
        "updatedAt": now,
        "conditions": cond,
    }


# PCIPassthrough --------------------------------------------------------------------------------


def _failed(status: Mapping[str, Any], reason: str, message: str, now: str, **extra: Any) -> dict[str, Any]:
    out = {**status, **extra, "phase": PHASE_FAILED, "printableStatus": PHASE_FAILED}
    out["conditions"] = set_condition(status.get("conditions"), COND_READY, False, reason, message, now)
    return out


def _release_targets(
    status: Mapping[str, Any], inventory: list[dict[str, Any]], driver: str, claimed: Mapping[str, str]
) -> dict[str, str | None]:
    """Functions of this object's group that sit on ``driver`` through a driver_override (our doing),
    are not named by another PCIPassthrough, with their recorded original driver (None = kernel's match)."""
    by_addr = {d["address"]: d for d in inventory}
    recorded = {m["address"]: m.get("originalDriver") for m in status.get("groupMembers") or []}
    addrs = list(recorded) or ([status["address"]] if status.get("address") else [])
    out: dict[str, str | None] = {}
    for a in addrs:
        d = by_addr.get(a)
        if not d or a in claimed or d.get("isBridge"):
            continue
        if d.get("driverOverride") == driver:
            orig = recorded.get(a)
            out[a] = None if orig in (None, driver) else orig
    return out


def reconcile_passthrough(
    spec: Mapping[str, Any],
    status: Mapping[str, Any] | None = None,
    *,
    generation: int | None = None,
    sys_root: Path | str | None = None,
    proc_root: Path | str | None = None,
    denylist: Iterable[str] | None = None,
    claimed: Mapping[str, str] | None = None,
    now: str | None = None,
    write: sysfs.Writer = sysfs.write_attr,
    facts: safety.HostFacts | None = None,
    ids: PciIds | None = None,
) -> dict[str, Any]:
    """Resolve ``spec`` on this node, check safety, bind the IOMMU group to the driver; return the new status.

    ``claimed``: ``{address: name}`` of the OTHER PCIPassthrough objects on this node (their
    ``status.address``), excluding ones being deleted. Idempotent: an already bound group is not touched.
    """
    now = now or discovery.utcnow()
    status = dict(status or {})
    claimed = dict(claimed or {})
    if generation is not None:
        status["observedGeneration"] = generation
    driver = spec.get("driver") or binding.VFIO_PCI
    denylist = tuple(denylist or ())
    with BIND_LOCK:
        # A bind a killed operator left half done would otherwise keep its device driverless.
        binding.recover_interrupted(sys_root, driver=driver, write=write)
        facts = facts or safety.gather_host_facts(sys_root, proc_root)
        inv = discovery.inventory(sys_root, ids)
        dev = binding.select_device(spec, inv)
        new_addr = None if isinstance(dev, binding.Refusal) else dev["address"]
        prev_addr = status.get("address")
        if prev_addr and prev_addr != new_addr:
            # The spec now names another function (or none): give the old group back first.
            if (status.get("assignedTo") or {}).get("name"):
                return _failed(
                    status,
                    binding.DEVICE_BUSY,
                    f"{prev_addr} is assigned to VM "
                    f"{status['assignedTo'].get('namespace')}/{status['assignedTo']['name']}; "
                    "stop the VM before changing the device",
                    now,
                )
            try:
                binding.restore(_release_targets(status, inv, driver, claimed), sys_root, driver=driver, write=write)
            except binding.BindError as e:
                return _failed(status, binding.RESTORE_FAILED, e.message, now)
            for k in ("address", "iommuGroup", "groupMembers", "originalDriver", "driver"):
                status.pop(k, None)
            inv = discovery.inventory(sys_root)
        if isinstance(dev, binding.Refusal):
            return _failed(status, dev.reason, dev.message, now)
        info = {
            "address": dev["address"],
            "vendorId": dev.get("vendorId"),
            "deviceId": dev.get("deviceId"),
            "deviceName": dev.get("deviceName"),
            "className": dev.get("className"),
            "numaNode": dev.get("numaNode"),
            "iommuGroup": dev.get("iommuGroup"),
        }
        plan = binding.plan_bind(
            dev,
            inv,
            facts,
            denylist,
            driver=driver,
            group_policy=spec.get("groupPolicy") or binding.GROUP_POLICY_STRICT,
            claimed=claimed,
        )
        if isinstance(plan, binding.Refusal):
            return _failed(status, plan.reason, plan.message, now, **info)
        recorded = {m["address"]: m.get("originalDriver") for m in status.get("groupMembers") or []}
        try:
            originals = binding.bind(plan, sys_root, write=write)
        except binding.BindError as e:
            return _failed(status, e.reason, e.message, now, **info)
        recorded.update(originals)
        after = {d["address"]: d for d in discovery.inventory(sys_root)}
    members = []
    for m in plan.group_members:
        orig = None if m.exempt or m.driver == driver else m.driver
        members.append(
            {
                **m.to_dict(),
                "driver": (after.get(m.address) or {}).get("driver"),
                "originalDriver": recorded.get(m.address, orig),
            }
        )
    original = next(m["originalDriver"] for m in members if m["address"] == plan.address)
    assigned = (status.get("assignedTo") or {}).get("name")
    phase = PHASE_ASSIGNED if assigned else PHASE_BOUND
    msg = f"{plan.address} and its IOMMU group {plan.iommu_group} are bound to {driver}"
    status.update(info)
    status.update(
        {
            "phase": phase,
            "printableStatus": phase,
            "driver": (after.get(plan.address) or {}).get("driver"),
            "originalDriver": original,
            "groupMembers": members,
        }
    )
    status["conditions"] = set_condition(status.get("conditions"), COND_READY, True, phase, msg, now)
    return status


def release_passthrough(
    status: Mapping[str, Any],
    *,
    spec: Mapping[str, Any] | None = None,
    sys_root: Path | str | None = None,
    claimed: Mapping[str, str] | None = None,
    now: str | None = None,
    write: sysfs.Writer = sysfs.write_attr,
) -> dict[str, Any]:
    """Give the functions this object took back to their host drivers (on delete, before the finalizer).

    Raises :class:`~k3svirt_operator.pci.binding.BindError` with reason ``StillAssigned`` while a VM uses
    the device (the handler retries later) or ``RestoreFailed``.
    """
    now = now or discovery.utcnow()
    who = status.get("assignedTo") or {}
    if who.get("name"):
        raise binding.BindError(
            binding.STILL_ASSIGNED,
            f"{status.get('address')} is assigned to VM "
            f"{who.get('namespace')}/{who['name']}; stop the VM or remove the "
            "host device first",
        )
    driver = (spec or {}).get("driver") or binding.VFIO_PCI
    with BIND_LOCK:
        inv = discovery.inventory(sys_root)
        now_drivers = binding.restore(
            _release_targets(status, inv, driver, claimed or {}), sys_root, driver=driver, write=write
        )
    out = {**status, "phase": PHASE_AVAILABLE, "printableStatus": PHASE_AVAILABLE}
    if status.get("address") in now_drivers:
        out["driver"] = now_drivers[status["address"]]
    out["conditions"] = set_condition(
        status.get("conditions"),
        COND_READY,
        False,
        "Released",
        f"returned to the host: {now_drivers or 'nothing to restore'}",
        now,
    )
    return out
