"""One-call-per-round libvirt sampler and the pure rate derivation.

A round is ONE ``conn.getAllDomainStats(stats_flags, flags)`` call covering every active (running
or paused) domain; per domain we only parse the returned dict. Which groups it asks for follows the
round schedule (schedule.py): a full round every ``full_every``, cheap ones in between; a cheap
round that meets a domain new or started again reads just those in full with one more call. Per-domain RPCs happen
once per domain lifetime: ``dom.metadata()`` once per UUID (VM identity) and ``dom.XMLDesc()``
once per domain start (device aliases for stable ``drive`` / ``interface`` labels).

CPU percent: 100 % = one host CPU fully busy for the whole interval, so a VM with 4 busy vCPUs
shows ~400 % (``top`` / ``virt-top`` convention). Per-vCPU percent: 100 % = that vCPU thread ran
the whole interval.
"""

from __future__ import annotations

import logging
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import libvirt

from . import schedule
from .model import (
    NET_FIELDS,
    STATE_NAMES,
    CPUStats,
    DiskCounters,
    DiskStats,
    MemoryStats,
    NetCounters,
    NetStats,
    RawSample,
    VCPUStats,
    VMRef,
    VMStats,
)

log = logging.getLogger(__name__)

K3SVIRT_XMLNS = "https://k3svirt.io/xmlns/domain/v1"
USER_ALIAS_PREFIX = "ua-"

STATS_FLAGS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_VCPU
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
    | libvirt.VIR_DOMAIN_STATS_BLOCK
)
# ACTIVE = running + paused (+ shutting down). NOWAIT: libvirt does not wait for a domain's job (a
# starting / migrating / hung domain would otherwise stall the whole round, up to libvirt's 30 s job
# timeout); that domain's job-guarded groups (balloon guest memory + rss, block) are then omitted
# for the round. The sampler bridges such gaps for up to HOLD_SECONDS (see bridge_gaps), on top of
# the full-round period when cheap rounds skip those groups anyway (schedule.py).
LIST_FLAGS = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
NOWAIT_FLAG = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
HOLD_SECONDS = 5.0


# --------------------------------------------------------------------------- identity


def parse_vm_metadata(xml_text: str) -> VMRef | None:
    """Parse the ``<k3svirt:vm namespace= name= uid= generation=/>`` element (any prefix)."""
    try:
        el = ET.fromstring(xml_text)
    except ET.ParseError:
        return None
    ns, name = el.get("namespace"), el.get("name")
    if not ns or not name:
        return None
    gen = el.get("generation")
    try:
        generation = int(gen) if gen not in (None, "") else None
    except ValueError:
        generation = None
    return VMRef(namespace=ns, name=name, uid=el.get("uid") or None, generation=generation)


_DNS = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def parse_domain_name(domain: str) -> VMRef | None:
    """Fallback identity from the domain name ``<namespace>_<name>`` (neither may contain '_')."""
    ns, sep, name = domain.partition("_")
    if not sep or not _DNS.match(ns) or not _DNS.match(name):
        return None
    return VMRef(namespace=ns, name=name)


def device_labels(domain_xml: str) -> dict[str, str]:
    """Map libvirt device names as they appear in stats (disk target dev, host tap dev) to stable
    labels: the user alias without its ``ua-`` prefix when the builder set one, else unchanged.
    Tap names (vnetN) change on every start, aliases do not."""
    labels: dict[str, str] = {}
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError:
        return labels
    for dev in root.iterfind("./devices/*"):
        if dev.tag not in ("disk", "interface"):
            continue
        target = dev.find("target")
        alias = dev.find("alias")
        if target is None or alias is None:
            continue
        key = target.get("dev")
        alias_name = alias.get("name") or ""
        if key and alias_name.startswith(USER_ALIAS_PREFIX):
            labels[key] = alias_name[len(USER_ALIAS_PREFIX) :]
    return labels


# --------------------------------------------------------------------------- parsing


def _int(rec: Mapping[str, Any], key: str) -> int | None:
    v = rec.get(key)
    return int(v) if isinstance(v, int | float) else None


