"""Reservation pods: what a VM holds on its node, in the form kube-scheduler and the kubelet count.

Every VM that runs (or is about to start) on a node has one reservation pod in its namespace: a pause
container whose requests = limits = the VM's vCPUs, guest RAM (or hugepages) and QEMU overhead,
bound to the VM's node by node affinity, owned by the VM. The scheduler places it like any pod (so
pods never land in memory a VM holds, and a VM never starts where it does not fit), ResourceQuota and
LimitRange admission count it like any pod (quotas cover VMs and pods together), and the kubelet
admits it against the node's allocatable. The QEMU process itself stays in libvirt's cgroup: the pod
holds the share, it does not contain the VM. docs/accounting.md explains the design and its limits.

Pure functions only: the pod body, the overhead formula, how a pod's state reads, what to do next.
The API calls are in k3svirt_common.kube.reservations; the operator's reconciler wires them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING
from enum import StrEnum
from typing import Any

from . import names
from .quantity import parse_quantity, quantity_value

MI = 1024**2

LABEL_VM = f"{names.GROUP}/reservation-for"  # the VM's name (a DNS label, so a valid label value)
LABEL_NODE = f"{names.GROUP}/reservation-node"  # the node whose operator manages the pod
ANNOTATION_VM_UID = f"{names.GROUP}/vm-uid"  # which VM of that name (a name can be reused)
PRIORITY_CLASS = "k3svirt-vm-reservation"
# Above every ordinary pod (value 0 by default), so a pending pod of lower priority never preempts a
# running VM's share; below system-cluster-critical (2e9). preemptionPolicy Never: a VM that does not
# fit waits for room, it never evicts a tenant's pods.
PRIORITY_VALUE = 1_000_000
PAUSE_IMAGE = "localhost/k3svirt/pause:3.10"  # the test bed's sandbox image; nodes set their own

# The overhead formula (docs/accounting.md, "Overhead"): what the node spends on a VM besides its
# guest RAM. KubeVirt's GetMemoryOverhead charges ~220 MiB of platform processes per VM (virt-launcher,
# its monitor, virtqemud, virtlogd); k3svirt's platform share is the reservation pod alone.
QEMU_BASE = 64 * MI  # QEMU's own heap, libraries, device models, firmware images, I/O buffers
PER_VCPU = 8 * MI  # vCPU thread stacks and KVM/TCG per-vCPU state (KubeVirt uses the same figure)
PER_IOTHREAD = 8 * MI
GRAPHICS = 16 * MI  # video RAM and the VNC/SPICE server
EMULATION = 128 * MI  # TCG's translation cache, when the node has no KVM (it grows with guest code)
VFIO = 1024 * MI  # passthrough: IOMMU mappings and locked DMA memory (KubeVirt's figure)
# The reservation pod itself, by RSS (the safe side): its containerd shim (Debian containerd 1.6.20's
# runc v2 shim, a Go process) 13.9 MiB RSS / 5.7 MiB PSS and two pause processes 1.4 / 0.3 MiB
# (bench/README.md).
PLATFORM = 16 * MI
PAGE_TABLE_DIVISOR = 512  # page tables for the guest RAM: 1/512 of it (KubeVirt's figure)


class ReservationError(ValueError):
    """The spec cannot be turned into a reservation (names the field)."""


def vcpus(spec: Mapping[str, Any]) -> int:
    cpu = spec.get("cpu") or {}
    return int(cpu.get("sockets") or 1) * int(cpu.get("cores") or 1) * int(cpu.get("threads") or 1)


def memory_overhead(spec: Mapping[str, Any], *, emulated: bool) -> int:
    """Bytes the node spends on the VM beyond its guest RAM (the formula above)."""
    guest = parse_quantity((spec.get("memory") or {}).get("size") or 0, field="spec.memory.size")
    dev = spec.get("devices") or {}
    graphics = (dev.get("graphics") or {}).get("type", "none") not in ("none", None)
    return (
        QEMU_BASE
        + PER_VCPU * vcpus(spec)
        + PER_IOTHREAD * int(spec.get("iothreads") or 0)
        + -(-guest // PAGE_TABLE_DIVISOR)
        + (GRAPHICS if graphics else 0)
        + (EMULATION if emulated else 0)
        + (VFIO if spec.get("hostDevices") else 0)
        + PLATFORM
    )


def _mebibytes(n: int) -> str:
    return f"{-(-n // MI)}Mi"


def cpu_request(spec: Mapping[str, Any]) -> str:
    """spec.cpu.request, else one CPU per vCPU, as a canonical quantity ("2", "250m"). Dedicated
    cores are whole CPUs: the kubelet's static CPU manager gives exclusive CPUs to integer requests."""
    dedicated = (spec.get("cpu") or {}).get("dedicatedCores")
    if dedicated:
        return str(int(dedicated))
    given = (spec.get("cpu") or {}).get("request")
    if given is None:
        return str(vcpus(spec))
    try:
        value = quantity_value(str(given), field="spec.cpu.request")
    except ValueError as exc:
        raise ReservationError(str(exc)) from exc
    millis = (value * 1000).to_integral_value(rounding=ROUND_CEILING)
    if millis < 1:
        raise ReservationError(f"spec.cpu.request: {given!r} is below 1m")
    return str(int(millis // 1000)) if millis % 1000 == 0 else f"{millis}m"


def resources(spec: Mapping[str, Any], *, emulated: bool, devices: Mapping[str, int] | None = None) -> dict[str, str]:
    """The reservation's requests (= limits) for a VM's expanded, defaulted spec.

    Hugepage-backed guest RAM is requested as hugepages-<size>; the overhead stays ordinary memory.
    `devices`: the extended resources of its passthrough devices (k3svirt_common.pci_resources), so
    the scheduler counts them like CPU and memory.
    """
    mem = spec.get("memory") or {}
    try:
        guest = parse_quantity(mem.get("size") or 0, field="spec.memory.size")
    except ValueError as exc:
        raise ReservationError(str(exc)) from exc
    overhead = memory_overhead(spec, emulated=emulated)
    out = {"cpu": cpu_request(spec)}
    page = (mem.get("hugepages") or {}).get("pageSize")
    if page:
        out["memory"] = _mebibytes(overhead)
        out[f"hugepages-{page}"] = _mebibytes(guest)
    else:
        out["memory"] = _mebibytes(guest + overhead)
    out.update({res: str(units) for res, units in sorted((devices or {}).items())})
    return out


def pod_name(vm: str) -> str:
    return f"k3svirt-vm-{vm}"


def pod_body(
    namespace: str, vm: str, uid: str, node: str, res: Mapping[str, str], image: str = PAUSE_IMAGE
) -> dict[str, Any]:
    """The reservation pod of VM namespace/vm (uid) on `node`, holding `res`.

    Placed by the scheduler (node affinity on the node's name, not spec.nodeName, so an unfit pod is
    reported Unschedulable with the scheduler's reason instead of failing kubelet admission), with a
    security context the 'restricted' Pod Security level accepts, no service account token, no
    service links. It tolerates the node going NotReady/unreachable (like DaemonSet pods): a running
    VM keeps its share through a network blip instead of being evicted after 300 s.
    """
    limits = dict(res)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(vm),
            "namespace": namespace,
            "labels": {LABEL_VM: vm, LABEL_NODE: node, "app.kubernetes.io/managed-by": "k3svirt-operator"},
            "annotations": {ANNOTATION_VM_UID: uid},
            "ownerReferences": [
                {
                    "apiVersion": names.API_VERSION,
                    "kind": names.VM_KIND,
                    "name": vm,
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "spec": {
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
                        ]
                    }
                }
            },
            "priorityClassName": PRIORITY_CLASS,
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
            ],
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 0,
            "restartPolicy": "Always",
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65535,
                "runAsGroup": 65535,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "reserve",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "resources": {"requests": dict(res), "limits": limits},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def priority_class_body() -> dict[str, Any]:
    return {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": PRIORITY_CLASS, "labels": {"app.kubernetes.io/managed-by": "k3svirt-operator"}},
        "value": PRIORITY_VALUE,
        "preemptionPolicy": "Never",
        "globalDefault": False,
        "description": "k3svirt VM reservations: never preempted by ordinary pods, never preempt them.",
    }


