"""Data model of VM monitoring: raw libvirt counters (RawSample) and derived figures (VMStats).

Everything here is plain, immutable data: safe to hand across threads without copying.
Units: bytes, seconds, per-second rates; CPU percent where 100 % = one host CPU fully busy.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from ..vmref import VMRef


@dataclass(frozen=True, slots=True)
class DiskCounters:
    drive: str
    rd_bytes: int | None = None
    wr_bytes: int | None = None
    rd_reqs: int | None = None
    wr_reqs: int | None = None
    rd_times_ns: int | None = None
    wr_times_ns: int | None = None
    fl_reqs: int | None = None
    fl_times_ns: int | None = None
    capacity: int | None = None
    allocation: int | None = None
    monotonic: float | None = None  # when these counters were read, if older than the sample (carried)


NET_FIELDS = ("rx_bytes", "rx_pkts", "rx_errs", "rx_drop", "tx_bytes", "tx_pkts", "tx_errs", "tx_drop")


@dataclass(frozen=True, slots=True)
class NetCounters:
    interface: str
    rx_bytes: int | None = None
    rx_pkts: int | None = None
    rx_errs: int | None = None
    rx_drop: int | None = None
    tx_bytes: int | None = None
    tx_pkts: int | None = None
    tx_errs: int | None = None
    tx_drop: int | None = None


@dataclass(frozen=True, slots=True)
class RawSample:
    """One domain's counters from one ``getAllDomainStats`` round.

    ``monotonic`` is the host monotonic clock (rates), ``wall`` the epoch time (``sampledAt``).
    ``balloon`` keeps libvirt's raw balloon fields (KiB, except ``*_fault`` counts and
    ``last-update`` seconds). ``vcpu_times_ns`` maps vCPU id -> cumulative run time.
    """

    uuid: str
    domain: str
    monotonic: float
    wall: float
    dom_id: int | None = None
    state: int | None = None
    cpu_time_ns: int | None = None
    cpu_user_ns: int | None = None
    cpu_system_ns: int | None = None
    vcpu_times_ns: dict[int, int] = field(default_factory=dict)
    vcpu_monotonic: float | None = None  # when the vCPU times were read, if carried
    balloon: dict[str, int] = field(default_factory=dict)
    balloon_monotonic: float | None = None  # when the balloon figures were read, if carried
    disks: tuple[DiskCounters, ...] = ()
    nets: tuple[NetCounters, ...] = ()


@dataclass(frozen=True, slots=True)
class VCPUStats:
    id: int
    seconds_total: float
    usage_percent: float | None


@dataclass(frozen=True, slots=True)
class CPUStats:
    usage_seconds_total: float | None
    user_seconds_total: float | None
    system_seconds_total: float | None
    usage_percent: float | None
    vcpus: tuple[VCPUStats, ...] = ()


@dataclass(frozen=True, slots=True)
class MemoryStats:
    """Balloon figures in bytes; guest-reported ones are None unless the guest balloon driver
    reports them (virtio-balloon with a stats period)."""

    domain_bytes: int | None = None  # balloon.current: memory the guest currently has
    maximum_bytes: int | None = None  # balloon.maximum
    resident_bytes: int | None = None  # balloon.rss: host RSS of the QEMU process
    available_bytes: int | None = None  # guest: total memory the guest OS sees
    unused_bytes: int | None = None  # guest: free memory
    usable_bytes: int | None = None  # guest: reclaimable without swapping (free + caches)
    swap_in_bytes: int | None = None
    swap_out_bytes: int | None = None
    major_faults_total: int | None = None
    minor_faults_total: int | None = None

    @property
    def used_bytes(self) -> int | None:
        """Memory used inside the guest (available - usable), KubeVirt's definition."""
        if self.available_bytes is None or self.usable_bytes is None:
            return None
        return max(0, self.available_bytes - self.usable_bytes)


@dataclass(frozen=True, slots=True)
class DiskStats:
    drive: str
    read_bytes_total: int | None
    write_bytes_total: int | None
    read_ops_total: int | None
    write_ops_total: int | None
    read_times_seconds_total: float | None
    write_times_seconds_total: float | None
    flush_ops_total: int | None
    flush_times_seconds_total: float | None
    read_bytes_per_sec: float | None
    write_bytes_per_sec: float | None
    read_iops: float | None
    write_iops: float | None
    capacity_bytes: int | None = None
    allocation_bytes: int | None = None
    sampled_at: float | None = None  # epoch seconds these counters were read (full rounds only)


@dataclass(frozen=True, slots=True)
class NetStats:
    interface: str
    totals: dict[str, int | None]  # keys: NET_FIELDS
    rates: dict[str, float | None]  # same keys, per second

    def total(self, key: str) -> int | None:
        return self.totals.get(key)

    def rate(self, key: str) -> float | None:
        return self.rates.get(key)


STATE_NAMES = {
    0: "nostate",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutdown",
    5: "shutoff",
    6: "crashed",
    7: "pmsuspended",
}