def parse_record(
    record: Mapping[str, Any],
    *,
    uuid: str,
    domain: str,
    monotonic: float,
    wall: float,
    dom_id: int | None = None,
    labels: Mapping[str, str] | None = None,
) -> RawSample:
    """Turn one ``getAllDomainStats`` record (flat ``'block.0.rd.bytes'``-style dict) into a RawSample."""
    labels = labels or {}
    vcpus: dict[int, int] = {}
    for i in range(_int(record, "vcpu.maximum") or _int(record, "vcpu.current") or 0):
        t = _int(record, f"vcpu.{i}.time")
        if t is not None:
            vcpus[i] = t
    balloon = {k[8:]: int(v) for k, v in record.items() if k.startswith("balloon.") and isinstance(v, int)}
    disks = []
    for i in range(_int(record, "block.count") or 0):
        p = f"block.{i}."
        name = record.get(p + "name")
        if not name or _int(record, p + "rd.bytes") is None and _int(record, p + "wr.bytes") is None:
            continue  # e.g. an empty cdrom tray
        disks.append(
            DiskCounters(
                drive=labels.get(name, name),
                rd_bytes=_int(record, p + "rd.bytes"),
                wr_bytes=_int(record, p + "wr.bytes"),
                rd_reqs=_int(record, p + "rd.reqs"),
                wr_reqs=_int(record, p + "wr.reqs"),
                rd_times_ns=_int(record, p + "rd.times"),
                wr_times_ns=_int(record, p + "wr.times"),
                fl_reqs=_int(record, p + "fl.reqs"),
                fl_times_ns=_int(record, p + "fl.times"),
                capacity=_int(record, p + "capacity"),
                allocation=_int(record, p + "allocation"),
            )
        )
    nets = []
    for i in range(_int(record, "net.count") or 0):
        p = f"net.{i}."
        name = record.get(p + "name")
        if not name:
            continue
        nets.append(
            NetCounters(
                interface=labels.get(name, name),
                **{f: _int(record, p + f.replace("_", ".", 1)) for f in NET_FIELDS},
            )
        )
    return RawSample(
        uuid=uuid,
        domain=domain,
        monotonic=monotonic,
        wall=wall,
        dom_id=dom_id,
        state=_int(record, "state.state"),
        cpu_time_ns=_int(record, "cpu.time"),
        cpu_user_ns=_int(record, "cpu.user"),
        cpu_system_ns=_int(record, "cpu.system"),
        vcpu_times_ns=vcpus,
        balloon=balloon,
        disks=tuple(disks),
        nets=tuple(nets),
    )


# --------------------------------------------------------------------------- derivation


def _rate(prev: int | None, cur: int | None, dt: float | None) -> float | None:
    """Per-second rate; None without a baseline or when the counter went backwards (reset)."""
    if prev is None or cur is None or dt is None or cur < prev:
        return None
    return (cur - prev) / dt


def _kib(b: Mapping[str, int], key: str) -> int | None:
    v = b.get(key)
    return None if v is None else v * 1024


def _ns_to_s(v: int | None) -> float | None:
    return None if v is None else v / 1e9


def restarted(prev: RawSample, cur: RawSample) -> bool:
    """The domain restarted between two samples: new domain id, or cumulative CPU time went down."""
    if prev.dom_id is not None and cur.dom_id is not None and prev.dom_id != cur.dom_id:
        return True
    return prev.cpu_time_ns is not None and cur.cpu_time_ns is not None and cur.cpu_time_ns < prev.cpu_time_ns


