"""Carries out metering.py for this node: readings from the stats collector's rounds, VMUsage
objects as the records (one per VM, status only), and Prometheus counters over the meters."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from k3svirt_common import names
from k3svirt_common.kube import ApiError, Client, k3svirt_path
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from .metering import FIELDS, Reading, VMMeter
from .stats.model import VMStats

log = logging.getLogger(__name__)
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def usage_name(vm: str, uid: str) -> str:
    """<vm>-<uid[:8]>: a VM created again under its name gets records of its own."""
    return f"{vm[:244]}-{uid[:8]}"


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return "unknown"


def reading_of(stats: VMStats, boot: str) -> Reading | None:
    """The metered figures of one sample; None without a CPU counter or clock (nothing to meter)."""
    cpu = stats.cpu.usage_seconds_total
    if cpu is None or stats.monotonic is None:
        return None
    mem = stats.memory
    return Reading(
        boot_id=boot,
        dom_id=stats.dom_id,
        monotonic=stats.monotonic,
        wall=stats.sampled_at,
        cpu_seconds=float(cpu),
        rx_bytes=float(sum(n.total("rx_bytes") or 0 for n in stats.nets)),
        tx_bytes=float(sum(n.total("tx_bytes") or 0 for n in stats.nets)),
        memory_allocated_bytes=_float(mem.maximum_bytes or mem.domain_bytes),
        memory_used_bytes=_float(mem.used_bytes),
        disk_bytes=_float(sum(d.capacity_bytes for d in stats.disks if d.capacity_bytes is not None) or None),
        memory_rss_bytes=_float(mem.resident_bytes),
    )


def _float(v: float | None) -> float | None:
    return None if v is None else float(v)


class UsageRecorder:
    """The meters of this node's VMs by uid, restored from and written to VMUsage objects."""

    def __init__(self, api: Client, node: str, *, bucket_seconds: int, retention: int,
                 checkpoint_seconds: float) -> None:  # fmt: skip
        self.api, self.node = api, node
        self.bucket_seconds, self.retention, self.checkpoint_seconds = bucket_seconds, retention, checkpoint_seconds
        self.boot = boot_id()
        self.meters: dict[str, VMMeter] = {}
        self._written: dict[str, float] = {}  # uid -> monotonic time of the last write
        self._unsaved: set[str] = set()  # uids whose last write failed: written again every round
        self._last_round: float | None = None
        self._lock = threading.Lock()  # scrapes read the meters while a round updates them

    def _path(self, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        return k3svirt_path(names.VMUSAGE_PLURAL, namespace, name, sub)

    def restore(self) -> int:
        """Reads this node's VMUsage objects (once, before the first round)."""
        items, _ = self.api.list_all(self._path(None))
        for obj in items:
            status = obj.get("status") or {}
            if status.get("node") != self.node or not (status.get("vm") or {}).get("uid"):
                continue
            meter = VMMeter.from_status(obj["metadata"]["namespace"], status, self.retention)
            meter.bucket_seconds = self.bucket_seconds  # a changed setting applies from the open bucket on
            self.meters[meter.uid] = meter
        return len(self.meters)

    def round(self, vms: Any, monotonic: float, wall: float, owned: Callable[[tuple[str, str]], bool]) -> None:
        """One stats round (the collector's snapshot): observe every VM this node runs (`owned`:
        the libvirtd may hold other nodes' domains too), write what must be written."""
        if monotonic == self._last_round:
            return  # the same snapshot again
        self._last_round = monotonic
        due: list[VMMeter] = []
        with self._lock:
            seen = set()
            for stats in vms.values():
                reading = reading_of(stats, self.boot)
                if reading is None or not stats.ref.uid or not owned((stats.namespace, stats.name)):
                    continue
                seen.add(stats.ref.uid)
                meter = self.meters.get(stats.ref.uid) or self._meter_for(stats)
                if meter.observe(reading) or self._checkpoint_due(meter.uid):
                    due.append(meter)
            for uid, meter in list(self.meters.items()):  # stopped or deleted VMs: their buckets complete
                if uid in seen:
                    continue
                if meter.tick(wall) or uid in self._unsaved:
                    due.append(meter)
                elif meter.open_start is None:  # closed and saved: the records hold it (memory stays flat)
                    del self.meters[uid]
                    self._written.pop(uid, None)
        for meter in due:
            self.write(meter)

    def _meter_for(self, stats: VMStats) -> VMMeter:
        """A VM seen for the first time since start (or since its meter was put away): its records,
        if it has some, are read first, so a VM started again continues them instead of overwriting."""
        assert stats.ref.uid
        meter = VMMeter(stats.namespace, stats.name, stats.ref.uid, self.bucket_seconds, self.retention)
        try:
            found = self.api.get(self._path(stats.namespace, usage_name(stats.name, stats.ref.uid)))
        except ApiError as exc:
            if exc.status != 404:
                raise  # the round fails and the next one tries again; nothing is lost meanwhile
        else:
            status = found.get("status") or {}
            if (status.get("vm") or {}).get("uid") == stats.ref.uid:  # else created but never written
                meter = VMMeter.from_status(stats.namespace, status, self.retention)
                meter.bucket_seconds = self.bucket_seconds
        self.meters[stats.ref.uid] = meter
        return meter

    def _checkpoint_due(self, uid: str) -> bool:
        return time.monotonic() - self._written.get(uid, float("-inf")) >= self.checkpoint_seconds

    def write(self, meter: VMMeter) -> None:
        """The meter's completed buckets, open bucket and baseline, in one status write."""
        with self._lock:
            status = {**meter.to_status(self.node), "updatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        name = usage_name(meter.name, meter.uid)
        try:
            try:
                self.api.patch(self._path(meter.namespace, name, "status"), {"status": status})
            except ApiError as exc:
                if exc.status != 404:
                    raise
                body = {"apiVersion": names.API_VERSION, "kind": names.VMUSAGE_KIND,
                        "metadata": {"name": name, "namespace": meter.namespace}, "spec": {}}  # fmt: skip
                try:
                    self.api.create(self._path(meter.namespace), body)
                except ApiError as exc2:
                    if exc2.status != 409:
                        raise
                self.api.patch(self._path(meter.namespace, name, "status"), {"status": status})
        except ApiError as exc:  # kept in memory; written again at the next round
            log.warning("usage not written", extra={"vm": f"{meter.namespace}/{meter.name}", "error": str(exc)})
            self._unsaved.add(meter.uid)
            return
        self._written[meter.uid] = time.monotonic()
        self._unsaved.discard(meter.uid)

    def flush(self) -> None:
        """Writes every meter (operator stopping): the open buckets' baselines are current."""
        for meter in list(self.meters.values()):
            self.write(meter)

    def totals(self) -> list[tuple[str, str, dict[str, float]]]:
        with self._lock:
            return [(m.namespace, m.name, m.totals()) for m in self.meters.values()]


METRICS = {
    "cpuSeconds": ("k3svirt_usage_cpu_seconds", "CPU seconds used (metered, completed + open buckets)."),
    "memoryAllocatedGiBHours": ("k3svirt_usage_memory_allocated_gib_hours", "Memory assigned, GiB-hours."),
    "memoryUsedGiBHours": ("k3svirt_usage_memory_used_gib_hours", "Memory used by the guest, GiB-hours."),
    "diskGBHours": ("k3svirt_usage_disk_gb_hours", "Disk capacity of the running VM, GB-hours."),
    "networkRxBytes": ("k3svirt_usage_network_receive_bytes", "Bytes received by the VM."),
    "networkTxBytes": ("k3svirt_usage_network_transmit_bytes", "Bytes sent by the VM."),
}
assert set(METRICS) == set(FIELDS)


class UsageMetricsCollector(Collector):
    """Counters per VM over the meters (the retained buckets plus the open one)."""

    def __init__(self, recorder: UsageRecorder) -> None:
        self.recorder = recorder

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[CounterMetricFamily]:
        rows = sorted(self.recorder.totals())
        for key, (metric, doc) in METRICS.items():
            fam = CounterMetricFamily(metric, doc, labels=["namespace", "name", "node"])
            for ns, name, totals in rows:
                fam.add_metric([ns, name, self.recorder.node], totals[key])
            yield fam
