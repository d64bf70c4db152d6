"""Prometheus exposition of the latest snapshot (KubeVirt ``kubevirt_vmi_*`` names, ``k3svirt_`` prefix).

A custom prometheus_client Collector reading :meth:`StatsCollector.snapshot` at scrape time: a
scrape never touches libvirt. Every VM series carries ``namespace``, ``name``, ``node``; device
series add ``drive`` / ``interface``, vCPU series add ``id``. Stopped or stale VMs have no series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .model import VMStats

if TYPE_CHECKING:
    from .collector import StatsCollector

PREFIX = "k3svirt_vmi_"
VM_LABELS = ("namespace", "name", "node")

# (suffix, type, help, extra label, getter(VMStats) -> iterable of (extra label value | None, value))
_Getter = Callable[[VMStats], "list[tuple[str | None, float | int | None]]"]


def _one(fn: Callable[[VMStats], float | int | None]) -> _Getter:
    return lambda s: [(None, fn(s))]


def _disk(attr: str) -> _Getter:
    return lambda s: [(d.drive, getattr(d, attr)) for d in s.disks]


def _net_total(key: str) -> _Getter:
    return lambda s: [(n.interface, n.total(key)) for n in s.nets]


def _net_rate(key: str) -> _Getter:
    return lambda s: [(n.interface, n.rate(key)) for n in s.nets]


C, G = "counter", "gauge"

# fmt: off
METRICS: tuple[tuple[str, str, str, str | None, _Getter], ...] = (
    # CPU
    ("cpu_usage_seconds_total", C, "Total CPU time spent by the VM (all vCPUs and emulator threads).",
     None, _one(lambda s: s.cpu.usage_seconds_total)),
    ("cpu_user_usage_seconds_total", C, "CPU time spent by the VM in user mode.",
     None, _one(lambda s: s.cpu.user_seconds_total)),
    ("cpu_system_usage_seconds_total", C, "CPU time spent by the VM in system mode.",
     None, _one(lambda s: s.cpu.system_seconds_total)),
    ("vcpu_seconds_total", C, "Time each vCPU spent running.",
     "id", lambda s: [(str(v.id), v.seconds_total) for v in s.cpu.vcpus]),
    ("cpu_usage_percent", G, "CPU usage over the last interval; 100 = one host CPU fully busy.",
     None, _one(lambda s: s.cpu.usage_percent)),
    ("vcpu_usage_percent", G, "Per-vCPU usage over the last interval; 100 = the vCPU ran all the time.",
     "id", lambda s: [(str(v.id), v.usage_percent) for v in s.cpu.vcpus]),
    # Memory
    ("memory_domain_bytes", G, "Memory currently assigned to the VM (balloon current).",
     None, _one(lambda s: s.memory.domain_bytes)),
    ("memory_resident_bytes", G, "Resident set size of the VM's QEMU process on the host.",
     None, _one(lambda s: s.memory.resident_bytes)),
    ("memory_available_bytes", G, "Memory the guest OS sees as total (guest balloon driver).",
     None, _one(lambda s: s.memory.available_bytes)),
    ("memory_unused_bytes", G, "Memory left completely unused by the guest (guest balloon driver).",
     None, _one(lambda s: s.memory.unused_bytes)),
    ("memory_usable_bytes", G, "Memory the guest can reclaim without swapping (guest balloon driver).",
     None, _one(lambda s: s.memory.usable_bytes)),
    ("memory_used_bytes", G, "Memory used by the guest: available - usable (guest balloon driver).",
     None, _one(lambda s: s.memory.used_bytes)),
    ("memory_swap_in_traffic_bytes", G, "Guest memory swapped in (guest balloon driver).",
     None, _one(lambda s: s.memory.swap_in_bytes)),
    ("memory_swap_out_traffic_bytes", G, "Guest memory swapped out (guest balloon driver).",
     None, _one(lambda s: s.memory.swap_out_bytes)),
    ("memory_pgmajfault_total", C, "Guest major page faults (guest balloon driver).",
     None, _one(lambda s: s.memory.major_faults_total)),
    ("memory_pgminfault_total", C, "Guest minor page faults (guest balloon driver).",
     None, _one(lambda s: s.memory.minor_faults_total)),
    # Storage
    ("storage_read_traffic_bytes_total", C, "Bytes read from the drive.", "drive",
     _disk("read_bytes_total")),
    ("storage_write_traffic_bytes_total", C, "Bytes written to the drive.", "drive",
     _disk("write_bytes_total")),
    ("storage_iops_read_total", C, "Read requests completed.", "drive", _disk("read_ops_total")),
    ("storage_iops_write_total", C, "Write requests completed.", "drive", _disk("write_ops_total")),
    ("storage_read_times_seconds_total", C, "Time spent on reads.", "drive",
     _disk("read_times_seconds_total")),
    ("storage_write_times_seconds_total", C, "Time spent on writes.", "drive",
     _disk("write_times_seconds_total")),
    ("storage_flush_requests_total", C, "Flush requests completed.", "drive", _disk("flush_ops_total")),
    ("storage_flush_times_seconds_total", C, "Time spent on flushes.", "drive",
     _disk("flush_times_seconds_total")),
    ("storage_read_bytes_per_second", G, "Read throughput over the last interval.", "drive",
     _disk("read_bytes_per_sec")),
    ("storage_write_bytes_per_second", G, "Write throughput over the last interval.", "drive",
     _disk("write_bytes_per_sec")),
    ("storage_read_iops", G, "Read requests per second over the last interval.", "drive", _disk("read_iops")),
    ("storage_write_iops", G, "Write requests per second over the last interval.", "drive",
     _disk("write_iops")),
    # Network
    ("network_receive_bytes_total", C, "Bytes received.", "interface", _net_total("rx_bytes")),
    ("network_transmit_bytes_total", C, "Bytes transmitted.", "interface", _net_total("tx_bytes")),
    ("network_receive_packets_total", C, "Packets received.", "interface", _net_total("rx_pkts")),
    ("network_transmit_packets_total", C, "Packets transmitted.", "interface", _net_total("tx_pkts")),
    ("network_receive_errors_total", C, "Receive errors.", "interface", _net_total("rx_errs")),
    ("network_transmit_errors_total", C, "Transmit errors.", "interface", _net_total("tx_errs")),
    ("network_receive_packets_dropped_total", C, "Received packets dropped.", "interface",
     _net_total("rx_drop")),
    ("network_transmit_packets_dropped_total", C, "Transmitted packets dropped.", "interface",
     _net_total("tx_drop")),
    ("network_receive_bytes_per_second", G, "Receive throughput over the last interval.", "interface",
     _net_rate("rx_bytes")),
    ("network_transmit_bytes_per_second", G, "Transmit throughput over the last interval.", "interface",
     _net_rate("tx_bytes")),
    ("network_receive_packets_per_second", G, "Received packets per second over the last interval.",
     "interface", _net_rate("rx_pkts")),
    ("network_transmit_packets_per_second", G, "Transmitted packets per second over the last interval.",
     "interface", _net_rate("tx_pkts")),
    # Freshness
    ("sample_timestamp_seconds", G, "Epoch time the figures of this VM were sampled.",
     None, _one(lambda s: s.sampled_at)),
)
# fmt: on


class VMMetricsCollector(Collector):
    """prometheus_client custom collector over a StatsCollector's latest snapshot."""

    def __init__(self, stats: StatsCollector) -> None:
        self.stats = stats

    def describe(self) -> list[Metric]:  # avoid calling collect() at registration
        return []

    def collect(self) -> Iterator[Metric]:
        snap = self.stats.snapshot()
        node = self.stats.node_name
        vms = sorted(snap.vms.values(), key=lambda s: (s.namespace, s.name))
        for suffix, kind, doc, extra, getter in METRICS:
            labels = [*VM_LABELS, extra] if extra else list(VM_LABELS)
            cls = CounterMetricFamily if kind == C else GaugeMetricFamily
            fam = cls(PREFIX + suffix, doc, labels=labels)
            for s in vms:
                base = [s.namespace, s.name, node]
                for label_value, value in getter(s):
                    if value is None:
                        continue
                    fam.add_metric([*base, label_value] if extra else base, float(value))
            yield fam

        # self-metrics of the sampler (per node, no VM labels)
        rnd = snap.round
        yield GaugeMetricFamily("k3svirt_stats_vms", "VMs with fresh figures on this node.", value=len(snap.vms))
        yield CounterMetricFamily("k3svirt_stats_rounds", "Successful sampling rounds.", value=self.stats.rounds_total)
        yield CounterMetricFamily("k3svirt_stats_errors", "Failed sampling rounds.", value=self.stats.errors_total)
        if rnd is not None:
            yield GaugeMetricFamily(
                "k3svirt_stats_round_duration_seconds",
                "Wall time of the last sampling round.",
                value=rnd.duration_seconds,
            )
            yield GaugeMetricFamily(
                "k3svirt_stats_round_cpu_seconds",
                "Operator CPU time of the last sampling round.",
                value=rnd.cpu_seconds,
            )
            yield GaugeMetricFamily(
                "k3svirt_stats_round_full",
                "1 when the last round read every group (memory, disks, vCPUs too), 0 for a cheap round.",
                value=1.0 if rnd.full else 0.0,
            )
        pace = self.stats.pace
        yield GaugeMetricFamily(
            "k3svirt_stats_interval_seconds", "Seconds between sampling rounds now.", value=pace.interval
        )
        yield GaugeMetricFamily(
            "k3svirt_stats_interval_configured_seconds",
            "Seconds between sampling rounds as configured (K3SVIRT_STATS_INTERVAL).",
            value=pace.base,
        )
        yield GaugeMetricFamily(
            "k3svirt_stats_interval_stretched",
            "1 while rounds cost more than 10 % of the configured interval and the interval is stretched.",
            value=1.0 if pace.stretched else 0.0,
        )
        yield GaugeMetricFamily(
            "k3svirt_stats_round_cost_seconds", "Smoothed cost of a round (what the interval follows).", value=pace.cost
        )
        yield GaugeMetricFamily(
            "k3svirt_stats_full_period_seconds",
            "Seconds between full rounds now: how old memory, disk and vCPU figures may be.",
            value=self.stats.full_period,
        )
        age = self.stats.last_success_age()
        if age is not None:
            yield GaugeMetricFamily(
                "k3svirt_stats_last_success_age_seconds",
                "Seconds since the last successful round.",
                value=age,
            )


def make_registry(stats: StatsCollector, extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """A private registry (not the global default): the VM metrics collector, plus the operator's
    own collectors (e.g. the start queue)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VMMetricsCollector(stats))
    for collector in extra:
        registry.register(collector)
    return registry
