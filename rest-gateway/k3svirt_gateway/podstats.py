"""Pure views of the kubelet's Summary API (stats/v1alpha1, read through the API server's node proxy)
for pods, and the rate bookkeeping for its cumulative counters.

What the Summary gives and what we do with it:
* cpu.usageNanoCores is already a rate (the kubelet/cAdvisor average over its own sampling interval):
  reported as is, in cores.
* memory.workingSetBytes, rootfs/logs/ephemeral-storage usedBytes are gauges: reported as is.
* network.rxBytes/txBytes are cumulative since the pod's sandbox started: reported as is, and turned
  into bytes/s only from two samples with different kubelet timestamps that this gateway process has
  seen (RateTracker), with the window they span. No second sample yet -> the rate is null, never a guess.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import datetime
from typing import Any

from .podview import container_limits, pod_resources

Sample = tuple[datetime, int]


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time as the kubelet writes it ("2025-01-10T10:05:00Z"); None when absent/garbled."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


class RateTracker:
    """Per-process memory of the last two samples (with distinct timestamps) of cumulative counters.

    observe(key, time, value) returns (rate per second, window seconds) between this sample and the
    previous distinct one, or (None, None) when there is none yet, the counter went backwards (a
    restarted pod sandbox) or the previous sample is older than max_age. Bounded: least recently
    observed keys are forgotten beyond max_keys. Thread-safe (gunicorn threads share one tracker).
    """

    def __init__(self, max_keys: int = 20000, max_age: float = 600.0) -> None:
        self.max_keys = max_keys
        self.max_age = max_age
        self._samples: OrderedDict[tuple[str, ...], list[Sample]] = OrderedDict()
        self._lock = threading.Lock()

    def observe(self, key: tuple[str, ...], at: datetime, value: int) -> tuple[float | None, float | None]:
        with self._lock:
            samples = self._samples.pop(key, [])
            latest = samples[-1] if samples else None
            if latest is None or at > latest[0]:
                prev = latest
                samples = [s for s in (latest, (at, value)) if s is not None]
            elif at == latest[0]:
                # the kubelet has not sampled again: rate against the sample before this one
                prev = samples[0] if len(samples) == 2 else None
            else:  # older than what we have (out-of-order answer): no rate, keep what we have
                prev = None
            self._samples[key] = samples
            while len(self._samples) > self.max_keys:
                self._samples.popitem(last=False)
        if prev is None:
            return None, None
        window = (at - prev[0]).total_seconds()
        if window <= 0 or window > self.max_age or value < prev[1]:
            if value < prev[1]:
                with self._lock:
                    self._samples[key] = [(at, value)]
            return None, None
        return (value - prev[1]) / window, window


def _pct(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return round(100.0 * part / whole, 2)


def _cores(cpu: dict[str, Any] | None) -> float | None:
    nano = (cpu or {}).get("usageNanoCores")
    return None if nano is None else round(int(nano) / 1e9, 4)


def _used(fs: dict[str, Any] | None) -> int | None:
    value = (fs or {}).get("usedBytes")
    return None if value is None else int(value)


def _sum(values: list[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def network_view(
    net: dict[str, Any] | None, rates: RateTracker, key: tuple[str, ...], no_rate_note: str
) -> dict[str, Any]:
    net = net or {}
    out: dict[str, Any] = {"time": net.get("time", "")}
    at = parse_time(net.get("time"))
    window = None
    for direction in ("rx", "tx"):
        total = net.get(f"{direction}Bytes")
        out[f"{direction}Bytes"] = None if total is None else int(total)
        out[f"{direction}Errors"] = net.get(f"{direction}Errors")
        rate = None
        if total is not None and at is not None:
            rate, window = rates.observe((*key, direction), at, int(total))
        out[f"{direction}BytesPerSecond"] = None if rate is None else round(rate, 1)
    out["rateWindowSeconds"] = window
    if not net:
        out["rateNote"] = NO_NETWORK
    elif window is None:
        out["rateNote"] = no_rate_note
    out["interfaces"] = [i.get("name", "") for i in net.get("interfaces") or []]
    return out


NO_NETWORK = "the kubelet's Summary has no network figures for this pod"
NO_RATE_YET = (
    "rates need two kubelet samples with different timestamps; this gateway process has seen one "
    "(the kubelet samples every 10-15 s): ask again"
)


def pod_stats_view(
    entry: dict[str, Any],
    pod: dict[str, Any],
    node_capacity: dict[str, float | None],
    rates: RateTracker,
) -> dict[str, Any]:
    """One Summary.pods entry joined with its Pod (limits) and its node's capacity (cores, bytes)."""
    ref = entry.get("podRef") or {}
    node = (pod.get("spec") or {}).get("nodeName", "")
    limits = pod_resources(pod, "limits")
    cpu = entry.get("cpu") or {}
    mem = entry.get("memory") or {}
    cores = _cores(cpu)
    working = mem.get("workingSetBytes")
    node_cores, node_mem = node_capacity.get("cpu"), node_capacity.get("memory")
    spec_containers = {c.get("name", ""): c for c in (pod.get("spec") or {}).get("containers") or []}

    containers = []
    rootfs_total: list[int | None] = []
    logs_total: list[int | None] = []
    for c in entry.get("containers") or []:
        lim = container_limits(spec_containers.get(c.get("name", ""), {}))
        ccores = _cores(c.get("cpu"))
        cws = (c.get("memory") or {}).get("workingSetBytes")
        rootfs, logs = _used(c.get("rootfs")), _used(c.get("logs"))
        rootfs_total.append(rootfs)
        logs_total.append(logs)
        containers.append(
            {
                "name": c.get("name", ""),
                "cpu": {
                    "usageCores": ccores,
                    "limitCores": lim["cpu"],
                    "percentOfLimit": _pct(ccores, lim["cpu"]),
                    "percentOfNode": _pct(ccores, node_cores),
                },
                "memory": {
                    "workingSetBytes": cws,
                    "limitBytes": None if lim["memory"] is None else int(lim["memory"]),
                    "percentOfLimit": _pct(cws, lim["memory"]),
                },
                "filesystem": {"rootfsUsedBytes": rootfs, "logsUsedBytes": logs},
            }
        )
    rootfs_sum, logs_sum = _sum(rootfs_total), _sum(logs_total)
    key = (node, ref.get("namespace", ""), ref.get("name", ""), ref.get("uid", ""))
    return {
        "name": ref.get("name", ""),
        "namespace": ref.get("namespace", ""),
        "node": node,
        "available": True,
        "cpu": {
            "time": cpu.get("time", ""),
            "usageCores": cores,
            "usageCoreSeconds": None
            if cpu.get("usageCoreNanoSeconds") is None
            else round(int(cpu["usageCoreNanoSeconds"]) / 1e9, 3),
            "nodeCores": node_cores,
            "percentOfNode": _pct(cores, node_cores),
            "limitCores": limits["cpu"],
            "percentOfLimit": _pct(cores, limits["cpu"]),
        },
        "memory": {
            "time": mem.get("time", ""),
            "workingSetBytes": working,
            "usageBytes": mem.get("usageBytes"),
            "rssBytes": mem.get("rssBytes"),
            "nodeBytes": None if node_mem is None else int(node_mem),
            "percentOfNode": _pct(working, node_mem),
            "limitBytes": None if limits["memory"] is None else int(limits["memory"]),
            "percentOfLimit": _pct(working, limits["memory"]),
        },
        "network": network_view(entry.get("network"), rates, key, NO_RATE_YET),
        "filesystem": {
            "rootfsUsedBytes": rootfs_sum,
            "logsUsedBytes": logs_sum,
            "usedBytes": None if rootfs_sum is None and logs_sum is None else (rootfs_sum or 0) + (logs_sum or 0),
            "ephemeralStorageUsedBytes": _used(entry.get("ephemeral-storage")),
            "volumesUsedBytes": _sum([_used(v) for v in entry.get("volume") or []]),
        },
        "processes": (entry.get("process_stats") or {}).get("process_count"),
        "containers": containers,
    }


