"""The round schedule: cheap rounds, a full one every N, new and restarted domains read in full, and
the figures carried in between (no libvirt)."""

from __future__ import annotations

import json

import libvirt
import pytest
from k3svirt_operator.config import Settings
from k3svirt_operator.stats import StatsCollector, make_registry
from k3svirt_operator.stats.model import RawSample
from k3svirt_operator.stats.pacing import cycle_cost, initial, next_pace
from k3svirt_operator.stats.sampler import STATS_FLAGS, Sampler
from k3svirt_operator.stats.schedule import CHEAP_FLAGS, carry_hold, is_full, needs_full, round_flags
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_stats_unit import Clock, FakeConn, FakeDomain, record

QMP_GROUPS = libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_BLOCK | libvirt.VIR_DOMAIN_STATS_VCPU


def cheap(rec: dict) -> dict:
    """What libvirt returns for STATE | CPU_TOTAL | INTERFACE: no balloon, block or vcpu keys."""
    return {k: v for k, v in rec.items() if not k.startswith(("balloon.", "block.", "vcpu."))}


class ScheduledConn(FakeConn):
    """Answers with the groups asked for, and records the flags of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.flags: list[int] = []
        self.listed: list[list[str]] = []

    def _answer(self, stats: int, items: list[tuple[FakeDomain, dict]]) -> list:
        self.flags.append(stats)
        return [(d, rec if stats & QMP_GROUPS else cheap(rec)) for d, rec in items]

    def getAllDomainStats(self, stats: int, flags: int) -> list:  # noqa: N802
        super().getAllDomainStats(stats, flags)
        return self._answer(stats, list(self.domains.values()))

    def domainListGetStats(self, doms: list, stats: int, flags: int) -> list:  # noqa: N802
        self.listed.append([d.UUIDString() for d in doms])
        return self._answer(stats, [self.domains[d.UUIDString()] for d in doms])


def sampler(conn: FakeConn, clock: Clock, full_every: int = 5) -> Sampler:
    return Sampler(lambda: conn, clock=clock, wall_clock=lambda: 1_700_000_000 + clock.t, full_every=full_every)


# --------------------------------------------------------------------------- pure schedule


def test_round_flags_full_every_n() -> None:
    kinds = [is_full(i, 5) for i in range(11)]
    assert kinds == [True, False, False, False, False, True, False, False, False, False, True]
    assert round_flags(0, 5, STATS_FLAGS) == STATS_FLAGS
    assert round_flags(3, 5, STATS_FLAGS) == CHEAP_FLAGS
    assert not CHEAP_FLAGS & QMP_GROUPS  # cheap rounds ask QEMU nothing
    assert all(is_full(i, 1) for i in range(4))  # 1: every round full (the old behaviour)


def test_needs_full_for_new_and_restarted_domains() -> None:
    prev = RawSample(uuid="u", domain="d", monotonic=0.0, wall=0.0, dom_id=4)
    assert needs_full(None, 4)
    assert needs_full(prev, 5)
    assert not needs_full(prev, 4)


def test_carry_hold_covers_the_full_period() -> None:
    assert carry_hold(5.0, 1, 2.0, 2.0) == 5.0  # every round full: NOWAIT gaps only
    assert carry_hold(5.0, 5, 8.0, 10.0) == 15.0  # a reading of the last full round is 8 s old: kept
    assert carry_hold(5.0, 5, 12.0, 10.0) == 17.0  # the interval stretched since: still kept


# --------------------------------------------------------------------------- sampler


def test_sampler_asks_cheap_groups_between_full_rounds() -> None:
    conn, clock = ScheduledConn(), Clock()
    d = FakeDomain("u1", "ns_vm", 1, None)
    conn.domains["u1"] = (d, record(1.0, vcpu_s=(1.0,)))
    s = sampler(conn, clock)
    for i in range(11):
        conn.domains["u1"] = (d, record(1.0 + i, vcpu_s=(1.0 + i,), rd=1000 * i))
        s.sample()
        assert s.last_round is not None and s.last_round.full == (i % 5 == 0)
        clock.t += 2
    assert conn.flags == [STATS_FLAGS if i % 5 == 0 else CHEAP_FLAGS for i in range(11)]
    assert conn.listed == []  # the domain had its full first round: no extra reads


def test_cheap_rounds_carry_memory_disks_and_vcpus_with_their_read_time() -> None:
    conn, clock = ScheduledConn(), Clock()
    d = FakeDomain("u1", "ns_vm", 1, None)
    s = sampler(conn, clock)
    rd = 0
    for i in range(6):  # full (t=100), 4 cheap, full (t=110)
        conn.domains["u1"] = (d, record(1.0 + i, vcpu_s=(1.0 + 0.5 * i,), rd=rd, rx=100 * i))
        st = s.sample()["u1"]
        if i == 0:
            first = st
        elif i < 5:  # cheap: every QMP-bound figure is the full round's, and says when it was read
            assert st.memory == first.memory and st.memory.resident_bytes == 200000 * 1024
            assert st.disks == first.disks and st.disks[0].sampled_at == 1_700_000_100
            assert st.cpu.vcpus == first.cpu.vcpus
            assert st.memory_sampled_at == st.vcpus_sampled_at == 1_700_000_100
            assert st.sampled_at == 1_700_000_100 + 2 * i
            assert st.cpu.usage_percent == pytest.approx(50.0)  # cheap groups: fresh every round
            assert st.nets[0].rate("rx_bytes") == pytest.approx(50.0)
            js = st.to_dict()
            assert js["memory"]["sampledAt"] == js["disks"][0]["sampledAt"] == "2023-11-14T22:15:00.000Z"
            assert js["sampledAt"] != js["memory"]["sampledAt"]
            json.dumps(js)
        clock.t += 2
        rd += 5000  # 2500 bytes/s
    # the second full round: rates over the 10 s between the two block (and vcpu) readings
    assert st.disks[0].read_bytes_per_sec == pytest.approx(25000 / 10)
    assert st.disks[0].sampled_at == st.memory_sampled_at == st.sampled_at == 1_700_000_110
    assert st.cpu.vcpus[0].usage_percent == pytest.approx(25.0)  # 2.5 s over 10 s
    assert st.interval_seconds == pytest.approx(2.0)


def test_disk_rate_over_two_block_readings_five_rounds_apart() -> None:
    """Pure: the carried counters keep their read time; the rate spans it, never doubled."""
    from k3svirt_operator.stats.sampler import bridge_gaps, derive
    from test_stats_unit import raw

    full0 = raw(0, record(1.0, rd=0, wr=0))
    prev = full0
    for t in (2, 4, 6, 8):
        cur, carried = bridge_gaps(prev, raw(t, cheap(record(1.0 + t))), hold=carry_hold(5.0, 5, t, 0.0))
        assert carried == {"vda"} and cur.disks[0].monotonic == 0
        prev = cur
    full1 = raw(10, record(10.0, rd=30000, wr=10000))
    st = derive(prev, full1)
    assert st.disks[0].read_bytes_per_sec == pytest.approx(3000)
    assert st.disks[0].write_bytes_per_sec == pytest.approx(1000)
    assert st.cpu.usage_percent == pytest.approx(50.0)  # cpu: the 2 s since the last cheap round


def test_new_domain_in_a_cheap_round_is_read_in_full_at_once() -> None:
    conn, clock = ScheduledConn(), Clock()
    d1 = FakeDomain("u1", "ns_vm1", 1, None)
    conn.domains["u1"] = (d1, record(1.0))
    s = sampler(conn, clock)
    s.sample()
    clock.t += 2
    d2 = FakeDomain("u2", "ns_vm2", 2, None)
    conn.domains["u2"] = (d2, record(1.0, vcpu_s=(1.0,), rd=7))
    out = s.sample()  # round 1: cheap
    assert conn.flags[-2:] == [CHEAP_FLAGS, STATS_FLAGS] and conn.listed == [["u2"]]
    assert s.last_round is not None and not s.last_round.full and s.last_round.started_domains == 1
    assert out["u2"].memory.resident_bytes == 200000 * 1024 and out["u2"].disks[0].read_bytes_total == 7
    assert out["u2"].cpu.vcpus and out["u1"].memory.resident_bytes == 200000 * 1024
    clock.t += 2
    s.sample()  # round 2: cheap, nobody new
    assert conn.listed == [["u2"]]


def test_restarted_domain_is_read_in_full_and_has_no_stale_baseline() -> None:
    conn, clock = ScheduledConn(), Clock()
    d = FakeDomain("u1", "ns_vm", 1, None)
    conn.domains["u1"] = (d, record(5.0, rd=9000))
    s = sampler(conn, clock)
    s.sample()
    clock.t += 2
    d.dom_id = 2  # started again between two rounds
    conn.domains["u1"] = (d, record(0.5, rd=100))
    st = s.sample()["u1"]
    assert conn.listed == [["u1"]]
    assert st.disks[0].read_bytes_total == 100 and st.disks[0].read_bytes_per_sec is None
    assert st.cpu.usage_percent is None and st.dom_id == 2
    clock.t += 2
    conn.domains["u1"] = (d, record(1.5, rd=2100))
    st = s.sample()["u1"]  # cheap: the disk counters are the restart round's
    assert st.disks[0].read_bytes_total == 100 and st.cpu.usage_percent == pytest.approx(50.0)


def test_unmanaged_domains_are_not_re_read_every_cheap_round() -> None:
    conn, clock = ScheduledConn(), Clock()
    conn.domains["x"] = (FakeDomain("x", "not-k3svirt", 1, None), record(1.0))
    s = sampler(conn, clock)
    for _ in range(4):
        assert s.sample() == {}
        clock.t += 2
    assert conn.listed == []


def test_forget_makes_the_next_round_full() -> None:
    conn, clock = ScheduledConn(), Clock()
    conn.domains["u1"] = (FakeDomain("u1", "ns_vm", 1, None), record(1.0))
    s = sampler(conn, clock)
    s.sample()
    s.sample()
    s.forget()
    s.sample()
    assert conn.flags == [STATS_FLAGS, CHEAP_FLAGS, STATS_FLAGS]


def test_failed_full_round_is_retried_full() -> None:
    conn, clock = ScheduledConn(), Clock()
    conn.domains["u1"] = (FakeDomain("u1", "ns_vm", 1, None), record(1.0))
    s = sampler(conn, clock)
    conn.fail = True
    with pytest.raises(libvirt.libvirtError):
        s.sample()
    conn.fail = False
    s.sample()
    assert s.last_round is not None and s.last_round.full


def test_carried_figures_expire_when_full_rounds_stop_reading_them() -> None:
    """A full round NOWAIT skipped (busy domain) is bridged for HOLD_SECONDS past it, then dropped."""
    from test_stats_unit import _skipped

    conn, clock = ScheduledConn(), Clock()
    d = FakeDomain("u1", "ns_vm", 1, None)
    s = sampler(conn, clock)
    conn.domains["u1"] = (d, record(1.0))
    s.sample()  # t=100 full
    conn.domains["u1"] = (d, _skipped(record(1.0)))
    seen = []
    for _ in range(9):  # t=102..118: the full round at 110 is skipped
        clock.t += 2
        seen.append(s.sample()["u1"].memory.resident_bytes is not None)
    assert seen == [True] * 7 + [False] * 2  # kept to 114 (110 + 5 s hold), gone at 116


# --------------------------------------------------------------------------- pacing and collector


def test_cycle_cost_is_the_average_per_round() -> None:
    assert cycle_cost(1.9, 0.3, 5) == pytest.approx((1.9 + 4 * 0.3) / 5)
    assert cycle_cost(1.9, 0.3, 1) == 1.9


def test_one_expensive_full_round_does_not_stretch() -> None:
    pace = initial(2.0, full_every=5)
    for i in range(10):
        pace = next_pace(pace, 0.5 if i % 5 == 0 else 0.05, full=i % 5 == 0)
        assert not pace.stretched  # (0.5 + 4 x 0.05) / 5 = 0.14 s: 7 % of 2 s
    assert pace.cost == pytest.approx(0.14)
    every_round_full = initial(2.0)
    assert next_pace(every_round_full, 0.5).interval == 5.0


def test_an_expensive_cycle_still_stretches() -> None:
    pace = initial(2.0, full_every=5)
    for i in range(5):
        pace = next_pace(pace, 1.9 if i % 5 == 0 else 0.64, full=i % 5 == 0)
    assert pace.cost == pytest.approx((1.9 + 4 * 0.64) / 5)
    assert pace.interval == 9.0 and "stretched from 2 s to 9 s" in (pace.degraded or "")
    assert "rounds take on average 0.89 s" in (pace.degraded or "")


def test_collector_default_schedule_and_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = ScheduledConn()
    coll = StatsCollector(lambda: conn, node_name="n", interval=2.0)  # type: ignore[arg-type,return-value]
    assert coll.sampler.full_every == 5 and coll.pace.full_every == 5 and coll.full_period == 10.0
    monkeypatch.setenv("K3SVIRT_STATS_FULL_EVERY", "3")
    assert Settings.from_env().stats_full_every == 3
    monkeypatch.setenv("K3SVIRT_STATS_FULL_EVERY", "junk")
    assert Settings.from_env().stats_full_every == 5
    monkeypatch.delenv("K3SVIRT_STATS_FULL_EVERY")
    coll = StatsCollector(lambda: conn, interval=2.0, full_every=Settings.from_env().stats_full_every)  # type: ignore[arg-type,return-value]
    conn.domains["u1"] = (FakeDomain("u1", "ns_vm", 1, None), record(1.0))
    for _ in range(6):
        coll.sample_once()
    assert conn.flags == [STATS_FLAGS] + [CHEAP_FLAGS] * 4 + [STATS_FLAGS]


def test_metrics_say_which_round_and_how_old_the_full_figures_may_be() -> None:
    conn, clock = ScheduledConn(), Clock()
    conn.domains["u1"] = (FakeDomain("u1", "ns_vm", 1, None), record(1.0, rd=10))
    coll = StatsCollector(lambda: conn, interval=2.0, sampler=sampler(conn, clock))  # type: ignore[arg-type,return-value]
    registry = make_registry(coll)

    def scrape() -> dict[tuple[str, str], float]:
        text = generate_latest(registry).decode()
        return {
            (s.name, s.labels.get("drive", "")): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }

    coll.sample_once()
    first = scrape()
    assert first[("k3svirt_stats_round_full", "")] == 1.0
    assert first[("k3svirt_stats_full_period_seconds", "")] == 10.0
    clock.t += 2
    coll.sample_once()
    second = scrape()
    assert second[("k3svirt_stats_round_full", "")] == 0.0
    # every figure is still served between full rounds (carried): disks too
    assert second[("k3svirt_vmi_storage_read_traffic_bytes_total", "vda")] == 10
