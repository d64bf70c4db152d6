"""Light per-VM summary for ``VirtualMachine.status`` (written by the operator at a modest interval).

Per-second figures stay on the node (/metrics, /stats); only this small dict goes through the API
server, and only when it says something new (``worth_writing``): a figure appears or moves materially,
or the one shown is older than a maximum age. Keys are always present; a value is None (JSON null, which also clears a
stale value in a merge patch) when it is unknown, e.g. right after start or without a guest balloon
driver.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
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


# What moves a figure "materially" (worth an API write): an absolute floor and a share of the figure
# shown. Below both, a change is noise a reader of `kubectl get vm -o yaml` would not act on, and
# writing it costs one status PATCH per VM per check (204 of the operator's ~300 writes/min at
# rest with 100 VMs, bench/README.md).
CPU_POINTS = 5.0  # cpuPercent
RELATIVE = 0.25  # rates: a quarter of the value shown
RATE_FLOORS = {
    "diskReadBytesPerSec": 256 * 1024,
    "diskWriteBytesPerSec": 256 * 1024,
    "networkRxBytesPerSec": 64 * 1024,
    "networkTxBytesPerSec": 64 * 1024,
    "diskReadIOPS": 10.0,
    "diskWriteIOPS": 10.0,
}
MEMORY_SHARE = 0.05  # memoryUsedBytes: 5 % of memoryTotalBytes


def _moved(key: str, shown: Any, now: Any, total: Any) -> bool:
    if key == "statsDegraded":  # its text carries the round cost, new every round: only onset and end count
        return bool(shown) != bool(now)
    if shown is None or now is None or not isinstance(shown, int | float) or not isinstance(now, int | float):
        return shown != now  # appeared, vanished, or not a figure (endpoint, statsDegraded)
    delta = abs(now - shown)
    if key == "cpuPercent":
        return delta >= max(CPU_POINTS, RELATIVE * abs(shown))
    if key == "memoryUsedBytes":
        return delta >= MEMORY_SHARE * (total if isinstance(total, int | float) and total > 0 else abs(shown))
    if key in RATE_FLOORS:
        return delta >= max(RATE_FLOORS[key], RELATIVE * abs(shown))
    if key == "statsIntervalSeconds":  # a stretched interval follows the round cost up and down a step
        return delta >= RELATIVE * abs(shown)
    return now != shown  # memoryTotalBytes: any change


def _age(updated_at: Any, now: float) -> float:
    """Seconds since an RFC 3339 updatedAt; infinite when absent or unreadable."""
    try:
        then = _dt.datetime.fromisoformat(str(updated_at).replace("Z", "+00:00"))
    except ValueError:
        return float("inf")
    return now - then.timestamp()


def worth_writing(shown: Mapping[str, Any], fresh: Mapping[str, Any], now: float, max_age: float) -> bool:
    """Whether status.monitoring should be replaced by ``fresh`` (pure; ``now``: epoch seconds).

    Yes when a key appears or disappears, a figure moves materially (see the thresholds above), a
    non-figure (endpoint, statsDegraded) changes, or what is shown is ``max_age`` seconds old."""
    if set(shown) != set(fresh):
        return True
    if fresh.get("updatedAt") and _age(shown.get("updatedAt"), now) >= max_age:
        return True
    total = fresh.get("memoryTotalBytes")
    return any(_moved(k, shown.get(k), v, total) for k, v in fresh.items() if k != "updatedAt")
