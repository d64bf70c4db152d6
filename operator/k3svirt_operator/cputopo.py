"""Host CPU topology from sysfs, and which CPUs a VM's dedicated cores should be (pure choice).

The unit that matters on the target (Intel N305: 8 Gracemont E-cores in two 4-core modules, each
module sharing one L2) is the L2 cluster: `cache/index2/shared_cpu_list`. A request for as many CPUs
as a cluster has gets one whole cluster, so the VM shares its L2 with nobody; larger requests take
whole clusters first; what is left is taken from the partly used cluster that fits it most tightly,
so whole clusters stay whole for the next request. Core kinds are not mixed when avoidable (hybrid
parts list their P-cores in /sys/devices/cpu_core/cpus and E-cores in /sys/devices/cpu_atom/cpus).

Not wired into the VM flow yet: docs/accounting.md, "Exclusive CPUs", says what remains.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .domain_xml import parse_cpuset


@dataclass(frozen=True)
class Cpu:
    id: int
    l2: frozenset[int]  # the CPUs sharing this CPU's L2 (itself included)
    kind: str  # "P", "E" or "" (not a hybrid part)


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
        out.append(Cpu(cpu, frozenset(l2), kinds.get(cpu, "")))
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


def l2_groups(cpus: list[Cpu]) -> Mapping[str, list[list[int]]]:
    """The L2 clusters by core kind, for logs and docs."""
    out: dict[str, list[list[int]]] = {}
    for cluster, kind in _clusters(cpus).items():
        out.setdefault(kind or "-", []).append(sorted(cluster))
    return {k: sorted(v) for k, v in out.items()}
