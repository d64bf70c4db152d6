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

from .cputopo import Cpu, choose, fmt
from .cputopo import housekeeping as housekeeping_cpus
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
            f"{wanted} exclusive ones: the node's kubelet needs cpuManagerPolicy: static, with reservedSystemCPUs = "
            'its housekeeping CPUs (docs/accounting.md, "Exclusive CPUs")'
        )
    return cpus


def emulator_cpus(assignment: Assignment, housekeeping: str) -> str:
    """Where the emulator threads go: the node's housekeeping CPUs, else every pod CPU but the VM's."""
    if housekeeping:
        return housekeeping
    rest = [c for c in assignment.pod_cpus if c not in assignment.cpus]
    return _fmt(rest or assignment.cpus)


def l2_layout(topology: list[Cpu], cpus: list[int]) -> str:
    """Which L2 clusters the CPUs use, for the DedicatedCores Event: "one whole L2 cluster (0-3)",
    "L2 clusters 0-3 (2 of 4), 4-7 (2 of 4)"."""
    clusters = {c.id: c.l2 for c in topology}
    used = sorted({clusters[c] for c in cpus if c in clusters}, key=min)
    if len(used) == 1 and used[0] <= set(cpus):
        return f"one whole L2 cluster ({fmt(used[0])})"
    parts = [f"{fmt(cl)} ({len(cl & set(cpus))} of {len(cl)})" for cl in used]
    return ("L2 clusters " if len(parts) > 1 else "L2 cluster ") + ", ".join(parts)


def preference_note(topology: list[Cpu], assignment: Assignment, housekeeping: str = "") -> str | None:
    """The topology choice (cputopo.choose, the reference) as a check of the kubelet's pick: says so,
    and why, when its exclusive CPUs span more L2 clusters than the same count would on this node
    with no other exclusive CPUs (the pod's CPUs minus the housekeeping ones). None when as good.

    The kubelet knows no L2 modules and hands out the lowest free CPUs (cputopo's docstring), so a
    split has one of two causes: housekeeping CPUs that are not the top of the last cluster (then
    every cluster-sized request straddles two clusters), or smaller exclusive allocations holding
    part of the lower cluster (the kubelet does not keep it whole for a later, larger request)."""
    count = len(assignment.cpus)
    hk = set(parse_cpuset(housekeeping)) if housekeeping else set()
    best = choose(topology, set(assignment.pod_cpus) - hk, count)
    if best is None:
        return None
    clusters = {c.id: c.l2 for c in topology}
    used = len({clusters[c] for c in assignment.cpus if c in clusters})
    ideal = len({clusters[c] for c in best if c in clusters})
    if used <= ideal:
        return None
    where = housekeeping_advice(topology, housekeeping) or (
        "the kubelet hands out the lowest free CPUs and knows no L2 modules: smaller exclusive allocations "
        "hold part of the lower cluster"
    )
    return f"exclusive CPUs {_fmt(assignment.cpus)} span {used} L2 clusters where {ideal} would do ({where})"


def housekeeping_advice(topology: list[Cpu], housekeeping: str) -> str | None:
    """Says when the housekeeping CPUs (K3SVIRT_HOUSEKEEPING_CPUS = the kubelet's reservedSystemCPUs)
    are not where the kubelet's packing needs them (cputopo.housekeeping); None when they are, when
    they are not known, or when no L2 cluster is larger than a core (nothing to keep whole)."""
    hk = sorted(parse_cpuset(housekeeping)) if housekeeping else []
    if not hk or all(c.l2 <= c.siblings for c in topology):
        return None  # not known, or no L2 shared beyond one core: nothing to keep whole
    want = housekeeping_cpus(topology, len(hk))
    if hk == want:
        return None
    return (
        f"the housekeeping CPUs {fmt(hk)} are not the top of the last L2 cluster: the kubelet hands out the lowest "
        f"free CPUs, so cluster-sized requests straddle two clusters; make reservedSystemCPUs and "
        f"K3SVIRT_HOUSEKEEPING_CPUS {fmt(want)}"
    )


def with_pins(spec: Mapping[str, Any], cpus: list[int], emulator: str) -> dict[str, Any]:
    """The expanded spec with the assignment as its pinning (domain_xml pins vCPU i to the i-th CPU)."""
    cpu = {k: v for k, v in (spec.get("cpu") or {}).items() if k != "dedicatedCores"}
    cpu.update(dedicatedCpuSet=_fmt(cpus), emulatorCpuSet=emulator)
    return {**spec, "cpu": cpu}


def _fmt(cpus: list[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))