def derive(prev: RawSample | None, cur: RawSample, ref: VMRef | None = None) -> VMStats:
    """Derive VM figures from two consecutive samples of the same domain (pure).

    ``prev`` None (first sample), a different UUID, a restart (see :func:`restarted`) or a
    non-positive interval all mean "no baseline": totals are reported, every rate is None. A single
    counter that went backwards (device re-plugged) only nulls its own rate. Never negative.
    """
    if ref is None:
        ref = parse_domain_name(cur.domain) or VMRef(namespace="", name=cur.domain)
    dt: float | None = None
    if prev is not None and prev.uuid == cur.uuid and not restarted(prev, cur):
        dt = cur.monotonic - prev.monotonic
        if dt <= 0:
            dt = None
    if dt is None:
        prev = None

    # CPU ------------------------------------------------------------------------------
    cpu_rate = _rate(prev.cpu_time_ns if prev else None, cur.cpu_time_ns, dt)
    vdt = _carried_dt(prev.vcpu_monotonic if prev else None, cur.vcpu_monotonic, prev, cur, dt)
    vcpus = []
    for vid, t in sorted(cur.vcpu_times_ns.items()):
        r = _rate(prev.vcpu_times_ns.get(vid) if prev else None, t, vdt)
        vcpus.append(VCPUStats(id=vid, seconds_total=t / 1e9, usage_percent=None if r is None else r / 1e7))
    cpu = CPUStats(
        usage_seconds_total=_ns_to_s(cur.cpu_time_ns),
        user_seconds_total=_ns_to_s(cur.cpu_user_ns),
        system_seconds_total=_ns_to_s(cur.cpu_system_ns),
        usage_percent=None if cpu_rate is None else cpu_rate / 1e7,  # ns/s -> % of one CPU
        vcpus=tuple(vcpus),
    )

    # Memory (gauges: no baseline needed) ----------------------------------------------
    b = cur.balloon
    memory = MemoryStats(
        domain_bytes=_kib(b, "current"),
        maximum_bytes=_kib(b, "maximum"),
        resident_bytes=_kib(b, "rss"),
        available_bytes=_kib(b, "available"),
        unused_bytes=_kib(b, "unused"),
        usable_bytes=_kib(b, "usable"),
        swap_in_bytes=_kib(b, "swap_in"),
        swap_out_bytes=_kib(b, "swap_out"),
        major_faults_total=b.get("major_fault"),
        minor_faults_total=b.get("minor_fault"),
    )

    # Disks ----------------------------------------------------------------------------
    prev_disks = {d.drive: d for d in prev.disks} if prev else {}
    disks = []
    for d in cur.disks:
        p = prev_disks.get(d.drive)
        ddt = _carried_dt(p.monotonic if p else None, d.monotonic, prev, cur, dt) if p is not None else dt
        disks.append(
            DiskStats(
                drive=d.drive,
                read_bytes_total=d.rd_bytes,
                write_bytes_total=d.wr_bytes,
                read_ops_total=d.rd_reqs,
                write_ops_total=d.wr_reqs,
                read_times_seconds_total=_ns_to_s(d.rd_times_ns),
                write_times_seconds_total=_ns_to_s(d.wr_times_ns),
                flush_ops_total=d.fl_reqs,
                flush_times_seconds_total=_ns_to_s(d.fl_times_ns),
                read_bytes_per_sec=_rate(p.rd_bytes if p else None, d.rd_bytes, ddt),
                write_bytes_per_sec=_rate(p.wr_bytes if p else None, d.wr_bytes, ddt),
                read_iops=_rate(p.rd_reqs if p else None, d.rd_reqs, ddt),
                write_iops=_rate(p.wr_reqs if p else None, d.wr_reqs, ddt),
                capacity_bytes=d.capacity,
                allocation_bytes=d.allocation,
                sampled_at=_read_wall(cur, d.monotonic),
            )
        )

    # Network --------------------------------------------------------------------------
    prev_nets = {n.interface: n for n in prev.nets} if prev else {}
    nets = []
    for n in cur.nets:
        p = prev_nets.get(n.interface)
        totals = {f: getattr(n, f) for f in NET_FIELDS}
        rates = {f: _rate(getattr(p, f) if p else None, totals[f], dt) for f in NET_FIELDS}
        nets.append(NetStats(interface=n.interface, totals=totals, rates=rates))

    return VMStats(
        ref=ref,
        uuid=cur.uuid,
        domain=cur.domain,
        state=STATE_NAMES.get(cur.state if cur.state is not None else -1, "unknown"),
        sampled_at=cur.wall,
        interval_seconds=dt,
        cpu=cpu,
        memory=memory,
        disks=tuple(disks),
        nets=tuple(nets),
        dom_id=cur.dom_id,
        monotonic=cur.monotonic,
        memory_sampled_at=_read_wall(cur, cur.balloon_monotonic) if cur.balloon else None,
        vcpus_sampled_at=_read_wall(cur, cur.vcpu_monotonic) if cur.vcpu_times_ns else None,
    )