# ------------------------------------------------------------------------------ reading a pod
class State(StrEnum):
    MISSING = "Missing"  # no pod of that name
    FOREIGN = "Foreign"  # a pod of that name that is not a reservation of ours: never touched
    STALE = "Stale"  # ours, but of another VM of the same name, or sized for another spec
    DELETING = "Deleting"  # going away; a new one is created once it is gone
    PENDING = "Pending"  # not placed yet, no verdict from the scheduler
    UNSCHEDULABLE = "Unschedulable"  # the scheduler found no room (message: its reason)
    BOUND = "Bound"  # placed on the node, the kubelet has not admitted it yet
    ADMITTED = "Admitted"  # the kubelet accepted it: the share is held
    FAILED = "Failed"  # the kubelet rejected (OutOfcpu, ...) or evicted it; replaced


@dataclass(frozen=True)
class View:
    state: State
    message: str = ""


def _condition(pod: Mapping[str, Any], ctype: str) -> Mapping[str, Any]:
    return next((c for c in (pod.get("status") or {}).get("conditions") or () if c.get("type") == ctype), {})


def read(pod: Mapping[str, Any] | None, *, uid: str, node: str, want: Mapping[str, str] | None) -> View:
    """What the pod found under the VM's reservation name means. `want`: the resources the VM needs
    now (None: whatever the pod holds is right, e.g. the running domain's share)."""
    if pod is None:
        return View(State.MISSING)
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    if LABEL_VM not in labels:
        return View(State.FOREIGN, f"pod {meta.get('name')} exists and is not a k3svirt reservation")
    if meta.get("deletionTimestamp"):
        return View(State.DELETING, "the previous reservation is being removed")
    if annotations.get(ANNOTATION_VM_UID) != uid or labels.get(LABEL_NODE) != node:
        return View(State.STALE, "the reservation belongs to an earlier VM of this name or another node")
    if want is not None and not holds(pod, want):
        return View(State.STALE, "the reservation was sized for another spec")
    phase = status.get("phase")
    if phase in ("Failed", "Succeeded"):
        why = ": ".join(p for p in (status.get("reason"), status.get("message")) if p)
        return View(State.FAILED, f"the kubelet ended the reservation pod ({why or phase})")
    if not spec.get("nodeName"):
        scheduled = _condition(pod, "PodScheduled")
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            return View(State.UNSCHEDULABLE, scheduled.get("message") or "no room on the node")
        return View(State.PENDING, "waiting for kube-scheduler to place the reservation")
    if spec["nodeName"] != node:  # cannot happen with our affinity; never start on that basis
        return View(State.STALE, f"the reservation was placed on node {spec['nodeName']}")
    # The kubelet stamps startTime when it admits the pod (before creating its sandbox): from then on
    # the share is held on the node itself, not only in the scheduler's books.
    if phase == "Running" or status.get("startTime"):
        return View(State.ADMITTED)
    return View(State.BOUND, "placed on the node, waiting for the kubelet to admit it")


