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
and forth.

With a round schedule (schedule.py: ``full_every - 1`` cheap rounds, then a full one) the cost that
drives the interval is the average per round over one cycle, (full + (n - 1) x cheap) / n, each
kind smoothed on its own: one expensive full round every n does not stretch the interval, a
cycle that costs more than the budget on average does. Pure: no clock, no libvirt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

BUDGET = 0.10  # share of the interval a round may take
MAX_INTERVAL = 60.0  # a stretched interval never exceeds this (seconds)
DECAY = 0.5  # weight of a cheaper round in the smoothed cost
STEP = 0.5  # stretched intervals are rounded up to this many seconds (no jitter in status)


@dataclass(frozen=True, slots=True)
class Pace:
    base: float  # configured interval (K3SVIRT_STATS_INTERVAL)
    interval: float  # what the sampler uses now
    cost: float = 0.0  # smoothed seconds per round, averaged over a schedule cycle
    full_every: int = 1  # rounds per schedule cycle (K3SVIRT_STATS_FULL_EVERY)
    # smoothed cost of each kind of round (state behind ``cost``, not what the pace is)
    full_cost: float = field(default=0.0, compare=False)
    cheap_cost: float = field(default=0.0, compare=False)

    @property
    def stretched(self) -> bool:
        return self.interval > self.base

    @property
    def degraded(self) -> str | None:
        """Why figures come less often than configured; None when they do not."""
        if not self.stretched:
            return None
        per = "a sampling round takes" if self.full_every <= 1 else "sampling rounds take on average"
        return (
            f"stats interval stretched from {self.base:g} s to {self.interval:g} s: {per} "
            f"{self.cost:.2f} s, more than {BUDGET:.0%} of the configured interval"
        )


def initial(base: float, full_every: int = 1) -> Pace:
    return Pace(base=base, interval=base, full_every=max(1, full_every))


def _smooth(before: float, observed: float, decay: float) -> float:
    """Rises at once, decays by ``decay`` of the step."""
    return observed if observed >= before else before + decay * (observed - before)


def cycle_cost(full_cost: float, cheap_cost: float, full_every: int) -> float:
    """Average cost per round over one cycle of ``full_every`` rounds (one full, the rest cheap)."""
    if full_every <= 1:
        return full_cost
    return (full_cost + (full_every - 1) * cheap_cost) / full_every


def next_pace(
    pace: Pace,
    wall_seconds: float,
    cpu_seconds: float = 0.0,
    *,
    full: bool = True,
    budget: float = BUDGET,
    max_interval: float = MAX_INTERVAL,
    decay: float = DECAY,
) -> Pace:
    """The pace after a round that took ``wall_seconds`` (and ``cpu_seconds`` of operator CPU);
    ``full``: it read every group (else a cheap round of the schedule)."""
    observed = max(wall_seconds, cpu_seconds, 0.0)
    full_cost, cheap_cost = pace.full_cost, pace.cheap_cost
    if full or pace.full_every <= 1:
        full_cost = _smooth(full_cost, observed, decay)
    else:
        cheap_cost = _smooth(cheap_cost, observed, decay)
    cost = cycle_cost(full_cost, cheap_cost, pace.full_every)
    wanted = cost / budget
    interval = pace.base
    if wanted > pace.base:
        interval = min(max_interval, max(pace.base, math.ceil(wanted / STEP) * STEP))
    return Pace(pace.base, interval, cost, pace.full_every, full_cost, cheap_cost)


def stale_after(pace: Pace, floor: float) -> float:
    """Figures older than this are not served: the configured floor, or 2.5 rounds of a stretched pace."""
    return max(floor, 2.5 * pace.interval) if pace.stretched else floor
