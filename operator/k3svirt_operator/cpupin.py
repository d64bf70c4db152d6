"""Dedicated cores (spec.cpu.dedicatedCores): which exclusive CPUs the kubelet gave the VM's
reservation, and the pinning that follows from them.

The kubelet's static CPU manager assigns exclusive CPUs to a Guaranteed pod's container with an
integer CPU request (the reservation pod, k3svirt_common.reservation) and enforces them in that
container's cpuset cgroup. The operator reads them there: it is what the kernel applies, it needs
only /sys (which the operator reads anyway), and it does not depend on the kubelet's root dir or its
internal checkpoint format (cpu_manager_state), nor on a gRPC client for the podresources API.
A container whose cpuset is its whole pod's cpuset got no exclusive CPUs: that kubelet does not run
the static policy, and the VM does not start on the pretence of dedicated cores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cputopo import Cpu, choose
from .domain_xml import parse_cpuset

CONTAINER = "reserve"  # the reservation pod's one container (k3svirt_common.reservation.pod_body)


@dataclass(frozen=True)
class Assignment:
    cpus: list[int]  # the container's exclusive CPUs, ascending
    pod_cpus: list[int]  # what its pod may use (the node's pod CPUs)


class NotExclusive(Exception):
    """The kubelet gave the reservation no exclusive CPUs (or not enough): the message says which."""


def container_id(pod: Mapping[str, Any]) -> str | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER and status.get("containerID") and "running" in (status.get("state") or {}):
            return str(status["containerID"]).split("://", 1)[-1]
    return None


def _cpus_file(d: Path) -> Path:
    return d / "cpuset.cpus.effective" if (d / "cpuset.cpus.effective").exists() else d / "cpuset.cpus"


def read_assignment(pod: Mapping[str, Any], cgroup_root: Path = Path("/sys/fs/cgroup")) -> Assignment | None:
    """The reservation container's CPUs and its pod's, from the cpuset cgroups (v1: the cpuset
    hierarchy, v2: the unified one; below /kubepods or a kubelet's cgroupRoot /<x>); None until the
    container runs."""
    cid, uid = container_id(pod), (pod.get("metadata") or {}).get("uid")
    if not cid or not uid:
        return None
    base = cgroup_root / "cpuset" if (cgroup_root / "cpuset").is_dir() else cgroup_root
    # Guaranteed pods sit right below kubepods (cgroupfs driver; the systemd driver is not handled).
    for pattern in (f"kubepods/pod{uid}/{cid}", f"*/kubepods/pod{uid}/{cid}"):
        for d in base.glob(pattern):
            cpus = parse_cpuset(_cpus_file(d).read_text().strip())
            pod_cpus = parse_cpuset(_cpus_file(d.parent).read_text().strip())
            return Assignment(sorted(cpus), sorted(pod_cpus))
    return None


def check(assignment: Assignment, wanted: int) -> list[int]:
    """The exclusive CPUs, or NotExclusive: they must be exactly `wanted` and not the pod's whole set."""
    cpus = assignment.cpus
    if len(cpus) != wanted or set(cpus) == set(assignment.pod_cpus):
        raise NotExclusive(
            f"the kubelet gave the reservation CPUs {_fmt(cpus)} of the node's {_fmt(assignment.pod_cpus)}, not "
            f"{wanted} exclusive ones: the node's kubelet needs cpuManagerPolicy: static (with reservedSystemCPUs)"
        )
    return cpus


def emulator_cpus(assignment: Assignment, housekeeping: str) -> str:
    """Where the emulator threads go: the node's housekeeping CPUs, else every pod CPU but the VM's."""
    if housekeeping:
        return housekeeping
    rest = [c for c in assignment.pod_cpus if c not in assignment.cpus]
    return _fmt(rest or assignment.cpus)


def preference_note(topology: list[Cpu], assignment: Assignment) -> str | None:
    """The topology choice (cputopo.choose) as a preference: says so when the kubelet's exclusive CPUs
    split an L2 cluster although the same count fit in fewer clusters (the kubelet aligns to cores
    and sockets, not to L2 modules). None when the assignment is as good."""
    count = len(assignment.cpus)
    best = choose(topology, set(assignment.pod_cpus), count)
    if best is None:
        return None
    clusters = {c.id: c.l2 for c in topology}
    used = len({clusters[c] for c in assignment.cpus if c in clusters})
    ideal = len({clusters[c] for c in best if c in clusters})
    if used <= ideal:
        return None
    return f"exclusive CPUs {_fmt(assignment.cpus)} span {used} L2 clusters; {_fmt(best)} would span {ideal}"


def with_pins(spec: Mapping[str, Any], cpus: list[int], emulator: str) -> dict[str, Any]:
    """The expanded spec with the assignment as its pinning (domain_xml pins vCPU i to the i-th CPU)."""
    cpu = {k: v for k, v in (spec.get("cpu") or {}).items() if k != "dedicatedCores"}
    cpu.update(dedicatedCpuSet=_fmt(cpus), emulatorCpuSet=emulator)
    return {**spec, "cpu": cpu}


def _fmt(cpus: list[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))
