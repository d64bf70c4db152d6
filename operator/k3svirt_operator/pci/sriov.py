"""SR-IOV virtual functions from a PCIVirtualFunctionPolicy: how many the PF gets, what is refused,
and the PCIPassthrough each VF is offered through (then bound, counted and claimed like any device).

The kernel's rule shapes the plan: sriov_numvfs can only go from 0 to N or from N to 0, so a change
of N is 0 then N, which destroys every VF; it is refused while a VM holds one of them. The PF stays
on its host driver (the driver creates the VFs); a PF on vfio-pci cannot.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k3svirt_common import names

from . import discovery, sysfs
from .binding import VFIO_PCI
from .conditions import COND_READY, set_condition

VF_APPEAR_SECONDS = 10.0  # the driver creates VFs synchronously; udev/probing may lag a little


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str


@dataclass(frozen=True)
class VFPlan:
    writes: list[int] = field(default_factory=list)  # values for sriov_numvfs, in order ([] = as is)
    total: int = 0


def child_name(policy: str, index: int) -> str:
    return f"{policy}-vf{index}"


def plan(spec: Mapping[str, Any], pf: Any, held: Iterable[str] = ()) -> VFPlan | Refusal:
    """What to write to the PF's sriov_numvfs for `spec` (numVfs), given the PF as discovery read it
    (None: absent) and the VF PCIPassthroughs a VM holds now (`held`, names)."""
    address, want = spec.get("physicalFunction"), int(spec.get("numVfs") or 0)
    if pf is None:
        return Refusal("PhysicalFunctionNotFound", f"no PCI function {address} on this node")
    if pf.physfn:
        return Refusal("NotSRIOVCapable", f"{address} is itself a virtual function of {pf.physfn}")
    if pf.sriov_total_vfs is None or pf.sriov_total_vfs == 0:
        return Refusal("NotSRIOVCapable", f"{address} ({pf.device_name or pf.device_id}) has no SR-IOV capability")
    if want > pf.sriov_total_vfs:
        return Refusal("TooManyVFs", f"spec.numVfs: {address} supports at most {pf.sriov_total_vfs} VFs, not {want}")
    if pf.driver in (VFIO_PCI, "pci-stub") or not pf.driver:
        return Refusal(
            "PhysicalFunctionOnVFIO",
            f"{address} is on {pf.driver or 'no driver'}: VFs are created by the PF's own host driver; "
            "delete the PCIPassthrough that took it, or load its driver",
        )
    have = pf.sriov_num_vfs or 0
    if have == want:
        return VFPlan([], pf.sriov_total_vfs)
    held = sorted(held)
    if have and held:
        return Refusal(
            "VFsInUse",
            f"changing {address} from {have} to {want} VFs re-creates all of them, and VMs hold "
            f"{', '.join(held)}: stop those VMs (or remove the devices from them) first",
        )
    return VFPlan(([0] if have else []) + [want], pf.sriov_total_vfs)


def apply(
    sys_root: Path | str | None,
    address: str,
    vf_plan: VFPlan,
    *,
    write: Callable[[Path, str], None] = sysfs.write_attr,
    timeout: float = VF_APPEAR_SECONDS,
) -> list[str] | Refusal:
    """Writes the plan to the PF and waits for its VFs to appear; their addresses in index order.

    VFs we create are for vfio-pci only: with the PF's `sriov_drivers_autoprobe` on, the host's
    driver probes each new VF first, and its clean-up after a failed or slow probe could take a VF
    off vfio-pci again after we bound it. So autoprobe is off while VFs exist (driver_override
    still binds vfio-pci), and back on (the kernel's default) once they are gone."""
    d = sysfs.pci_device_dir(sysfs.sysfs_root(sys_root), address)
    want = vf_plan.writes[-1] if vf_plan.writes else None
    autoprobe = d / "sriov_drivers_autoprobe"
    if want and autoprobe.exists():
        with contextlib.suppress(OSError):  # a kernel that refuses it: VFs are probed as before
            write(autoprobe, "0")
    for value in vf_plan.writes:
        try:
            write(d / "sriov_numvfs", str(value))
        except OSError as exc:
            return Refusal(
                "SetNumVFsFailed", f"writing {value} to {address}/sriov_numvfs failed: {exc.strerror or exc}"
            )
    if want == 0 and autoprobe.exists():
        with contextlib.suppress(OSError):  # only the default for VFs made by others later
            write(autoprobe, "1")
    deadline = time.monotonic() + timeout
    while True:
        pf = discovery.read_device(sys_root, address)
        vfs = list(pf.virtfns) if pf else []
        if want is None or len(vfs) == want:
            return vfs
        if time.monotonic() >= deadline:
            return Refusal("VFsDidNotAppear", f"{address} shows {len(vfs)} VFs {timeout:.0f} s after asking for {want}")
        time.sleep(0.2)


def children(policy: Mapping[str, Any], vfs: list[str]) -> list[dict[str, Any]]:
    """The PCIPassthrough of each VF: named <policy>-vf<index>, owned by the policy (the garbage
    collector removes them with it if no operator does), open to the policy's namespaces."""
    meta, spec = policy["metadata"], policy.get("spec") or {}
    owner = {
        "apiVersion": names.API_VERSION,
        "kind": names.PCIVF_POLICY_KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    out = []
    for i, address in enumerate(vfs):
        body_spec: dict[str, Any] = {"nodeName": spec["nodeName"], "address": address}
        if spec.get("namespaces"):
            body_spec["namespaces"] = list(spec["namespaces"])
        out.append(
            {
                "apiVersion": names.API_VERSION,
                "kind": names.PCIPASSTHROUGH_KIND,
                "metadata": {
                    "name": child_name(meta["name"], i),
                    "labels": {f"{names.GROUP}/vf-policy": meta["name"]},
                    "ownerReferences": [owner],
                },
                "spec": body_spec,
            }
        )
    return out


def status(
    previous: Mapping[str, Any],
    generation: int | None,
    pf: Any,
    result: list[str] | Refusal,
    policy_name: str,
    now: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "observedGeneration": generation,
        "totalVfs": getattr(pf, "sriov_total_vfs", None),
        "numVfs": getattr(pf, "sriov_num_vfs", None),
    }
    conds = previous.get("conditions")
    if isinstance(result, Refusal):
        out["phase"] = "Failed"
        out["conditions"] = set_condition(conds, COND_READY, False, result.reason, result.message, now)
        out["virtualFunctions"] = previous.get("virtualFunctions") or []
        return out
    out["numVfs"] = len(result)
    out["phase"] = "Ready"
    out["virtualFunctions"] = [
        {"index": i, "address": a, "passthrough": child_name(policy_name, i)} for i, a in enumerate(result)
    ]
    msg = f"{len(result)} VFs offered as PCIPassthroughs {child_name(policy_name, 0)}..." if result else "no VFs"
    out["conditions"] = set_condition(conds, COND_READY, True, "Ready", msg, now)
    return out