def _carried_dt(
    prev_read: float | None, cur_read: float | None, prev: RawSample | None, cur: RawSample, dt: float | None
) -> float | None:
    """Interval between two readings of a group that may have been carried (read earlier than its
    sample): their own read times give it, so a rate over carried counters spans the real interval."""
    if prev is None or dt is None or (prev_read is None and cur_read is None):
        return dt
    span = _at(cur_read, cur.monotonic) - _at(prev_read, prev.monotonic)
    return span if span > 0 else None


def _at(read: float | None, sample: float) -> float:
    """A group's read time: its own when carried, else its sample's (0.0 is a time, not "none")."""
    return sample if read is None else read


def _read_wall(cur: RawSample, read_monotonic: float | None) -> float:
    """Epoch seconds a group of ``cur`` was read: the sample's own time unless it was carried."""
    return cur.wall if read_monotonic is None else cur.wall - (cur.monotonic - read_monotonic)


def bridge_gaps(prev: RawSample | None, cur: RawSample, hold: float = HOLD_SECONDS) -> tuple[RawSample, set[str]]:
    """Fill groups this round did not read from ``prev``, for at most ``hold`` seconds.

    Two reasons a group is missing: libvirt skipped a busy domain's job-guarded groups (NOWAIT), or
    the round was a cheap one that did not ask for them (schedule.py; the caller then passes a hold
    covering the full-round period, schedule.carry_hold). Balloon figures (gauges) are copied when
    ``rss`` is missing now but was present, or the whole group is missing. vCPU times and disks
    present before but missing now keep their previous counters *with their read time*, so the next
    real reading yields a correct rate over the longer interval. Returns the patched sample and the
    carried drive names (their rates are the previous round's, see Sampler); carried vCPU times are
    told by ``vcpu_monotonic``. No-op after a restart.
    """
    if prev is None or prev.uuid != cur.uuid or restarted(prev, cur):
        return cur, set()
    changes: dict[str, Any] = {}
    b_time = _at(prev.balloon_monotonic, prev.monotonic)
    b_missing = "rss" not in cur.balloon and ("rss" in prev.balloon or (prev.balloon and not cur.balloon))
    if b_missing and cur.monotonic - b_time <= hold:
        changes["balloon"] = {**prev.balloon, **cur.balloon}
        changes["balloon_monotonic"] = b_time
    v_time = _at(prev.vcpu_monotonic, prev.monotonic)
    if not cur.vcpu_times_ns and prev.vcpu_times_ns and cur.monotonic - v_time <= hold:
        changes["vcpu_times_ns"] = prev.vcpu_times_ns
        changes["vcpu_monotonic"] = v_time
    have = {d.drive for d in cur.disks}
    carried = []
    for d in prev.disks:
        t = _at(d.monotonic, prev.monotonic)
        if d.drive not in have and cur.monotonic - t <= hold:
            carried.append(replace(d, monotonic=t))
    if carried:
        changes["disks"] = cur.disks + tuple(carried)
    return (replace(cur, **changes) if changes else cur), {d.drive for d in carried}


# --------------------------------------------------------------------------- sampler


@dataclass(slots=True)
class _DomainInfo:
    ref: VMRef | None  # None: not a k3svirt VM (ignored)
    dom_id: int | None = None
    labels: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class RoundInfo:
    """Bookkeeping of the last round (exposed as k3svirt_stats_* self-metrics)."""

    wall: float
    duration_seconds: float
    cpu_seconds: float
    domains: int
    vms: int
    # wall time of the one getAllDomainStats call: what the round costs libvirtd and QEMU, without the
    # once-per-domain identity lookups (a first round after a start or reconnect has many)
    call_seconds: float = 0.0
    full: bool = True  # the call read every group (schedule.py); False: a cheap round
    # domains read in full by an extra call in a cheap round (new or started again), and its wall
    # time: a once-per-domain-start cost like the identity lookups, left out of call_seconds
    started_domains: int = 0
    started_call_seconds: float = 0.0


