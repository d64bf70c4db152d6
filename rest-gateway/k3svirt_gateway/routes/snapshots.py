"""/vms/{name}/snapshots: VirtualMachineSnapshot and VirtualMachineRestore objects (the operator of the
VM's node copies the disks; docs/snapshots.md)."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, request
from k3svirt_common import names

from .. import contract as c
from ..api import check_name, created, json_body, namespace, op
from ..conventions import delete_options, versioned
from ..errors import Problem
from ..k8s import k3svirt_path
from ..schemas import require_object, validate
from . import clean_metadata, deletion_accepted, kube, list_items
from .vms import vm_path

bp = Blueprint("snapshots", __name__)


def blueprints() -> list[Blueprint]:
    return [bp]


def snapshot_path(ns: str, name: str | None = None) -> str:
    return k3svirt_path(c.SNAPSHOT_PLURAL, ns, name)


def restore_path(ns: str) -> str:
    return k3svirt_path(c.RESTORE_PLURAL, ns)


def summary(obj: dict[str, Any]) -> dict[str, Any]:
    md, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    ready = next((x for x in status.get("conditions") or [] if isinstance(x, dict) and x.get("type") == "Ready"), {})
    out: dict[str, Any] = {
        "name": md.get("name", ""),
        "namespace": md.get("namespace", ""),
        "vm": spec.get("vmName", ""),
        "phase": status.get("phase") or "Pending",
        "deleting": bool(md.get("deletionTimestamp")),
    }
    for key in ("consistency", "sizeBytes", "size", "creationTime"):
        if status.get(key) is not None:
            out[key] = status[key]
    if ready.get("reason"):
        out["reason"], out["message"] = ready["reason"], ready.get("message", "")
    return out


def _vm(ns: str, name: str) -> dict[str, Any]:
    vm = kube().get(vm_path(ns, check_name(name, label=True)))
    if (vm.get("metadata") or {}).get("deletionTimestamp"):
        raise Problem(409, f"VirtualMachine {name!r} is being deleted", reason="Deleting")
    return vm


def _snapshot_of(ns: str, vm: str, snap: str) -> dict[str, Any]:
    """The VM's snapshot; 404 for a snapshot of another VM (it is not under this path)."""
    obj = kube().get(snapshot_path(ns, check_name(snap, "snapshot", label=True)))
    if (obj.get("spec") or {}).get("vmName") != vm:
        raise Problem(404, f"VirtualMachine {vm!r} has no snapshot {snap!r}")
    return obj


def _optional_body(schema: str) -> dict[str, Any]:
    if not request.get_data(cache=True):
        return {}
    return validate(schema, require_object(json_body()))


@op(
    bp,
    "/vms/<name>/snapshots",
    "POST",
    role="operate",
    summary="Snapshot the VM's disks (a running guest is paused briefly: crash-consistent)",
    body="SnapshotCreate",
    response=(201, "VirtualMachineSnapshot", "created; the operator takes it (phase Pending -> Ready)"),
    query=("namespace",),
    names="label",
)
def create_snapshot(name: str):
    """The VM's node copies every disk under the VM's own storage; a VM with a passthrough device or a
    volume disk ends Failed with the reason (see status.conditions)."""
    ns = namespace()
    body = _optional_body("SnapshotCreate")
    vm = _vm(ns, name)
    snap = body.get("name") or f"{name[:46]}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    obj = {
        "apiVersion": c.API_VERSION,
        "kind": c.SNAPSHOT_KIND,
        "metadata": {"name": snap, "namespace": ns, "labels": {names.LABEL_VM: name}},
        "spec": {"vmName": vm["metadata"]["name"]},
    }
    out = kube().post(snapshot_path(ns), obj)
    return created(clean_metadata(out), f"/api/v1/vms/{name}/snapshots/{snap}?namespace={ns}")


@op(
    bp,
    "/vms/<name>/snapshots",
    "GET",
    summary="List the VM's snapshots",
    response=(200, "SnapshotList", "snapshots"),
    query=("namespace", "labelSelector"),
    names="label",
    paged=True,
)
def list_snapshots(name: str):
    check_name(name, label=True)

    def list_fn(ns: str, query: dict[str, Any]) -> dict[str, Any]:
        # spec.vmName is a selectable field of the CRD: a label could claim any VM, the spec cannot.
        return kube().get(snapshot_path(ns), query={**query, "fieldSelector": f"spec.vmName={name}"})

    return list_items(list_fn, summary)


@op(
    bp,
    "/vms/<name>/snapshots/<snap>",
    "GET",
    summary="Get one snapshot (spec + status: phase, size, creation time, conditions)",
    response=(200, "VirtualMachineSnapshot", "the snapshot"),
    query=("namespace",),
    names="label",
    etag=True,
)
def get_snapshot(name: str, snap: str):
    ns = namespace()
    check_name(name, label=True)
    return clean_metadata(versioned(_snapshot_of(ns, name, snap)))


@op(
    bp,
    "/vms/<name>/snapshots/<snap>",
    "DELETE",
    summary="Delete a snapshot (its files are removed and their space returned)",
    response=(202, "Accepted", "deletion accepted"),
    query=("namespace",),
    names="label",
)
def delete_snapshot(name: str, snap: str):
    ns = namespace()
    check_name(name, label=True)
    _snapshot_of(ns, name, snap)
    kube().delete(snapshot_path(ns, snap), body=delete_options())
    return deletion_accepted(c.SNAPSHOT_KIND, snap, ns)


@op(
    bp,
    "/vms/<name>/snapshots/<snap>/restore",
    "POST",
    summary="Restore a snapshot into the VM (stopped for it, then back as it was) or into a new VM (clone)",
    body="RestoreRequest",
    response=(202, "VirtualMachineRestore", "accepted; the operator restores (phase Pending -> Succeeded)"),
    query=("namespace",),
    names="label",
)
def restore_snapshot(name: str, snap: str):
    """Without a body (or without `target`) the snapshot's disks replace the VM's: a running VM is shut
    down first and started again afterwards. With `target` a new VM of that name is created from the
    snapshot. A failed restore leaves the target's disks as they were."""
    ns = namespace()
    body = _optional_body("RestoreRequest")
    vm = _vm(ns, name)
    obj = _snapshot_of(ns, name, snap)
    phase = (obj.get("status") or {}).get("phase") or "Pending"
    if phase != "Ready":
        raise Problem(409, f"snapshot {snap!r} is {phase}, not Ready; it cannot be restored", reason="NotReady")
    if (obj.get("status") or {}).get("vmUID") not in (None, vm["metadata"]["uid"]) and not body.get("target"):
        raise Problem(409, f"snapshot {snap!r} was taken of an earlier VM {name!r}; restore it into a new VM (target)")
    target = body.get("target") or name
    if target != name:
        try:
            kube().get(vm_path(ns, target))
        except Problem as exc:
            if exc.status != 404:
                raise
        else:
            raise Problem(409, f"target: a VM {target!r} exists; a restore into another VM creates it (a clone)",
                          reason="TargetExists")  # fmt: skip
    restore_name = body.get("name") or f"{snap[:40]}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    spec: dict[str, Any] = {"snapshotName": snap}
    if target != name:
        spec["target"] = {"name": target}
    restore = {
        "apiVersion": c.API_VERSION,
        "kind": c.RESTORE_KIND,
        "metadata": {"name": restore_name, "namespace": ns, "labels": {names.LABEL_VM: name}},
        "spec": spec,
    }
    return clean_metadata(kube().post(restore_path(ns), restore)), 202
