"""Background sampling loop with a thread-safe latest snapshot.

    collector = StatsCollector(conn_or_provider, node_name="node-a", interval=2.0)
    collector.start()
    collector.get("default", "vm1")        # -> VMStats | None (None: unknown, not running or stale)
    collector.stop()

One sampling thread; each round is one ``getAllDomainStats`` call (see sampler.py). Readers get an
immutable snapshot swapped in atomically, so they never block the sampler for long. Figures older
than ``stale_after`` (default 5 s) are never served: if sampling stalls or libvirtd goes away the
VMs simply disappear from /metrics and /stats instead of showing frozen rates.

Rounds follow a schedule (schedule.py): cheap ones (state, CPU, network) every interval, a full one
(memory, disks, vCPUs too) every ``full_every`` rounds. When rounds get expensive (many domains, an
overloaded host) the interval stretches (pacing.py, on the average cost over a cycle) and
the collector says so: ``pace.degraded`` (status.monitoring) and k3svirt_stats_interval_* (/metrics).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import libvirt

from . import pacing
from .model import VMStats
from .sampler import RoundInfo, Sampler
from .schedule import DEFAULT_FULL_EVERY

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 2.0  # Settings.stats_interval (K3SVIRT_STATS_INTERVAL) sets it in the operator
DEFAULT_STALE_AFTER = 5.0


_EMPTY: Mapping[tuple[str, str], VMStats] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """Result of one round. ``vms`` is keyed by (namespace, name)."""

    monotonic: float  # host monotonic clock at the end of the round (freshness checks)
    wall: float  # epoch seconds, same instant
    vms: Mapping[tuple[str, str], VMStats] = field(default_factory=lambda: _EMPTY)
    round: RoundInfo | None = None

    def age(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.monotonic


class StatsCollector:
    """Samples all domains every ``interval`` seconds in a daemon thread.

    ``conn``: a libvirt connection or a zero-argument callable returning the current connection
    (the libvirt_conn layer owns opening/reconnecting; the collector never opens one).
    ``interval``: seconds between rounds (default 2). ``node_name``: default the host name.
    ``stale_after``: max age of served figures, default max(5 s, 2.5 x interval); while the interval
    is stretched, 2.5 stretched intervals. ``adaptive=False`` keeps the configured interval always.
    ``full_every``: a full round every this many (default 5: memory and disks every 10 s at 2 s);
    a ``sampler`` passed in brings its own.
    """

    def __init__(
        self,
        conn: libvirt.virConnect | Callable[[], libvirt.virConnect],
        *,
        node_name: str | None = None,
        interval: float | None = None,
        stale_after: float | None = None,
        include_unmanaged: bool = False,
        sampler: Sampler | None = None,
        adaptive: bool = True,
        full_every: int | None = None,
    ) -> None:
        self.node_name = node_name or socket.gethostname()
        self.configured_interval = interval if interval and interval > 0 else DEFAULT_INTERVAL
        self._stale_floor = stale_after if stale_after else max(DEFAULT_STALE_AFTER, 2.5 * self.configured_interval)
        self.adaptive = adaptive
        self.sampler = sampler or Sampler(
            conn, include_unmanaged=include_unmanaged, full_every=full_every or DEFAULT_FULL_EVERY
        )
        self.pace = pacing.initial(self.configured_interval, self.sampler.full_every)
        self._lock = threading.Lock()  # guards _snapshot swap and the counters
        self._round_lock = threading.Lock()  # one round at a time (thread vs sample_once)
        self._snapshot: StatsSnapshot | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds_total = 0
        self.errors_total = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="k3svirt-stats", daemon=True)
        self._thread.start()
        log.info("stats collector started", extra={"interval": self.interval, "node": self.node_name})

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)
            self._thread = None

    @property
    def interval(self) -> float:
        """Seconds between rounds now: the configured interval, or stretched (see pacing.py)."""
        return self.pace.interval

    @property
    def stale_after(self) -> float:
        return pacing.stale_after(self.pace, self._stale_floor)

    @stale_after.setter
    def stale_after(self, seconds: float) -> None:
        self._stale_floor = seconds

    def pacing_status(self) -> dict[str, object]:
        """What status.monitoring says about the sampling rate (a stretched interval, and why)."""
        return {"statsIntervalSeconds": self.pace.interval, "statsDegraded": self.pace.degraded}

    @property
    def full_period(self) -> float:
        """Seconds between two full rounds now: how old memory, disk and vCPU figures may get."""
        return self.sampler.full_every * self.pace.interval

    @property
    def running(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    def _run(self) -> None:
        next_due = time.monotonic()
        while not self._stop.is_set():
            self.sample_once()
            next_due += self.interval
            now = time.monotonic()
            if next_due < now:  # overran: skip missed slots rather than bursting
                next_due = now + self.interval
            self._stop.wait(next_due - now)

    # ------------------------------------------------------------------ sampling
    def sample_once(self) -> StatsSnapshot | None:
        """Run one round now (also used by tests and the benchmark). Returns the new snapshot, or
        None when the libvirt call failed (the previous snapshot ages out after stale_after)."""
        with self._round_lock:
            try:
                by_uuid = self.sampler.sample()
            except libvirt.libvirtError as e:
                with self._lock:
                    self.errors_total += 1
                    self.last_error = str(e)
                log.warning("stats round failed", extra={"error": str(e)})
                return None
            except Exception as e:  # never let the thread die on a surprise
                with self._lock:
                    self.errors_total += 1
                    self.last_error = repr(e)
                log.exception("stats round crashed")
                return None
            rnd = self.sampler.last_round
            if rnd is not None and self.adaptive:
                before = self.pace
                self.pace = pacing.next_pace(before, rnd.call_seconds, rnd.cpu_seconds, full=rnd.full)
                if self.pace.stretched != before.stretched:
                    log.warning("stats interval %s", "stretched" if self.pace.stretched else "back to normal",
                                extra={"intervalSeconds": self.pace.interval, "roundSeconds": round(self.pace.cost, 3),
                                       "domains": rnd.domains})  # fmt: skip
            vms = {(s.namespace, s.name): s for s in by_uuid.values()}
            snap = StatsSnapshot(
                monotonic=time.monotonic(),
                wall=rnd.wall if rnd else time.time(),
                vms=MappingProxyType(vms),
                round=rnd,
            )
            with self._lock:
                self._snapshot = snap
                self.rounds_total += 1
                self.last_error = None
            return snap

    # ------------------------------------------------------------------ readers (thread-safe)
    def snapshot(self) -> StatsSnapshot:
        """Latest snapshot, or an empty one when it is older than ``stale_after``."""
        with self._lock:
            snap = self._snapshot
        now = time.monotonic()
        if snap is None or snap.age(now) > self.stale_after:
            return StatsSnapshot(monotonic=now, wall=time.time(), round=snap.round if snap else None)
        return snap

    def get(self, namespace: str, name: str) -> VMStats | None:
        """Fresh stats of a running (or paused) VM on this node; None when unknown/stopped/stale."""
        return self.snapshot().vms.get((namespace, name))

    def healthy(self) -> bool:
        """The loop runs and the last successful round is fresh."""
        with self._lock:
            snap = self._snapshot
        return self.running and snap is not None and snap.age() <= self.stale_after

    def last_success_age(self) -> float | None:
        with self._lock:
            snap = self._snapshot
        return None if snap is None else snap.age()
