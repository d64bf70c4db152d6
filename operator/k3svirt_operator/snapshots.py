"""Snapshot and restore decisions (pure): what a VirtualMachineSnapshot or VirtualMachineRestore asks
of this node's VM, whether it can be done, and the status objects that say so.

The files are handled by snapshot_store.py, the order of work by snapshot_worker.py; docs/snapshots.md
has the design (full copies under the VM's own directory, a brief pause for a running guest).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from k3svirt_common import names

from .vmstatus import condition, merge_conditions

COND_READY = "Ready"


class SnapPhase(StrEnum):
    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    READY = "Ready"
    FAILED = "Failed"


class RestorePhase(StrEnum):
    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class Refusal:
    reason: str  # CamelCase, the Ready condition's reason
    message: str  # names the field


def refusal(spec: Mapping[str, Any]) -> Refusal | None:
    """Why the VM (its spec merged with template and presets) cannot be snapshotted, None if it can.

    Host devices: their state lives in the device, not on a disk, and a restore could not give it
    back. Volumes: files k3svirt does not own (often raw block devices other tools manage); copying
    them into the VM's storage would take space nobody budgeted and restoring would overwrite them."""
    if spec.get("hostDevices"):
        return Refusal(
            "HostDevicesNotSnapshottable",
            "spec.hostDevices: a VM with a passthrough device cannot be snapshotted (the device's state "
            "is not on a disk, and a restore could not put it back); detach the device first",
        )
    for i, disk in enumerate(spec.get("disks") or []):
        volume = (disk.get("source") or {}).get("volume")
        if volume is not None:
            fmt = disk.get("format") or "raw"
            return Refusal(
                "VolumeNotSnapshottable",
                f"spec.disks[{i}].source.volume: the {fmt} volume {volume.get('path')} is an existing node file "
                f"k3svirt does not own; it cannot be snapshotted (only disks the operator created can)",
            )
    return None


def needs_work(obj: Mapping[str, Any], node: str, done: Iterable[str]) -> bool:
    """A snapshot/restore this node still has to carry out: not finished, not another node's, not deleted."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return False
    if status.get("node") not in (None, node):
        return False
    return status.get("phase") not in done


def snapshot_needs_work(obj: Mapping[str, Any], node: str) -> bool:
    return needs_work(obj, node, (SnapPhase.READY, SnapPhase.FAILED))


def restore_needs_work(obj: Mapping[str, Any], node: str) -> bool:
    return needs_work(obj, node, (RestorePhase.SUCCEEDED, RestorePhase.FAILED))


def human_size(n: int) -> str:
    """Bytes as a short quantity-like string: 0, 512, 12.5Ki, 3Mi, 1.25Gi."""
    value = float(n)
    for unit in ("", "Ki", "Mi", "Gi", "Ti"):
        if value < 1024 or unit == "Ti":
            text = f"{value:.2f}".rstrip("0").rstrip(".") if unit else str(int(value))
            return f"{text}{unit}"
        value /= 1024
    return str(n)  # not reached


def snapshot_status(
    phase: SnapPhase, node: str, reason: str, message: str, *, old: Mapping[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    """The snapshot's status: phase, node, the Ready condition (True only when Ready) and `fields`."""
    conds = [condition(COND_READY, phase == SnapPhase.READY, reason, message)]
    out = {**(old or {}), "phase": str(phase), "node": node, **fields}
    out["conditions"] = merge_conditions((old or {}).get("conditions"), conds)
    return {k: v for k, v in out.items() if v is not None}


