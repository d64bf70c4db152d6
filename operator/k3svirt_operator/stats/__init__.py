"""VM monitoring: libvirt sampling, rates, Prometheus /metrics and per-VM JSON.

Wiring (operator startup)::

    from k3svirt_operator.stats import start_monitoring
    collector, server = start_monitoring(get_conn, node_name=node, interval=2.0, port=9470, host=node_ip)
    ...
    summarize(collector.get(ns, name))      # -> dict for status.monitoring (written when worth_writing)
    server.stats_url(ns, name, host=node_ip) # -> status.monitoring.endpoint
    ...
    server.stop(); collector.stop()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import libvirt
from prometheus_client.registry import Collector

from .collector import StatsCollector, StatsSnapshot
from .metrics import VMMetricsCollector, make_registry
from .model import RawSample, VMRef, VMStats
from .sampler import Sampler, derive, parse_record
from .server import MetricsServer
from .summary import summarize, worth_writing

__all__ = [
    "MetricsServer",
    "RawSample",
    "Sampler",
    "StatsCollector",
    "StatsSnapshot",
    "VMMetricsCollector",
    "VMRef",
    "VMStats",
    "derive",
    "make_registry",
    "parse_record",
    "start_monitoring",
    "summarize",
    "worth_writing",
]


def start_monitoring(
    conn: libvirt.virConnect | Callable[[], libvirt.virConnect],
    *,
    node_name: str | None = None,
    interval: float | None = None,
    port: int | None = None,
    host: str | None = None,
    extra: Sequence[Collector] = (),
    full_every: int | None = None,
) -> tuple[StatsCollector, MetricsServer]:
    """Start the sampling thread and the HTTP server (both daemon threads); return both.
    ``extra``: more Prometheus collectors for /metrics. ``full_every``: see StatsCollector."""
    collector = StatsCollector(conn, node_name=node_name, interval=interval, full_every=full_every)
    collector.start()
    server = MetricsServer(collector, port=port, host=host, extra=extra)
    server.start()
    return collector, server
