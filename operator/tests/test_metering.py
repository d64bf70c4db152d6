"""Usage metering bookkeeping (metering.py): buckets add up, restarts neither lose nor double usage,
and wall clock jumps move no usage into completed buckets or invent any."""

from __future__ import annotations

import copy

import pytest
from k3svirt_operator.metering import FIELDS, GIB, Reading, VMMeter, parse_time, usage_between

B = 60  # seconds per bucket in these tests
T0 = 1_800_000_000.0 - (1_800_000_000 % B)  # a bucket boundary


def reading(mono: float, wall: float, cpu: float, *, dom: int = 1, boot: str = "b1", rx: float = 0.0,
            mem: float | None = GIB, disk: float | None = 10**9) -> Reading:  # fmt: skip
    return Reading(boot, dom, mono, wall, cpu, rx, 0.0, mem, mem, disk)


def meter() -> VMMeter:
    return VMMeter("ns", "vm", "uid-1", B, retention=1000)


def total(m: VMMeter, key: str) -> float:
    return m.totals()[key]


def run(m: VMMeter, seconds: int, *, start_mono: float = 100.0, start_wall: float = T0, cpu_rate: float = 0.5,
        cpu0: float = 0.0, step: float = 1.0) -> Reading:  # fmt: skip
    r = None
    for i in range(int(seconds / step) + 1):
        r = reading(start_mono + i * step, start_wall + i * step, cpu0 + cpu_rate * i * step)
        m.observe(r)
    assert r is not None
    return r


def test_buckets_add_up_to_the_counters_and_the_clock():
    m = meter()
    last = run(m, 300)
    assert len(m.completed) == 5  # 0..299 s completed, the open one started at 300 s
    assert total(m, "cpuSeconds") == pytest.approx(last.cpu_seconds)
    # 300 s of 1 GiB = 300/3600 GiB-hours; 1 GB disk likewise
    assert total(m, "memoryAllocatedGiBHours") == pytest.approx(300 / 3600)
    assert total(m, "diskGBHours") == pytest.approx(300 / 3600)
    # 60 s at half a CPU each: usage is shared out by wall time, [start, start + 60 s)
    assert [b["cpuSeconds"] for b in m.completed] == pytest.approx([30.0] * 5)
    starts = [parse_time(b["start"]) for b in m.completed]
    assert starts == [T0 + i * B for i in range(5)]


def test_restart_from_the_checkpoint_loses_and_doubles_nothing():
    m = meter()
    run(m, 90)  # one bucket completed, 30 s in the open one
    status = copy.deepcopy(m.to_status("node-a"))
    # The operator keeps running 20 s past its checkpoint, then dies; those 20 s are not persisted.
    run(m, 20, start_mono=191.0, start_wall=T0 + 91, cpu0=45.5)
    # A new operator restores the checkpoint and sees the same domain 40 s after the checkpoint.
    again = VMMeter.from_status("ns", status, retention=1000)
    after = run(again, 60, start_mono=230.0, start_wall=T0 + 130, cpu0=65.0)
    assert total(again, "cpuSeconds") == pytest.approx(after.cpu_seconds)  # counted once, nothing lost
    assert total(again, "memoryAllocatedGiBHours") == pytest.approx((after.monotonic - 100.0) / 3600)
    starts = [b["start"] for b in again.completed]
    assert len(starts) == len(set(starts))  # no bucket twice


def test_a_new_domain_counts_from_zero_and_another_boot_too():
    prev = reading(10, T0, 500.0)
    assert usage_between(prev, reading(11, T0 + 1, 501.0))["cpuSeconds"] == pytest.approx(1.0)
    assert usage_between(prev, reading(11, T0 + 1, 3.0, dom=2))["cpuSeconds"] == pytest.approx(3.0)
    assert usage_between(prev, reading(11, T0 + 1, 600.0, boot="b2"))["cpuSeconds"] == pytest.approx(600.0)
    # another domain: no time integrated (its start is unknown), counters from zero
    assert usage_between(prev, reading(11, T0 + 1, 3.0, dom=2))["memoryAllocatedGiBHours"] == 0.0
    # a counter that went down without a new domain id (reset): the new value is the usage
    assert usage_between(prev, reading(11, T0 + 1, 2.0))["cpuSeconds"] == pytest.approx(2.0)


def test_clock_jump_back_never_reopens_a_completed_bucket():
    m = meter()
    run(m, 130)  # buckets T0, T0+60 completed; open T0+120
    completed = copy.deepcopy(m.completed)
    # The wall clock jumps back 10 minutes; the monotonic clock runs on.
    last = run(m, 30, start_mono=231.0, start_wall=T0 - 600, cpu0=65.5)
    assert m.completed == completed  # untouched
    assert parse_time(m.to_status("n")["open"]["start"]) == T0 + 120  # usage went to the open bucket
    assert total(m, "cpuSeconds") == pytest.approx(last.cpu_seconds)


def test_clock_jump_back_before_the_open_bucket_exists_starts_after_the_last_completed():
    m = meter()
    run(m, 60)
    m.tick(T0 + 10_000)  # the open bucket completes (wall far ahead), none open now
    last_start = parse_time(m.completed[-1]["start"])
    m.observe(reading(500.0, T0 - 3600, 40.0))  # the clock is back an hour
    assert parse_time(m.to_status("n")["open"]["start"]) == last_start + B


def test_clock_jump_forward_invents_no_usage():
    m = meter()
    run(m, 59)
    before = total(m, "memoryAllocatedGiBHours")
    m.observe(reading(160.0, T0 + 5 * 3600, 30.0))  # one second later by the monotonic clock
    assert total(m, "memoryAllocatedGiBHours") - before == pytest.approx(1 / 3600)
    assert [parse_time(b["start"]) for b in m.completed] == [T0]  # the skipped hours stay empty


