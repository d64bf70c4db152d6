"""The sampling interval stretches when rounds get expensive, says so, and comes back (no libvirt)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from k3svirt_operator.stats import MetricsServer, StatsCollector
from k3svirt_operator.stats.pacing import Pace, initial, next_pace, stale_after
from prometheus_client.parser import text_string_to_metric_families
from test_stats_unit import Clock, FakeConn, FakeDomain, make_sampler, record


def test_cheap_rounds_keep_the_configured_interval() -> None:
    pace = initial(2.0)
    for _ in range(5):
        pace = next_pace(pace, 0.05, 0.02)
    assert pace.interval == 2.0 and not pace.stretched and pace.degraded is None


def test_an_expensive_round_stretches_at_once_and_says_why() -> None:
    pace = next_pace(initial(2.0), 0.64, 0.1)  # 32 % of 2 s
    assert pace.stretched and pace.interval == 6.5  # 0.64 / 10 % = 6.4, rounded up to 0.5 s
    assert "stretched from 2 s to 6.5 s" in (pace.degraded or "")
    assert "0.64 s" in (pace.degraded or "")


def test_operator_cpu_counts_when_it_exceeds_the_wall_time() -> None:
    assert next_pace(initial(2.0), 0.1, 0.5).interval == 5.0


def test_cost_decays_slowly_then_the_interval_returns() -> None:
    pace = next_pace(initial(2.0), 1.0)
    assert pace.interval == 10.0
    after_one = next_pace(pace, 0.01)
    assert after_one.stretched and after_one.interval < pace.interval  # one cheap round: no flip back
    for _ in range(30):
        pace = next_pace(pace, 0.01)
    assert pace == Pace(base=2.0, interval=2.0, cost=pace.cost) and not pace.stretched


def test_interval_is_capped() -> None:
    assert next_pace(initial(2.0), 100.0, max_interval=60.0).interval == 60.0


def test_stale_after_follows_a_stretched_interval() -> None:
    assert stale_after(initial(2.0), 5.0) == 5.0
    assert stale_after(next_pace(initial(2.0), 1.0), 5.0) == 25.0  # 2.5 rounds of 10 s


class SlowConn(FakeConn):
    """Each round takes `delay` seconds of the sampler's clock (libvirtd answering slowly)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock, self.delay = clock, 0.0

    def getAllDomainStats(self, stats: int, flags: int) -> list:  # noqa: N802
        self.clock.t += self.delay
        return super().getAllDomainStats(stats, flags)


def test_collector_stretches_and_shows_it_in_status_and_metrics() -> None:
    clock = Clock()
    conn = SlowConn(clock)
    d = FakeDomain("u1", "ns1_vm1", 1, '<vm namespace="ns1" name="vm1" uid="uid-9" generation="2"/>')
    conn.domains["u1"] = (d, record(1.0))
    coll = StatsCollector(lambda: conn, node_name="node-a", interval=2.0, sampler=make_sampler(conn, clock))
    coll.sample_once()
    assert coll.interval == 2.0 and coll.pacing_status() == {"statsIntervalSeconds": 2.0, "statsDegraded": None}

    conn.delay = 1.5  # a round now takes 1.5 s: 75 % of the interval
    coll.sample_once()
    assert coll.interval == 15.0
    status = coll.pacing_status()
    assert status["statsIntervalSeconds"] == 15.0 and "stretched from 2 s to 15 s" in str(status["statsDegraded"])
    assert coll.stale_after == pytest.approx(37.5)  # figures of a slow round are still served

    server = MetricsServer(coll, port=0, host="127.0.0.1")
    server.start()
    try:
        base = server.base_url("127.0.0.1")
        body = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        fams = {f.name: f.samples[0].value for f in text_string_to_metric_families(body) if f.samples}
        assert fams["k3svirt_stats_interval_seconds"] == 15.0
        assert fams["k3svirt_stats_interval_configured_seconds"] == 2.0
        assert fams["k3svirt_stats_interval_stretched"] == 1.0
        assert fams["k3svirt_stats_round_cost_seconds"] == pytest.approx(1.5)
        with pytest.raises(urllib.error.HTTPError) as e:  # no sampling thread here: unhealthy, but it says why
            urllib.request.urlopen(base + "/healthz", timeout=5)
        health = json.loads(e.value.read())
        assert health["intervalSeconds"] == 15.0 and "stretched" in health["statsDegraded"]
    finally:
        server.stop()

    conn.delay = 0.0
    for _ in range(30):
        coll.sample_once()
    assert coll.interval == 2.0 and coll.pacing_status()["statsDegraded"] is None


def test_fixed_interval_when_not_adaptive() -> None:
    clock = Clock()
    conn = SlowConn(clock)
    conn.delay = 5.0
    conn.domains["u1"] = (FakeDomain("u1", "ns1_vm1", 1, None), record(1.0))
    coll = StatsCollector(lambda: conn, interval=2.0, sampler=make_sampler(conn, clock), adaptive=False)
    coll.sample_once()
    assert coll.interval == 2.0


def test_first_round_identity_lookups_do_not_stretch() -> None:
    """A first round looks up every domain's identity once (metadata, XMLDesc): not a round's cost."""
    clock = Clock()

    class SlowLookup(FakeDomain):
        def metadata(self, kind: int, uri: str) -> str:
            clock.t += 1.0
            return super().metadata(kind, uri)

    conn = FakeConn()
    for i in range(5):
        d = SlowLookup(f"u{i}", f"ns1_vm{i}", i + 1, f'<vm namespace="ns1" name="vm{i}" uid="x{i}" generation="1"/>')
        conn.domains[d.uuid] = (d, record(1.0))
    coll = StatsCollector(lambda: conn, interval=2.0, sampler=make_sampler(conn, clock))
    coll.sample_once()
    assert coll.sampler.last_round is not None and coll.sampler.last_round.duration_seconds >= 5.0
    assert coll.interval == 2.0 and coll.pacing_status()["statsDegraded"] is None
