"""Host CPU topology from sysfs, and which CPUs a VM's dedicated cores should be (pure choice).

The unit that matters on the target (Intel N305: 8 Gracemont E-cores in two 4-core modules, each
module sharing one L2) is the L2 cluster: `cache/index2/shared_cpu_list`. A request for as many CPUs
as a cluster has gets one whole cluster, so the VM shares its L2 with nobody; larger requests take
whole clusters first; what is left is taken from the partly used cluster that fits it most tightly,
so whole clusters stay whole for the next request. Core kinds are not mixed when avoidable (hybrid
parts list their P-cores in /sys/devices/cpu_core/cpus and E-cores in /sys/devices/cpu_atom/cpus).

The kubelet picks a dedicated VM's CPUs (cpupin.py), not this module: `choose` is the reference its
pick is checked against, and `housekeeping` is the node layout under which the kubelet's pick is a
whole L2 cluster. The kubelet knows no L2 clusters: cadvisor reports only level-3+ caches that span
part of a socket as "uncore" caches (an L2 shared by a 4-core module is dropped), and on a single-
socket part the static policy hands out the lowest free CPUs first (tests/test_kubelet_cpu_allocation.py
runs the kubelet's own code on these fixtures). With the housekeeping CPUs (the kubelet's
reservedSystemCPUs) at the top of the last L2 cluster, the lowest cluster is the one a cluster-sized
request starts at, so it gets a whole cluster whenever the lowest one is free (docs/accounting.md,
"Exclusive CPUs", says what is and is not guaranteed).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .domain_xml import parse_cpuset


@dataclass(frozen=True)
class Cpu:
    id: int
    l2: frozenset[int]  # the CPUs sharing this CPU's L2 (itself included)
    kind: str  # "P", "E" or "" (not a hybrid part)
    core: frozenset[int] = field(default=frozenset())  # its SMT siblings (itself included); empty: itself only

    @property
    def siblings(self) -> frozenset[int]:
        return self.core or frozenset({self.id})


def read(sys_root: Path = Path("/sys")) -> list[Cpu]:
    """The online CPUs of the host whose sysfs is at `sys_root` (a fixture tree in tests)."""
    base = sys_root / "devices/system/cpu"
    online = parse_cpuset((base / "online").read_text().strip())
    kinds: dict[int, str] = {}
    for kind, dev in (("P", "cpu_core"), ("E", "cpu_atom")):
        f = sys_root / "devices" / dev / "cpus"
        if f.exists():
            kinds.update(dict.fromkeys(parse_cpuset(f.read_text().strip()), kind))
    out = []
    for cpu in sorted(online):
        l2_file = base / f"cpu{cpu}/cache/index2/shared_cpu_list"
        l2 = parse_cpuset(l2_file.read_text().strip()) if l2_file.exists() else [cpu]
        core_file = base / f"cpu{cpu}/topology/thread_siblings_list"
        core = parse_cpuset(core_file.read_text().strip()) if core_file.exists() else [cpu]
        out.append(Cpu(cpu, frozenset(l2), kinds.get(cpu, ""), frozenset(core)))
    return out


def _clusters(cpus: Iterable[Cpu]) -> dict[frozenset[int], str]:
    return {c.l2: c.kind for c in cpus}


def choose(cpus: list[Cpu], available: Iterable[int], count: int) -> list[int] | None:
    """`count` CPUs out of `available` (the CPUs no pod and no other VM holds), None if too few."""
    free = set(available) & {c.id for c in cpus}
    if count < 1 or len(free) < count:
        return None
    by_kind: dict[str, list[frozenset[int]]] = {}
    for cluster, kind in _clusters(cpus).items():
        by_kind.setdefault(kind, []).append(cluster)
    options = []
    for kind, clusters in by_kind.items():
        picked = _within(clusters, free, count)
        if picked is not None:
            options.append((_score(picked, clusters, free), kind, picked))
    if options:  # one kind of core only, best score first; P-cores before E-cores on a tie
        return sorted(min(options, key=lambda o: (o[0], o[1] != "P"))[2])
    return sorted(_within(list(_clusters(cpus)), free, count) or [])


def _within(clusters: list[frozenset[int]], free: set[int], count: int) -> list[int] | None:
    avail = [(cl, sorted(cl & free)) for cl in clusters if cl & free]
    if sum(len(f) for _, f in avail) < count:
        return None
    whole = sorted((f for cl, f in avail if len(f) == len(cl)), key=lambda f: (-len(f), f))
    exact = next((f for f in whole if len(f) == count), None)
    if exact is not None:
        return exact
    picked: list[int] = []
    used: set[int] = set()
    for f in whole:  # whole clusters that fit entirely, largest first
        if len(picked) + len(f) <= count:
            picked += f
            used |= set(f)
    rest = count - len(picked)
    if rest:
        # The remainder from the cluster with the fewest free CPUs that still holds it (tightest fit),
        # else CPU by CPU from the fullest clusters.
        left = sorted(([c for c in f if c not in used] for _, f in avail), key=lambda f: (len(f), f))
        fit = next((f for f in left if len(f) >= rest), None)
        if fit is not None:
            picked += fit[:rest]
        else:
            for f in sorted(left, key=len, reverse=True):
                picked += f[: count - len(picked)]
    return picked if len(picked) == count else None


def _score(picked: list[int], clusters: list[frozenset[int]], free: set[int]) -> tuple[int, int]:
    """(clusters shared with others, clusters touched): lower is better."""
    chosen = set(picked)
    touched = [cl for cl in clusters if cl & chosen]
    shared = sum(1 for cl in touched if not cl <= chosen)
    return shared, len(touched)


def housekeeping(cpus: list[Cpu], count: int = 1) -> list[int]:
    """The node's housekeeping CPUs (the kubelet's reservedSystemCPUs, where host services, IRQs and
    the VMs' emulator threads run): at least `count` CPUs, whole cores, taken from the top of the L2
    cluster that holds the highest CPU number. The kubelet packs exclusive CPUs from the lowest free
    CPU upwards, so with the housekeeping CPUs up there the lower clusters stay whole and a request
    the size of one starts at its first CPU."""
    if count < 1 or not cpus:
        return []
    top = max(cpus, key=lambda c: c.id)
    order = sorted(cpus, key=lambda c: (c.l2 == top.l2, c.id), reverse=True)  # the top cluster first
    picked: set[int] = set()
    for cpu in order:
        if len(picked) >= count:
            break
        picked |= cpu.siblings & {c.id for c in cpus}
    return sorted(picked)


def l2_groups(cpus: list[Cpu]) -> Mapping[str, list[list[int]]]:
    """The L2 clusters by core kind, for logs and docs."""
    out: dict[str, list[list[int]]] = {}
    for cluster, kind in _clusters(cpus).items():
        out.setdefault(kind or "-", []).append(sorted(cluster))
    return {k: sorted(v) for k, v in out.items()}


def fmt(cpus: Iterable[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (cpuset syntax, as the kubelet and libvirt write it)."""
    out: list[str] = []
    ordered = sorted(set(cpus))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


def main(argv: list[str]) -> int:
    """`python -m k3svirt_operator.cputopo housekeeping [COUNT]`: this machine's housekeeping CPUs in
    cpuset syntax (tests/harness/node.sh writes them as the kubelet's reservedSystemCPUs);
    `... clusters`: its L2 clusters by core kind."""
    if argv[:1] == ["housekeeping"] and len(argv) <= 2:
        print(fmt(housekeeping(read(), int(argv[1]) if len(argv) == 2 else 1)))
        return 0
    if argv == ["clusters"]:
        print(dict(l2_groups(read())))
        return 0
    print("usage: python -m k3svirt_operator.cputopo housekeeping [COUNT] | clusters", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
