"""Light per-VM summary for ``VirtualMachine.status`` (written by the operator at a modest interval).

Per-second figures stay on the node (/metrics, /stats); only this small dict goes through the API
server, e.g. every 30 s. Keys are always present; a value is None (JSON null, which also clears a
stale value in a merge patch) when it is unknown, e.g. right after start or without a guest balloon
driver.
"""

from __future__ import annotations

from typing import Any

from .model import VMStats, rfc3339

SUMMARY_KEYS = (
    "cpuPercent",
    "memoryUsedBytes",
    "memoryTotalBytes",
    "diskReadBytesPerSec",
    "diskWriteBytesPerSec",
    "diskReadIOPS",
    "diskWriteIOPS",
    "networkRxBytesPerSec",
    "networkTxBytesPerSec",
    "updatedAt",
)


def _sum(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _int(v: float | None) -> int | None:
    return None if v is None else int(round(v))


def summarize(stats: VMStats | None) -> dict[str, Any] | None:
    """Small status dict from VMStats (None in, None out: VM not running / no fresh figures).

    cpuPercent: 100 = one host CPU (see sampler.py). memoryUsedBytes: guest-reported
    available - usable when the balloon driver reports it, else the host RSS of QEMU.
    memoryTotalBytes: guest-visible memory (balloon available) else the domain's current memory.
    Disk and network rates are summed over all drives / interfaces. updatedAt: RFC 3339 of the sample.
    """
    if stats is None:
        return None
    mem = stats.memory
    used = mem.used_bytes if mem.used_bytes is not None else mem.resident_bytes
    total = mem.available_bytes if mem.available_bytes is not None else mem.domain_bytes
    cpu = stats.cpu.usage_percent
    return {
        "cpuPercent": None if cpu is None else round(cpu, 1),
        "memoryUsedBytes": used,
        "memoryTotalBytes": total,
        "diskReadBytesPerSec": _int(_sum([d.read_bytes_per_sec for d in stats.disks])),
        "diskWriteBytesPerSec": _int(_sum([d.write_bytes_per_sec for d in stats.disks])),
        "diskReadIOPS": None if (v := _sum([d.read_iops for d in stats.disks])) is None else round(v, 1),
        "diskWriteIOPS": None if (v := _sum([d.write_iops for d in stats.disks])) is None else round(v, 1),
        "networkRxBytesPerSec": _int(_sum([n.rate("rx_bytes") for n in stats.nets])),
        "networkTxBytesPerSec": _int(_sum([n.rate("tx_bytes") for n in stats.nets])),
        "updatedAt": rfc3339(stats.sampled_at),
    }