def unavailable(pod: dict[str, Any], reason: str) -> dict[str, Any]:
    md = pod.get("metadata") or {}
    return {
        "name": md.get("name", ""),
        "namespace": md.get("namespace", ""),
        "node": (pod.get("spec") or {}).get("nodeName", ""),
        "available": False,
        "reason": reason,
    }


def find_pod(summary: dict[str, Any], pod: dict[str, Any]) -> dict[str, Any] | None:
    """The Summary.pods entry of `pod` (same namespace, name and uid: a recreated pod is another pod)."""
    md = pod.get("metadata") or {}
    for entry in summary.get("pods") or []:
        ref = entry.get("podRef") or {}
        same = (ref.get("namespace"), ref.get("name")) == (md.get("namespace"), md.get("name"))
        if same and (not md.get("uid") or ref.get("uid") == md["uid"]):
            return entry
    return None


def totals(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Namespace sums over the pods that have stats (rates only over pods that have one)."""
    have = [i for i in items if i.get("available")]

    def total(path: tuple[str, str]) -> float | None:
        values = [i[path[0]][path[1]] for i in have if i[path[0]].get(path[1]) is not None]
        return round(sum(values), 4) if values else None

    return {
        "pods": len(items),
        "podsWithStats": len(have),
        "cpuUsageCores": total(("cpu", "usageCores")),
        "memoryWorkingSetBytes": total(("memory", "workingSetBytes")),
        "networkRxBytes": total(("network", "rxBytes")),
        "networkTxBytes": total(("network", "txBytes")),
        "networkRxBytesPerSecond": total(("network", "rxBytesPerSecond")),
        "networkTxBytesPerSecond": total(("network", "txBytesPerSecond")),
        "filesystemUsedBytes": total(("filesystem", "usedBytes")),
    }