def test_missing_gauges_hold_the_previous_value():
    m = meter()
    m.observe(reading(100.0, T0, 0.0))
    m.observe(reading(101.0, T0 + 1, 0.5, mem=None, disk=None))  # libvirt skipped balloon and block
    m.observe(reading(102.0, T0 + 2, 1.0))
    assert total(m, "diskGBHours") == pytest.approx(2 / 3600)
    assert total(m, "memoryUsedGiBHours") == pytest.approx(2 / 3600)


def test_retention_bounds_the_completed_buckets():
    m = VMMeter("ns", "vm", "uid", B, retention=3)
    run(m, 600, step=5.0)
    assert len(m.completed) == 3
    assert parse_time(m.completed[-1]["start"]) == T0 + 9 * B  # the newest kept, the oldest dropped


def test_status_round_trip_and_hostile_checkpoints():
    m = meter()
    run(m, 70)
    back = VMMeter.from_status("ns", m.to_status("n"), retention=1000)
    assert back.totals() == pytest.approx(m.totals())
    assert back.baseline == m.baseline
    broken = {**m.to_status("n"), "baseline": {"bootID": "b1", "cpuSeconds": "lots"}}
    assert VMMeter.from_status("ns", broken, retention=1000).baseline is None
    assert VMMeter.from_status("ns", {"buckets": [1, "x", {"no": "start"}]}, retention=5).completed == []
    assert set(FIELDS) <= set(m.to_status("n")["open"])


def test_a_gap_across_bucket_ends_is_shared_out_by_wall_time():
    m = meter()
    run(m, 50)  # open bucket T0, readings up to T0+50 (cpu 25)
    # The operator was away 100 s: the next reading, same domain, covers [T0+50, T0+150).
    m.observe(reading(250.0, T0 + 150, 75.0))
    assert [parse_time(b["start"]) for b in m.completed] == [T0, T0 + 60]  # the bucket in between too
    assert [b["cpuSeconds"] for b in m.completed] == pytest.approx([25.0 + 5.0, 30.0])
    assert m.open["cpuSeconds"] == pytest.approx(15.0)
    assert total(m, "memoryAllocatedGiBHours") == pytest.approx(150 / 3600)
    # After a clock jump nothing is shared out: wall 1 h ahead, 1 s by the monotonic clock.
    m.observe(reading(251.0, T0 + 3750, 75.5))
    assert [b["cpuSeconds"] for b in m.completed][-1] == pytest.approx(15.0)
    assert m.open["cpuSeconds"] == pytest.approx(0.5)


def test_a_vm_unseen_for_a_while_keeps_consecutive_buckets():
    m = meter()
    run(m, 50)
    m.tick(T0 + 70)  # the next operator's first rounds do not list the VM yet: its bucket completes
    assert m.open_start is None
    m.observe(reading(190.0, T0 + 90, 45.0))  # then it is seen again, same domain, 40 s later
    assert [parse_time(b["start"]) for b in m.completed] == [T0]
    assert parse_time(m.to_status("n")["open"]["start"]) == T0 + 60  # not T0 + 90's own bucket only
    assert total(m, "cpuSeconds") == pytest.approx(45.0)


def test_a_restored_checkpoint_keeps_its_wall_time_to_the_millisecond():
    # Readings every second at .7 past the second; the operator restarts after T0+50.7 and next reads
    # at T0+62.7: the 12 s gap is shared out by wall time, 9.3 s of it to the bucket T0, which then
    # holds exactly 59.3 s of memory (from its first reading at T0+0.7). With the checkpoint's wall
    # time cut to whole seconds (T0+50) it got 10/12.7 of the gap: 9.45 s.
    m = meter()
    run(m, 50, start_wall=T0 + 0.7, start_mono=100.7)
    status = m.to_status("n")
    assert status["baseline"]["wall"].endswith(".700Z")
    again = VMMeter.from_status("ns", status, retention=1000)
    assert again.baseline is not None and again.baseline.wall == pytest.approx(T0 + 50.7, abs=1e-6)
    again.observe(reading(162.7, T0 + 62.7, 0.0))
    first = again.completed[0]
    assert first["memoryAllocatedGiBHours"] * 3600 == pytest.approx(59.3, abs=1e-6)
    assert again.open["memoryAllocatedGiBHours"] * 3600 == pytest.approx(2.7, abs=1e-6)
    # Whole seconds (older checkpoints) still parse; garbage does not.
    assert parse_time("2026-12-02T03:00:00Z") == parse_time("2026-12-02T03:00:00.000Z")
    for bad in ("2026-12-02T03:00:00", "2026-12-02T03:00:00.x5Z", "2026-12-02T03:00:00.1234567890Z"):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_memory_used_is_the_guests_figure_once_reported_and_held_through_rounds_without_it():
    # Booting: no guest figure yet, QEMU's RSS (200 MiB) stands in; then the guest reports 20 MiB; a
    # round without the guest's figure (NOWAIT, a slow guest) holds 20 MiB instead of going back to RSS.
    mib, m = 1024**2, meter()
    rss, guest = 200 * mib, 20 * mib

    def r(t: float, used: float | None) -> Reading:
        return Reading("b1", 1, 100.0 + t, T0 + t, 0.0, 0.0, 0.0, GIB, used, 10**9, memory_rss_bytes=rss)

    for t, used in ((0, None), (10, guest), (20, None), (30, None), (40, guest)):
        m.observe(r(t, used))
    assert m.open["memoryUsedGiBHours"] * 3600 / 10 == pytest.approx((rss + 3 * guest) / GIB)
    back = VMMeter.from_status("ns", m.to_status("n"), retention=1000)
    assert back.baseline is not None and back.baseline.memory_rss_bytes == rss
