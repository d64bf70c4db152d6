"""A fixture /sys CPU tree (what `cputopo.read` and cadvisor's topology discovery read): online CPUs,
per-CPU topology (core, package, SMT siblings), caches index0-3 (L1d, L1i, L2, L3 with id, level, type,
size, shared_cpu_list, shared_cpu_map), one NUMA node with its CPU links, and the hybrid core kinds
(devices/cpu_core, devices/cpu_atom). Used by operator/tests (cputopo, cpupin) and by
tests/test_kubelet_cpu_allocation.py, which feeds the same tree to the kubelet's own code."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _mask(cpus: Sequence[int], ncpus: int) -> str:
    bits = sum(1 << c for c in cpus)
    words = max(1, (ncpus + 31) // 32)
    return ",".join(f"{(bits >> (32 * w)) & 0xFFFFFFFF:08x}" for w in reversed(range(words)))


def _list(cpus: Sequence[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


def write_sys(
    root: Path,
    l2_groups: Sequence[Sequence[int]],
    *,
    cores: Sequence[Sequence[int]] | None = None,
    l3_groups: Sequence[Sequence[int]] | None = None,
    p_cores: Sequence[int] | None = None,
    e_cores: Sequence[int] | None = None,
) -> Path:
    """`root` becomes a /sys for the CPUs of `l2_groups` (each group shares one L2). `cores`: the SMT
    sibling groups (default: one thread per core); `l3_groups`: default one L3 for every CPU."""
    cpus = sorted(c for g in l2_groups for c in g)
    ncpus = max(cpus) + 1
    cores = [list(g) for g in cores] if cores is not None else [[c] for c in cpus]
    l3_groups = [list(g) for g in l3_groups] if l3_groups is not None else [cpus]
    core_of = {c: sorted(g) for g in cores for c in g}
    base = root / "devices/system/cpu"
    base.mkdir(parents=True)
    (base / "online").write_text(f"0-{max(cpus)}\n" if cpus == list(range(ncpus)) else _list(cpus) + "\n")
    l1_groups = sorted({tuple(core_of[c]) for c in cpus})
    levels = [("index0", 1, "Data", "48K", l1_groups), ("index1", 1, "Instruction", "64K", l1_groups),
              ("index2", 2, "Unified", "2048K", [tuple(g) for g in l2_groups]),
              ("index3", 3, "Unified", "6144K", [tuple(g) for g in l3_groups])]  # fmt: skip
    for cpu in cpus:
        d = base / f"cpu{cpu}"
        topo = d / "topology"
        topo.mkdir(parents=True)
        siblings = core_of[cpu]
        (topo / "core_id").write_text(f"{siblings[0]}\n")
        (topo / "physical_package_id").write_text("0\n")
        (topo / "thread_siblings_list").write_text(_list(siblings) + "\n")
        (topo / "core_cpus_list").write_text(_list(siblings) + "\n")
        for index, level, kind, size, groups in levels:
            group_id, group = next((i, g) for i, g in enumerate(groups) if cpu in g)
            c = d / "cache" / index
            c.mkdir(parents=True)
            files = {"id": group_id, "level": level, "type": kind, "size": size, "shared_cpu_list": _list(group),
                     "shared_cpu_map": _mask(group, ncpus)}  # fmt: skip
            for name, value in files.items():
                (c / name).write_text(f"{value}\n")
    node = root / "devices/system/node/node0"
    (node / "hugepages").mkdir(parents=True)
    (node / "meminfo").write_text("Node 0 MemTotal:       16252928 kB\n")
    (node / "distance").write_text("10\n")
    (node / "cpulist").write_text(_list(cpus) + "\n")
    for cpu in cpus:
        (node / f"cpu{cpu}").symlink_to(f"../../cpu/cpu{cpu}")
    for dev, members in (("cpu_core", p_cores), ("cpu_atom", e_cores)):
        if members:
            (root / "devices" / dev).mkdir(parents=True)
            (root / "devices" / dev / "cpus").write_text(_list(members) + "\n")
    return root


# The fixture machines of the dedicated-cores tests.
N305 = {"l2_groups": [[0, 1, 2, 3], [4, 5, 6, 7]]}  # Intel N305: 8 E-cores, two 4-core modules, one L2 each
# A 2P(HT)+8E hybrid (i5-1235U-like): P-cores 0-1 and 2-3 (two threads, an L2 each), E-modules 4-7, 8-11.
HYBRID_2P8E = {
    "l2_groups": [[0, 1], [2, 3], [4, 5, 6, 7], [8, 9, 10, 11]],
    "cores": [[0, 1], [2, 3], *[[c] for c in range(4, 12)]],
    "p_cores": list(range(4)),
    "e_cores": list(range(4, 12)),
}
TWO_CORE = {"l2_groups": [[0], [1]]}  # a plain 2-vCPU VM (this test machine): an L2 each, one L3
# Split L3 (two 4-core CCX-like clusters with an L3 each and private L2s): cadvisor's "uncore" case.
SPLIT_L3 = {"l2_groups": [[c] for c in range(8)], "l3_groups": [[0, 1, 2, 3], [4, 5, 6, 7]]}
