"""How often the sampler may run: the configured interval, stretched when rounds get expensive.

A round costs libvirtd (one getAllDomainStats over every domain, QEMU answering per domain) and the
operator (parsing). When a round takes more than ``budget`` (10 %) of the interval - many domains,
or a host so loaded that libvirtd answers slowly - sampling at the configured rate would eat the
node it measures. The interval then stretches to round cost / budget (capped at ``max_interval``),
and says so: ``Pace.degraded`` is the reason shown in ``status.monitoring`` and
``k3svirt_stats_interval_*`` in /metrics. It shrinks back once rounds are cheap again.

The cost of a round is max(wall time of the libvirt call, operator CPU time): the call's wall time
stands in for libvirtd's share, which the operator cannot see; the once-per-domain identity lookups
of a first round are left out (they are not paid again). It rises at once and decays by half a
step per round (``decay``), so one cheap round after an expensive one does not flip the rate back
and forth. Pure: no clock, no libvirt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BUDGET = 0.10  # share of the interval a round may take
MAX_INTERVAL = 60.0  # a stretched interval never exceeds this (seconds)
DECAY = 0.5  # weight of a cheaper round in the smoothed cost
STEP = 0.5  # stretched intervals are rounded up to this many seconds (no jitter in status)


@dataclass(frozen=True, slots=True)
class Pace:
    base: float  # configured interval (K3SVIRT_STATS_INTERVAL)
    interval: float  # what the sampler uses now
    cost: float = 0.0  # smoothed seconds per round

    @property
    def stretched(self) -> bool:
        return self.interval > self.base

    @property
    def degraded(self) -> str | None:
        """Why figures come less often than configured; None when they do not."""
        if not self.stretched:
            return None
        return (
            f"stats interval stretched from {self.base:g} s to {self.interval:g} s: a sampling round "
            f"takes {self.cost:.2f} s, more than {BUDGET:.0%} of the configured interval"
        )


def initial(base: float) -> Pace:
    return Pace(base=base, interval=base)


def next_pace(
    pace: Pace,
    wall_seconds: float,
    cpu_seconds: float = 0.0,
    *,
    budget: float = BUDGET,
    max_interval: float = MAX_INTERVAL,
    decay: float = DECAY,
) -> Pace:
    """The pace after a round that took ``wall_seconds`` (and ``cpu_seconds`` of operator CPU)."""
    observed = max(wall_seconds, cpu_seconds, 0.0)
    cost = observed if observed >= pace.cost else pace.cost + decay * (observed - pace.cost)
    wanted = cost / budget
    if wanted <= pace.base:
        return Pace(base=pace.base, interval=pace.base, cost=cost)
    interval = min(max_interval, max(pace.base, math.ceil(wanted / STEP) * STEP))
    return Pace(base=pace.base, interval=interval, cost=cost)


def stale_after(pace: Pace, floor: float) -> float:
    """Figures older than this are not served: the configured floor, or 2.5 rounds of a stretched pace."""
    return max(floor, 2.5 * pace.interval) if pace.stretched else floor