def holds(pod: Mapping[str, Any], want: Mapping[str, str]) -> bool:
    """The pod's one container requests and limits exactly `want` (compared as quantities: the API
    server rewrites them canonically, "1024Mi" -> "1Gi"). Checked on the pod itself, not on a label
    or annotation, so a look-alike pod with a smaller share is never taken for the VM's reservation."""
    containers = (pod.get("spec") or {}).get("containers") or []
    if len(containers) != 1:
        return False
    res = containers[0].get("resources") or {}

    def same(got: Mapping[str, Any] | None) -> bool:
        got = got or {}
        try:
            return set(got) == set(want) and all(quantity_value(str(got[k])) == quantity_value(want[k]) for k in want)
        except ValueError:
            return False

    return same(res.get("requests")) and same(res.get("limits"))


# ------------------------------------------------------------------------------ what to do
class Intent(StrEnum):
    NOTHING = "nothing"
    CREATE = "create"
    DELETE = "delete"  # release, or make way for a correctly sized one (created on a later pass)


def plan(view: View, *, hold: bool) -> Intent:
    """hold: the VM runs or is to start now. A foreign pod is never deleted."""
    if view.state in (State.FOREIGN, State.DELETING):
        return Intent.NOTHING
    if not hold:
        return Intent.NOTHING if view.state == State.MISSING else Intent.DELETE
    if view.state == State.MISSING:
        return Intent.CREATE
    if view.state in (State.STALE, State.FAILED):
        return Intent.DELETE
    return Intent.NOTHING


def orphaned(pod: Mapping[str, Any], vm: Mapping[str, Any] | None, node: str) -> bool:
    """A reservation of this node whose VM is gone, is another VM (same name, new uid), or now runs
    elsewhere: the sweep removes it (the garbage collector would too, for the first two, later)."""
    if vm is None:
        return True
    meta = pod.get("metadata") or {}
    if (meta.get("annotations") or {}).get(ANNOTATION_VM_UID) != (vm.get("metadata") or {}).get("uid"):
        return True
    spec, status = vm.get("spec") or {}, vm.get("status") or {}
    owner = spec.get("nodeName") or status.get("node")
    return bool(owner) and owner != node
