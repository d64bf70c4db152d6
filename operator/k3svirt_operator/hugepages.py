"""Free hugepages of the node, checked before a hugepage-backed VM starts.

libvirt backs the guest RAM with pages of spec.memory.hugepages.pageSize taken from the kernel's pool of
that size (reserved at boot by the image's kernel command line, `hugepagesz=1G hugepages=N
hugepagesz=2M hugepages=M`, or later through vm.nr_hugepages / the sysfs counters). QEMU fails
with "unable to map backing store" when the pool is short, after the reservation pod was admitted:
the operator looks first and reports `InsufficientHugepages` naming the page size, the pages
needed and the pages free, node-wide and per NUMA node.

The kubelet's books (`hugepages-2Mi`/`hugepages-1Gi` capacity, which the reservation pods request)
cover what Kubernetes placed; this check covers the kernel's real counters, which anything else on the
node (a VM started by hand, a DPDK process) can also use. No `<numatune>` is set, so the kernel may take
pages from every NUMA node: the node-wide count decides, the per-node counts are for the message.

`read_pools` reads a sysfs root (a fixture tree in tests); `shortage` is pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k3svirt_common.quantity import format_bytes, parse_quantity

_POOL = re.compile(r"^hugepages-([0-9]+)kB$")


@dataclass(frozen=True)
class Pool:
    """One page size's counters: total = nr_hugepages, free includes pages reserved but not yet faulted."""

    page_bytes: int
    total: int
    free: int
    reserved: int = 0
    per_node_free: Mapping[int, int] = field(default_factory=dict)  # NUMA node -> free pages

    @property
    def available(self) -> int:
        return max(self.free - self.reserved, 0)


def _count(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def read_pools(sys_root: Path = Path("/sys")) -> dict[int, Pool]:
    """Page size in bytes -> Pool, from <sys_root>/kernel/mm/hugepages and the NUMA nodes' counters."""
    per_node: dict[int, dict[int, int]] = {}
    for d in sorted((sys_root / "devices/system/node").glob("node[0-9]*/hugepages/hugepages-*kB")):
        m = _POOL.match(d.name)
        if m:
            node = int(d.parent.parent.name.removeprefix("node"))
            per_node.setdefault(int(m.group(1)) * 1024, {})[node] = _count(d / "free_hugepages")
    pools: dict[int, Pool] = {}
    base = sys_root / "kernel/mm/hugepages"
    for d in sorted(base.glob("hugepages-*kB")) if base.is_dir() else []:
        m = _POOL.match(d.name)
        if not m:
            continue
        size = int(m.group(1)) * 1024
        pools[size] = Pool(
            page_bytes=size,
            total=_count(d / "nr_hugepages"),
            free=_count(d / "free_hugepages"),
            reserved=_count(d / "resv_hugepages"),
            per_node_free=per_node.get(size, {}),
        )
    return pools


@dataclass(frozen=True)
class Shortage:
    field: str
    message: str


def shortage(spec: Mapping[str, Any], pools: Mapping[int, Pool], node: str) -> Shortage | None:
    """Why the node's free hugepages cannot back this (merged, schema-valid) spec; None when they can
    or when the VM uses no hugepages."""
    mem = spec.get("memory") or {}
    huge = mem.get("hugepages")
    if not huge:
        return None
    page_name = str(huge["pageSize"])
    page = parse_quantity(page_name, field="spec.memory.hugepages.pageSize")
    need = -(-parse_quantity(mem["size"], field="spec.memory.size") // page)
    where = "spec.memory.hugepages.pageSize"
    pool = pools.get(page)
    how = (
        f"reserve {page_name} pages at boot (kernel command line hugepagesz={_kernel_size(page)} hugepages=N; "
        f"the image's K3SVIRT_HUGEPAGES{'_1G' if page == 1 << 30 else ''}) or through "
        f"/sys/kernel/mm/hugepages/hugepages-{page // 1024}kB/nr_hugepages"
    )
    if pool is None:
        return Shortage(where, f"node {node} has no {page_name} hugepage pool (the kernel offers none): {how}")
    if pool.available >= need:
        return None
    nodes = ", ".join(f"node{n}: {f} free" for n, f in sorted(pool.per_node_free.items()))
    return Shortage(
        where,
        f"the VM needs {need} free {page_name} hugepages ({format_bytes(need * page)} of guest RAM); node {node} "
        f"has {pool.available} available of {pool.total} ({pool.free} free, {pool.reserved} of them reserved by "
        f"mappings{'; ' + nodes if nodes else ''}): stop a VM that holds them or {how}",
    )


def _kernel_size(page: int) -> str:
    return f"{page >> 30}G" if page % (1 << 30) == 0 else f"{page >> 20}M"