def restore_status(
    phase: RestorePhase, node: str, reason: str, message: str, *, old: Mapping[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    conds = [condition(COND_READY, phase == RestorePhase.SUCCEEDED, reason, message)]
    out = {**(old or {}), "phase": str(phase), "node": node, **fields}
    out["conditions"] = merge_conditions((old or {}).get("conditions"), conds)
    return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class RestorePlan:
    """What a restore does: put `disks` back into `target`, in place (the snapshot's own VM) or as a
    new VM (clone); or refuse with `refused`."""

    target: str
    clone: bool
    disks: tuple[str, ...] = ()
    refused: Refusal | None = None


def plan_restore(
    restore: Mapping[str, Any],
    snapshot: Mapping[str, Any] | None,
    vm_name: str,
    vm_uid: str,
    vm_disks: Sequence[str],
    target_exists: bool,
) -> RestorePlan:
    """Decides a restore of `snapshot` (taken of the VM `vm_name`, whose current disks are `vm_disks`).

    `target_exists`: a VM of the target's name exists (for a clone target: it must not)."""
    target = ((restore.get("spec") or {}).get("target") or {}).get("name") or vm_name
    clone = target != vm_name

    def refuse(reason: str, message: str) -> RestorePlan:
        return RestorePlan(target, clone, refused=Refusal(reason, message))

    if snapshot is None:
        return refuse("SnapshotNotFound", f"spec.snapshotName: {(restore.get('spec') or {}).get('snapshotName')!r} "
                                          "does not exist")  # fmt: skip
    sstatus = snapshot.get("status") or {}
    if sstatus.get("phase") != SnapPhase.READY:
        phase = sstatus.get("phase") or "Pending"
        return refuse("SnapshotNotReady", f"spec.snapshotName: the snapshot is {phase}, not Ready")
    disks = tuple(d.get("name") for d in sstatus.get("disks") or [] if d.get("name"))
    if clone:
        if target_exists:
            return refuse("TargetExists", f"spec.target.name: a VM {target!r} exists; a restore into another VM "
                                          "creates it (a clone), so name one that does not exist, or restore into "
                                          "the snapshot's own VM")  # fmt: skip
        if not isinstance(sstatus.get("vmSpec"), Mapping):
            return refuse("SnapshotIncomplete", "the snapshot has no vmSpec")
        return RestorePlan(target, clone, disks)
    if sstatus.get("vmUID") not in (None, vm_uid):
        earlier = sstatus.get("vmUID")
        return refuse("SnapshotOfAnotherVM", f"the snapshot was taken of an earlier VM {vm_name!r} (uid {earlier}); "
                                             "restore it into a new VM (spec.target.name)")  # fmt: skip
    missing = [d for d in disks if d not in vm_disks]
    if missing:
        return refuse("DisksChanged", f"the VM no longer has the snapshot's disk(s) {', '.join(missing)}; restore "
                                      "into a new VM (spec.target.name) instead")  # fmt: skip
    return RestorePlan(target, clone, disks)


def clone_object(snapshot: Mapping[str, Any], target: str, node: str, api_version: str, kind: str) -> dict[str, Any]:
    """The VirtualMachine a clone restore creates: the snapshot's vmSpec on this node (the disks are
    here) without explicit MAC addresses (the clone's uid gives it its own)."""
    meta = snapshot["metadata"]
    spec = copy.deepcopy(dict(snapshot["status"]["vmSpec"]))
    spec["nodeName"] = node
    spec.pop("nodeSelector", None)
    for net in spec.get("networks") or []:
        net.pop("macAddress", None)
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": target,
            "namespace": meta["namespace"],
            "annotations": {names.ANNOTATION_RESTORED_FROM: f"{meta['namespace']}/{meta['name']}"},
        },
        "spec": spec,
    }


def deleted_with_vm(spec: Mapping[str, Any], snapshots: Iterable[Mapping[str, Any]]) -> list[str]:
    """The VirtualMachineSnapshots that go when their VM is deleted: all of them with deletionPolicy
    Delete (the default: the VM's directory, snapshot files included, is removed with it), none with
    Retain (the files stay with the retained disks, so their objects stay too, for a later VM of the
    same name that adopts the storage)."""
    if spec.get("deletionPolicy") == "Retain":
        return []
    return sorted({snap["metadata"]["name"] for snap in snapshots})


def orphaned(dirs: Iterable[str], snapshots: Iterable[str]) -> list[str]:
    """Snapshot directories of this VM whose VirtualMachineSnapshot is gone: their space is returned."""
    live = set(snapshots)
    return sorted(d for d in dirs if d.lstrip(".").removesuffix(".tmp") not in live)