def rfc3339(epoch: float) -> str:
    ts = _dt.datetime.fromtimestamp(epoch, tz=_dt.UTC)
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class VMStats:
    """Derived figures of one VM at ``sampled_at`` (epoch seconds).

    Rates are None on the first sample of a domain, after a counter reset (domain restarted /
    device re-plugged) and when the interval is not positive.
    """

    ref: VMRef
    uuid: str
    domain: str
    state: str
    sampled_at: float
    interval_seconds: float | None
    cpu: CPUStats
    memory: MemoryStats
    disks: tuple[DiskStats, ...] = ()
    nets: tuple[NetStats, ...] = ()
    dom_id: int | None = None  # libvirt's domain id: a new one means the domain was started again
    monotonic: float | None = None  # host monotonic clock of the sample (metering integrates over it)
    # Epoch seconds the QMP-bound groups were read: only full rounds read them (schedule.py); in
    # between they are carried, so they may be up to one full period older than sampled_at.
    memory_sampled_at: float | None = None
    vcpus_sampled_at: float | None = None

    @property
    def namespace(self) -> str:
        return self.ref.namespace

    @property
    def name(self) -> str:
        return self.ref.name

    def to_dict(self, node: str | None = None) -> dict[str, Any]:
        """JSON shape served by ``GET /stats/<namespace>/<name>`` (camelCase, bytes and seconds)."""
        mem = self.memory
        out: dict[str, Any] = {
            "namespace": self.ref.namespace,
            "name": self.ref.name,
            "uid": self.ref.uid,
            "node": node,
            "domain": self.domain,
            "domainUUID": self.uuid,
            "state": self.state,
            "sampledAt": rfc3339(self.sampled_at),
            "intervalSeconds": _round(self.interval_seconds, 3),
            "cpu": {
                "usageSeconds": _round(self.cpu.usage_seconds_total, 3),
                "userSeconds": _round(self.cpu.user_seconds_total, 3),
                "systemSeconds": _round(self.cpu.system_seconds_total, 3),
                "usagePercent": _round(self.cpu.usage_percent, 2),
                "vcpusSampledAt": _when(self.vcpus_sampled_at),
                "vcpus": [
                    {
                        "id": v.id,
                        "seconds": _round(v.seconds_total, 3),
                        "usagePercent": _round(v.usage_percent, 2),
                    }
                    for v in self.cpu.vcpus
                ],
            },
            "memory": {
                "sampledAt": _when(self.memory_sampled_at),
                "domainBytes": mem.domain_bytes,
                "maximumBytes": mem.maximum_bytes,
                "residentBytes": mem.resident_bytes,
                "availableBytes": mem.available_bytes,
                "unusedBytes": mem.unused_bytes,
                "usableBytes": mem.usable_bytes,
                "usedBytes": mem.used_bytes,
                "swapInBytes": mem.swap_in_bytes,
                "swapOutBytes": mem.swap_out_bytes,
                "majorFaults": mem.major_faults_total,
                "minorFaults": mem.minor_faults_total,
            },
            "disks": [
                {
                    "drive": d.drive,
                    "sampledAt": _when(d.sampled_at),
                    "readBytes": d.read_bytes_total,
                    "writeBytes": d.write_bytes_total,
                    "readOps": d.read_ops_total,
                    "writeOps": d.write_ops_total,
                    "flushOps": d.flush_ops_total,
                    "readBytesPerSec": _round(d.read_bytes_per_sec, 1),
                    "writeBytesPerSec": _round(d.write_bytes_per_sec, 1),
                    "readIOPS": _round(d.read_iops, 2),
                    "writeIOPS": _round(d.write_iops, 2),
                    "capacityBytes": d.capacity_bytes,
                    "allocationBytes": d.allocation_bytes,
                }
                for d in self.disks
            ],
            "interfaces": [
                {
                    "interface": n.interface,
                    "rxBytes": n.total("rx_bytes"),
                    "txBytes": n.total("tx_bytes"),
                    "rxPackets": n.total("rx_pkts"),
                    "txPackets": n.total("tx_pkts"),
                    "rxErrors": n.total("rx_errs"),
                    "txErrors": n.total("tx_errs"),
                    "rxDropped": n.total("rx_drop"),
                    "txDropped": n.total("tx_drop"),
                    "rxBytesPerSec": _round(n.rate("rx_bytes"), 1),
                    "txBytesPerSec": _round(n.rate("tx_bytes"), 1),
                    "rxPacketsPerSec": _round(n.rate("rx_pkts"), 2),
                    "txPacketsPerSec": _round(n.rate("tx_pkts"), 2),
                    "rxErrorsPerSec": _round(n.rate("rx_errs"), 2),
                    "txErrorsPerSec": _round(n.rate("tx_errs"), 2),
                    "rxDroppedPerSec": _round(n.rate("rx_drop"), 2),
                    "txDroppedPerSec": _round(n.rate("tx_drop"), 2),
                }
                for n in self.nets
            ],
        }
        return out


def _when(epoch: float | None) -> str | None:
    return None if epoch is None else rfc3339(epoch)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
