"""Usage metering per VM: the pure bookkeeping of hour buckets (docs/metering.md).

Each round of the stats sampler gives a VM's cumulative counters (CPU seconds, network bytes) and
gauges (memory allocated and used, disk size). `VMMeter.observe` adds what happened since the
previous reading to the open bucket; a bucket is completed once the wall clock passes its end and
is then never reopened. What makes restarts and clock jumps safe:

* Counters are differenced against a baseline (the previous reading, or after a restart the
  checkpoint's): an operator restart counts exactly the counter growth since the checkpoint, never
  the domain's whole life again. A new domain (another libvirt domain id, another boot of the host)
  starts from zero, so all of its counters are new usage.
* Time integrals (GiB-hours, GB-hours) use the host's monotonic clock: a wall clock jump adds or
  removes no time. The monotonic clock survives an operator restart within one host boot (the boot
  id is checkpointed with it), so the gap of a restart is integrated too.
* The wall clock only chooses the bucket, and never an older one than the open bucket: after a jump
  backwards usage keeps going to the open bucket (it just stays open longer); after a jump forward
  the open bucket is completed and the skipped hours stay empty.
* The completed buckets and the open one (with its baseline) are persisted in one status write of
  the VM's VMUsage object, so a bucket moves from open to completed atomically: never lost, never
  counted twice. A crash loses no counter growth (the baseline is in the checkpoint) and at most the
  memory/disk integral of the time between the last checkpoint and the crash when the host rebooted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from k3svirt_common.names import USAGE_FIELDS as FIELDS

GIB = 1024**3
GB = 1000**3
COUNTERS = ("cpuSeconds", "networkRxBytes", "networkTxBytes")  # cumulative in libvirt
MAX_GAP_SECONDS = 3 * 3600.0  # a longer gap between two readings is not integrated (host suspended?)


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_ms(epoch: float) -> str:
    """With milliseconds: a checkpoint's wall time (whole seconds would shift up to 1 s of the
    restart gap into the bucket before it when the gap is shared out by wall time)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """'2026-12-02T03:00:00Z', also with fractional seconds (checkpoints); ValueError else."""
    if not text.endswith("Z"):
        raise ValueError(f"not a UTC time: {text!r}")
    base, _, frac = text[:-1].partition(".")
    whole = datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    if not frac:
        return whole
    if not frac.isdigit() or len(frac) > 9:
        raise ValueError(f"bad fractional seconds: {text!r}")
    return whole + int(frac) / 10 ** len(frac)