class Sampler:
    """Stateful sampler: keeps the previous RawSample per domain UUID between rounds.

    Not thread-safe by itself; :class:`~k3svirt_operator.stats.collector.StatsCollector` calls it
    from its single sampling thread.

    ``conn`` is a libvirt connection or a zero-argument callable returning the current one (so a
    reconnecting connection layer can swap it). The sampler never opens or closes connections.

    ``full_every``: every how many rounds the call reads every group (schedule.py); 1 = always.
    """

    def __init__(
        self,
        conn: libvirt.virConnect | Callable[[], libvirt.virConnect],
        *,
        stats_flags: int = STATS_FLAGS,
        list_flags: int = LIST_FLAGS,
        nowait: bool = True,
        include_unmanaged: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        full_every: int = 1,
    ) -> None:
        self._conn = conn
        self.stats_flags = stats_flags
        self.full_every = max(1, full_every)
        self.nowait = nowait
        self.list_flags = list_flags | (NOWAIT_FLAG if nowait else 0)
        self.include_unmanaged = include_unmanaged
        self._clock = clock
        self._wall = wall_clock
        self._prev: dict[str, RawSample] = {}
        self._last: dict[str, VMStats] = {}
        self._info: dict[str, _DomainInfo] = {}
        self.last_round: RoundInfo | None = None
        self._index = 0  # successful rounds since start / forget(): round 0 is full
        self._last_full: float | None = None  # monotonic time of the last full round
        self._full_period = 0.0  # seconds between the last two full rounds

    def _connection(self) -> libvirt.virConnect:
        c = self._conn
        return c if isinstance(c, libvirt.virConnect) else c()  # type: ignore[operator]

    # identity / labels are cached: one metadata lookup per UUID, one XMLDesc per domain start
    def _domain_info(self, dom: libvirt.virDomain, uuid: str, domain: str, dom_id: int | None) -> _DomainInfo:
        info = self._info.get(uuid)
        if info is None:
            ref = None
            try:
                ref = parse_vm_metadata(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, K3SVIRT_XMLNS))
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                    log.info("metadata lookup failed", extra={"domain": domain, "error": str(e)})
            if ref is None:
                ref = parse_domain_name(domain)
            if ref is None and self.include_unmanaged:
                ref = VMRef(namespace="", name=domain)
            info = self._info[uuid] = _DomainInfo(ref=ref)
        if info.ref is not None and (info.labels is None or info.dom_id != dom_id):
            try:
                info.labels = device_labels(dom.XMLDesc(0))
            except libvirt.libvirtError as e:
                log.info("XMLDesc failed", extra={"domain": domain, "error": str(e)})
                info.labels = {}
            info.dom_id = dom_id
        return info

    def collect_raw(self, stats_flags: int | None = None) -> list[tuple[libvirt.virDomain, dict[str, Any]]]:
        """The single libvirt call of a round (every group unless ``stats_flags`` says otherwise)."""
        flags = self.stats_flags if stats_flags is None else stats_flags
        return self._connection().getAllDomainStats(flags, self.list_flags)

    def _needs_full(self, dom: libvirt.virDomain) -> bool:
        uuid = dom.UUIDString()
        info = self._info.get(uuid)
        if info is not None and info.ref is None:
            return False  # not a k3svirt VM: never sampled, never re-read
        return schedule.needs_full(self._prev.get(uuid), dom.ID())

    def _read_started(
        self, records: list[tuple[libvirt.virDomain, dict[str, Any]]]
    ) -> tuple[list[tuple[libvirt.virDomain, dict[str, Any]]], int]:
        """In a cheap round, re-read in full the domains without a baseline (new, or started again):
        their first sample carries identity, memory, disks and vCPUs. One call for all of them."""
        started = [i for i, (dom, _) in enumerate(records) if self._needs_full(dom)]
        if not started:
            return records, 0
        flags = NOWAIT_FLAG if self.nowait else 0  # a list of domains takes no list filter
        try:
            full = self._connection().domainListGetStats([records[i][0] for i in started], self.stats_flags, flags)
        except libvirt.libvirtError as e:  # gone meanwhile: their cheap records stand, the next full round fills in
            log.info("full read of started domains failed", extra={"domains": len(started), "error": str(e)})
            return records, 0
        by_uuid = {dom.UUIDString(): rec for dom, rec in full}
        out = list(records)
        for i in started:
            dom = records[i][0]
            out[i] = (dom, by_uuid.get(dom.UUIDString(), records[i][1]))
        return out, len(by_uuid)

    def sample(self) -> dict[str, VMStats]:
        """Run one round; return VMStats keyed by domain UUID for the active k3svirt VMs.

        Domains absent from this round (shut off, crashed, undefined) lose their baseline and
        cached identity: a stopped VM never reports stale rates, and comes back without rates.
        Raises libvirt.libvirtError when the call itself fails (connection lost).
        """
        cpu0 = time.process_time()
        t0 = self._clock()
        full = schedule.is_full(self._index, self.full_every)
        records = self.collect_raw(schedule.round_flags(self._index, self.full_every, self.stats_flags))
        mono, wall = self._clock(), self._wall()
        started = 0
        if not full:
            records, started = self._read_started(records)
        t1 = self._clock()
        out = self.derive_round(records, mono, wall, hold=self._hold(mono))
        self._advance(full, mono)
        self.last_round = RoundInfo(
            wall=wall,
            duration_seconds=self._clock() - t0,
            cpu_seconds=time.process_time() - cpu0,
            domains=len(records),
            vms=len(out),
            call_seconds=mono - t0,
            full=full,
            started_domains=started,
            started_call_seconds=t1 - mono,
        )
        return out

    def _hold(self, now: float) -> float:
        since = 0.0 if self._last_full is None else now - self._last_full
        return schedule.carry_hold(HOLD_SECONDS, self.full_every, since, self._full_period)

    def _advance(self, full: bool, mono: float) -> None:
        """Count a successful round (a failed call leaves the schedule where it was: retried)."""
        if full:
            if self._last_full is not None:
                self._full_period = mono - self._last_full
            self._last_full = mono
        self._index += 1

    def derive_round(
        self,
        records: Iterable[tuple[libvirt.virDomain, Mapping[str, Any]]],
        mono: float,
        wall: float,
        hold: float = HOLD_SECONDS,
    ) -> dict[str, VMStats]:
        out: dict[str, VMStats] = {}
        seen: set[str] = set()
        for dom, rec in records:
            uuid = dom.UUIDString()  # local: no RPC
            name = dom.name()
            dom_id = dom.ID()
            seen.add(uuid)
            info = self._domain_info(dom, uuid, name, dom_id)
            if info.ref is None:
                continue
            cur = parse_record(
                rec, uuid=uuid, domain=name, monotonic=mono, wall=wall, dom_id=dom_id, labels=info.labels
            )
            prev = self._prev.get(uuid)
            cur, carried = bridge_gaps(prev, cur, hold)
            stats = _show_carried(derive(prev, cur, info.ref), self._last.get(uuid), carried, cur)
            out[uuid] = self._last[uuid] = stats
            self._prev[uuid] = cur
        for gone in set(self._prev) - seen:
            del self._prev[gone]
            self._last.pop(gone, None)
        for gone in set(self._info) - seen:
            del self._info[gone]
        return out

    def forget(self) -> None:
        """Drop all baselines and caches (e.g. after reconnecting to libvirtd); the next round is full."""
        self._prev.clear()
        self._last.clear()
        self._info.clear()
        self._index = 0
        self._last_full = None
        self._full_period = 0.0


def _show_carried(stats: VMStats, last: VMStats | None, carried: set[str], cur: RawSample) -> VMStats:
    """Carried drives and vCPUs show the last round's figures: their counters were not read again,
    so there is no new rate (it comes at the next reading, over the whole interval)."""
    if last is None:
        return stats
    if carried:
        prev = {d.drive: d for d in last.disks}
        stats = replace(stats, disks=tuple(prev.get(d.drive, d) if d.drive in carried else d for d in stats.disks))
    if cur.vcpu_monotonic is not None and last.cpu.vcpus:
        stats = replace(stats, cpu=replace(stats.cpu, vcpus=last.cpu.vcpus))
    return stats
