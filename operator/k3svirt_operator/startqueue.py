"""At most N domain starts at once on this node; the others wait in line and know their place.

A burst (50 VMs applied at once) would otherwise start 50 QEMU processes at the same moment on a
small box: every start then takes the time of all of them, and nobody can tell a VM that waits
from one that hangs. Here each VM that wants to start asks for a slot; it gets one when it is
among the first ``free slots`` in line, else it is told its position (1-based) and waits: the
reconciler reports it (printableStatus Starting, Ready=False reason Queued, "position 7 of 40")
and /metrics shows the line's length. When a start finishes, the next VMs in line are woken.

Thread-safe (VM passes run in worker threads); no libvirt, no clock: unit-tested as it is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

Key = Hashable  # (namespace, name) in the operator


class StartQueue:
    """FIFO admission of domain starts. ``wake(key)`` is called (outside the lock) for each VM
    that may now take a slot; the operator pokes that VM's loop."""

    def __init__(self, slots: int, wake: Callable[[Key], None] | None = None) -> None:
        if slots < 1:
            raise ValueError("slots must be >= 1")
        self.slots = slots
        self._wake = wake
        self._lock = threading.Lock()
        self._waiting: list[Key] = []  # in arrival order
        self._starting: set[Key] = set()
        self.started_total = 0
        self.queued_total = 0  # VMs that had to wait at least once

    def try_acquire(self, key: Key) -> int:
        """0: the VM holds a slot now (call release() after the start). Else its position in line
        (1 = next); it keeps its place until it gets a slot or leave() is called."""
        with self._lock:
            if key in self._starting:
                return 0
            if key not in self._waiting:
                self._waiting.append(key)
                first_time = True
            else:
                first_time = False
            free = self.slots - len(self._starting)
            index = self._waiting.index(key)
            if index < free:
                self._waiting.pop(index)
                self._starting.add(key)
                return 0
            if first_time:
                self.queued_total += 1
            return index + 1

    def release(self, key: Key) -> None:
        """The VM's start finished (or failed): its slot goes to the next in line."""
        with self._lock:
            if key not in self._starting:
                return
            self._starting.discard(key)
            self.started_total += 1
            woken = self._waiting[: self.slots - len(self._starting)]
        self._notify(woken)

    def leave(self, key: Key) -> None:
        """The VM no longer wants to start (stopped, deleted, its loop ended): out of the line."""
        with self._lock:
            held = key in self._starting
            self._starting.discard(key)
            if key in self._waiting:
                self._waiting.remove(key)
            elif not held:
                return
            woken = self._waiting[: self.slots - len(self._starting)]
        self._notify(woken)

    def _notify(self, keys: list[Key]) -> None:
        if self._wake is not None:
            for key in keys:
                self._wake(key)

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    @property
    def starting(self) -> int:
        with self._lock:
            return len(self._starting)

    def position(self, key: Key) -> int | None:
        with self._lock:
            return self._waiting.index(key) + 1 if key in self._waiting else None

    def message(self, position: int) -> str:
        return (
            f"waiting to start: position {position} of {self.waiting} in this node's start queue "
            f"(at most {self.slots} domains start at once)"
        )


class StartQueueMetrics(Collector):
    """k3svirt_start_queue_* on the operator's /metrics."""

    def __init__(self, queue: StartQueue) -> None:
        self.queue = queue

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        q = self.queue
        yield GaugeMetricFamily("k3svirt_start_queue_waiting", "VMs waiting for a start slot.", value=q.waiting)
        yield GaugeMetricFamily("k3svirt_start_queue_starting", "Domain starts under way.", value=q.starting)
        yield GaugeMetricFamily("k3svirt_start_queue_slots", "Domain starts allowed at once.", value=q.slots)
        yield CounterMetricFamily("k3svirt_start_queue_started", "Domain starts done.", value=q.started_total)
        yield CounterMetricFamily(
            "k3svirt_start_queue_queued", "VMs that had to wait for a start slot.", value=q.queued_total
        )