@dataclass(frozen=True)
class Reading:
    """One VM's figures at one instant (cumulative counters; gauges in bytes)."""

    boot_id: str
    dom_id: int | None
    monotonic: float
    wall: float
    cpu_seconds: float
    rx_bytes: float
    tx_bytes: float
    # Gauges; None when this round did not report them (libvirt skips a busy domain's balloon and
    # block figures, stats NOWAIT): the previous reading's value holds (fill_from).
    memory_allocated_bytes: float | None
    memory_used_bytes: float | None  # as the guest reports it (balloon driver); None: not this round
    disk_bytes: float | None
    # QEMU's host RSS: memory used only until the guest first reports its own figure (booting, or no
    # balloon driver). Never in between: the two differ several times over (RSS holds the guest's
    # page cache and QEMU itself), so a round without the guest's figure holds its last one.
    memory_rss_bytes: float | None = None

    def fill_from(self, prev: Reading | None) -> Reading:
        if prev is None:
            return self
        return replace(
            self,
            memory_allocated_bytes=_first(self.memory_allocated_bytes, prev.memory_allocated_bytes),
            memory_used_bytes=_first(self.memory_used_bytes, prev.memory_used_bytes),
            disk_bytes=_first(self.disk_bytes, prev.disk_bytes),
            memory_rss_bytes=_first(self.memory_rss_bytes, prev.memory_rss_bytes),
        )

    def used_gauge(self) -> float:
        """Memory used as metered: the guest's figure once it reported one, else QEMU's RSS."""
        return _first(self.memory_used_bytes, self.memory_rss_bytes) or 0.0

    def counters(self) -> dict[str, float]:
        return {"cpuSeconds": self.cpu_seconds, "networkRxBytes": self.rx_bytes, "networkTxBytes": self.tx_bytes}

    def to_json(self) -> dict[str, Any]:
        return {
            "bootID": self.boot_id,
            "domainID": self.dom_id,
            "monotonic": self.monotonic,
            "wall": rfc3339_ms(self.wall),
            **self.counters(),
            "memoryAllocatedBytes": self.memory_allocated_bytes,
            "memoryUsedBytes": self.memory_used_bytes,
            "diskBytes": self.disk_bytes,
            "memoryRssBytes": self.memory_rss_bytes,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Reading:
        return cls(
            boot_id=str(d["bootID"]),
            dom_id=None if d.get("domainID") is None else int(d["domainID"]),
            monotonic=float(d["monotonic"]),
            wall=parse_time(d["wall"]),
            cpu_seconds=float(d["cpuSeconds"]),
            rx_bytes=float(d["networkRxBytes"]),
            tx_bytes=float(d["networkTxBytes"]),
            memory_allocated_bytes=_float_or_none(d.get("memoryAllocatedBytes")),
            memory_used_bytes=_float_or_none(d.get("memoryUsedBytes")),
            disk_bytes=_float_or_none(d.get("diskBytes")),
            memory_rss_bytes=_float_or_none(d.get("memoryRssBytes")),
        )


def _first(a: float | None, b: float | None) -> float | None:
    return a if a is not None else b


def _float_or_none(v: Any) -> float | None:
    return None if v is None else float(v)


def usage_between(prev: Reading | None, cur: Reading) -> dict[str, float]:
    """What happened from `prev` to `cur` (pure). prev None or another domain/boot: the counters
    count from zero (a new domain's whole life so far), no time is integrated."""
    same = prev is not None and prev.boot_id == cur.boot_id and prev.dom_id == cur.dom_id
    out = dict.fromkeys(FIELDS, 0.0)
    for key, value in cur.counters().items():
        base = prev.counters()[key] if same and prev is not None else 0.0
        out[key] = value - base if value >= base else value  # a counter that went down was reset
    if same and prev is not None:
        dt = cur.monotonic - prev.monotonic
        if 0 < dt <= MAX_GAP_SECONDS:
            hours = dt / 3600.0
            # The gauges as they were over the interval: the previous reading's (left sum).
            out["memoryAllocatedGiBHours"] = (prev.memory_allocated_bytes or 0.0) / GIB * hours
            out["memoryUsedGiBHours"] = prev.used_gauge() / GIB * hours
            out["diskGBHours"] = (prev.disk_bytes or 0.0) / GB * hours
    return out


def _clocks_agree(prev: Reading | None, cur: Reading) -> bool:
    """Same domain, and wall and monotonic clocks measured the same interval (no clock jump)."""
    if prev is None or prev.boot_id != cur.boot_id or prev.dom_id != cur.dom_id:
        return False
    mono, wall = cur.monotonic - prev.monotonic, cur.wall - prev.wall
    return 0 <= mono <= MAX_GAP_SECONDS and abs(wall - mono) <= max(2.0, 0.01 * mono)


def bucket_start(wall: float, bucket_seconds: int) -> int:
    return int(math.floor(wall / bucket_seconds) * bucket_seconds)


@dataclass
class VMMeter:
    """The buckets of one VM (one VMUsage object). `completed` is bounded by `retention`."""

    namespace: str
    name: str
    uid: str
    bucket_seconds: int
    retention: int  # completed buckets kept
    completed: list[dict[str, Any]] = field(default_factory=list)
    open_start: int | None = None
    open: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FIELDS, 0.0))
    baseline: Reading | None = None

    def _last_completed_start(self) -> int | None:
        return int(parse_time(self.completed[-1]["start"])) if self.completed else None

    def _complete_open(self) -> None:
        assert self.open_start is not None
        self.completed.append({"start": rfc3339(self.open_start), **{k: round(v, 9) for k, v in self.open.items()}})
        del self.completed[: max(0, len(self.completed) - self.retention)]
        self.open_start, self.open = None, dict.fromkeys(FIELDS, 0.0)

    def tick(self, wall: float) -> bool:
        """Completes the open bucket once the wall clock is past its end. True when one was."""
        if self.open_start is not None and wall >= self.open_start + self.bucket_seconds:
            self._complete_open()
            return True
        return False

    def observe(self, reading: Reading) -> bool:
        """Adds the usage since the baseline; True when a bucket was completed (persist now).

        An interval that crosses bucket ends (a gap while the operator restarted, a slow round) is
        shared out by wall time, as if used evenly: each bucket it spans gets its part, the buckets
        in between too. Only when both clocks agree about the interval; after a clock jump, and for a
        new domain (no interval known), everything goes to the bucket of the reading."""
        reading = reading.fill_from(self.baseline)
        used, prev = usage_between(self.baseline, reading), self.baseline
        self.baseline = reading
        completed = False
        agree = _clocks_agree(prev, reading)
        if self.open_start is None and agree:
            # The open bucket was completed while the VM went unseen (an operator starting, a stale
            # round): the interval continues right after it, from the bucket of the previous reading.
            assert prev is not None
            last = self._last_completed_start()
            start = bucket_start(prev.wall, self.bucket_seconds)
            self.open_start = max(start, last + self.bucket_seconds) if last is not None else start
        if self.open_start is not None and agree:
            assert prev is not None
            span = reading.wall - prev.wall
            while self.open_start is not None and reading.wall >= self.open_start + self.bucket_seconds:
                end = self.open_start + self.bucket_seconds
                share = max(0.0, end - max(prev.wall, self.open_start)) / span if span > 0 else 0.0
                for key, value in used.items():
                    self.open[key] += value * share
                    used[key] = value * (1 - share) if share < 1 else 0.0
                prev = replace(prev, wall=end)
                span = reading.wall - end
                self._complete_open()
                self.open_start, completed = end, True  # the next bucket follows without a hole
        completed = self.tick(reading.wall) or completed
        if self.open_start is None:
            start = bucket_start(reading.wall, self.bucket_seconds)
            last = self._last_completed_start()
            if last is not None and start <= last:  # the clock went back: never reopen a completed bucket
                start = last + self.bucket_seconds
            self.open_start = start
        for key, value in used.items():
            self.open[key] += value
        return completed

    def forget_baseline(self) -> None:
        """The domain is gone (stopped): its next start is a new domain anyway."""
        self.baseline = None

    def totals(self) -> dict[str, float]:
        """Completed (kept) plus open usage: what the Prometheus counters show."""
        out = dict(self.open)
        for b in self.completed:
            for k in FIELDS:
                out[k] += float(b.get(k) or 0.0)
        return out

    # ------------------------------------------------------------------ persistence (VMUsage.status)
    def to_status(self, node: str) -> dict[str, Any]:
        return {
            "vm": {"name": self.name, "uid": self.uid},
            "node": node,
            "bucketSeconds": self.bucket_seconds,
            "buckets": list(self.completed),
            "open": None if self.open_start is None else {"start": rfc3339(self.open_start), **self.open},
            "baseline": None if self.baseline is None else self.baseline.to_json(),
        }

    @classmethod
    def from_status(cls, namespace: str, status: Mapping[str, Any], retention: int) -> VMMeter:
        vm = status.get("vm") or {}
        meter = cls(namespace, str(vm.get("name", "")), str(vm.get("uid", "")),
                    int(status.get("bucketSeconds") or 3600), retention)  # fmt: skip
        meter.completed = [dict(b) for b in status.get("buckets") or [] if isinstance(b, Mapping) and "start" in b]
        opened = status.get("open")
        if isinstance(opened, Mapping) and opened.get("start"):
            meter.open_start = int(parse_time(opened["start"]))
            meter.open = {k: float(opened.get(k) or 0.0) for k in FIELDS}
        if isinstance(status.get("baseline"), Mapping):
            try:
                meter.baseline = Reading.from_json(status["baseline"])
            except (KeyError, TypeError, ValueError):
                meter.baseline = None  # unreadable: counters restart from zero (documented)
        return meter

    def with_bucket_seconds(self, seconds: int) -> VMMeter:
        """A changed bucket length applies from the next bucket on."""
        return replace(self, bucket_seconds=seconds)
