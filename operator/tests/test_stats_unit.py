"""Pure unit tests of the stats package (no libvirt daemon needed)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import libvirt
import pytest
from k3svirt_operator.config import Settings
from k3svirt_operator.stats import MetricsServer, Sampler, StatsCollector, derive, parse_record, summarize
from k3svirt_operator.stats.model import RawSample, VMRef
from k3svirt_operator.stats.sampler import device_labels, parse_domain_name, parse_vm_metadata
from prometheus_client.parser import text_string_to_metric_families

REF = VMRef("default", "vm1", "uid-1", 3)


def record(
    cpu_s: float,
    *,
    vcpu_s: tuple[float, ...] = (),
    rd: int = 0,
    wr: int = 0,
    rdq: int = 0,
    wrq: int = 0,
    rx: int = 0,
    tx: int = 0,
    rxp: int = 0,
    txp: int = 0,
    balloon_guest: bool = True,
    state: int = 1,
) -> dict:
    rec = {
        "state.state": state,
        "state.reason": 1,
        "cpu.time": int(cpu_s * 1e9),
        "cpu.user": int(cpu_s * 0.8e9),
        "cpu.system": int(cpu_s * 0.2e9),
        "balloon.current": 98304,
        "balloon.maximum": 98304,
        "balloon.rss": 200000,
        "vcpu.current": len(vcpu_s),
        "vcpu.maximum": len(vcpu_s),
        "block.count": 2,
        "block.0.name": "vda",
        "block.0.rd.bytes": rd,
        "block.0.wr.bytes": wr,
        "block.0.rd.reqs": rdq,
        "block.0.wr.reqs": wrq,
        "block.0.rd.times": 5,
        "block.0.wr.times": 7,
        "block.0.fl.reqs": 1,
        "block.0.fl.times": 9,
        "block.0.capacity": 16 << 20,
        "block.1.name": "sda",
        "block.1.path": "",  # empty cdrom: no counters
        "net.count": 1,
        "net.0.name": "vnet3",
        "net.0.rx.bytes": rx,
        "net.0.rx.pkts": rxp,
        "net.0.rx.errs": 0,
        "net.0.rx.drop": 1,
        "net.0.tx.bytes": tx,
        "net.0.tx.pkts": txp,
        "net.0.tx.errs": 0,
        "net.0.tx.drop": 0,
    }
    for i, t in enumerate(vcpu_s):
        rec[f"vcpu.{i}.state"] = 1
        rec[f"vcpu.{i}.time"] = int(t * 1e9)
    if balloon_guest:
        rec.update(
            {
                "balloon.available": 62012,
                "balloon.unused": 33400,
                "balloon.usable": 39928,
                "balloon.major_fault": 2,
                "balloon.minor_fault": 5778,
                "balloon.swap_in": 0,
            }
        )
    return rec


def raw(t: float, rec: dict, dom_id: int = 5, uuid: str = "u-1", labels: dict | None = None) -> RawSample:
    return parse_record(
        rec, uuid=uuid, domain="default_vm1", monotonic=t, wall=1_700_000_000 + t, dom_id=dom_id, labels=labels
    )


def test_parse_record_fields() -> None:
    s = raw(0, record(1.5, vcpu_s=(1.0, 0.25), rd=10, wr=20, rdq=1, wrq=2, rx=30, tx=40))
    assert s.cpu_time_ns == 1_500_000_000
    assert s.vcpu_times_ns == {0: 1_000_000_000, 1: 250_000_000}
    assert [d.drive for d in s.disks] == ["vda"]  # the empty cdrom is skipped
    assert s.disks[0].rd_bytes == 10 and s.disks[0].wr_reqs == 2
    assert s.nets[0].interface == "vnet3" and s.nets[0].rx_bytes == 30 and s.nets[0].rx_drop == 1
    assert s.balloon["rss"] == 200000


def test_derive_first_sample_has_totals_but_no_rates() -> None:
    st = derive(None, raw(0, record(2.0, vcpu_s=(2.0,), rd=100)), REF)
    assert st.cpu.usage_seconds_total == pytest.approx(2.0)
    assert st.cpu.usage_percent is None
    assert st.cpu.vcpus[0].usage_percent is None
    assert st.disks[0].read_bytes_total == 100 and st.disks[0].read_bytes_per_sec is None
    assert st.nets[0].rate("rx_bytes") is None
    assert st.interval_seconds is None
    assert st.state == "running"
    assert st.ref == REF


def test_derive_rates() -> None:
    a = raw(10.0, record(1.0, vcpu_s=(0.5, 0.5), rd=1000, wr=0, rdq=10, wrq=0, rx=500, tx=100, rxp=5, txp=1))
    b = raw(12.0, record(2.5, vcpu_s=(1.5, 0.9), rd=5000, wr=8192, rdq=30, wrq=4, rx=2500, tx=300, rxp=25, txp=5))
    st = derive(a, b, REF)
    assert st.interval_seconds == pytest.approx(2.0)
    assert st.cpu.usage_percent == pytest.approx(75.0)  # 1.5 s CPU over 2 s = 75 % of one host CPU
    assert [v.usage_percent for v in st.cpu.vcpus] == [pytest.approx(50.0), pytest.approx(20.0)]
    d = st.disks[0]
    assert d.read_bytes_per_sec == pytest.approx(2000)
    assert d.write_bytes_per_sec == pytest.approx(4096)
    assert d.read_iops == pytest.approx(10) and d.write_iops == pytest.approx(2)
    n = st.nets[0]
    assert n.rate("rx_bytes") == pytest.approx(1000) and n.rate("tx_bytes") == pytest.approx(100)
    assert n.rate("rx_pkts") == pytest.approx(10) and n.rate("tx_pkts") == pytest.approx(2)
    assert n.rate("rx_drop") == pytest.approx(0)
    assert st.memory.resident_bytes == 200000 * 1024
    assert st.memory.available_bytes == 62012 * 1024
    assert st.memory.used_bytes == (62012 - 39928) * 1024
    assert st.sampled_at == pytest.approx(1_700_000_012.0)


def test_derive_multi_vcpu_can_exceed_100_percent() -> None:
    a = raw(0.0, record(0.0, vcpu_s=(0.0, 0.0)))
    b = raw(1.0, record(2.0, vcpu_s=(1.0, 1.0)))
    assert derive(a, b, REF).cpu.usage_percent == pytest.approx(200.0)


def test_derive_counter_reset_cpu_backwards_resets_baseline() -> None:
    a = raw(0.0, record(100.0, vcpu_s=(100.0,), rd=10_000, rx=10_000))
    b = raw(2.0, record(0.5, vcpu_s=(0.4,), rd=50, rx=60))  # restarted, same domain id (worst case)
    st = derive(a, b, REF)
    assert st.cpu.usage_percent is None and st.cpu.vcpus[0].usage_percent is None
    assert st.disks[0].read_bytes_per_sec is None
    assert st.nets[0].rate("rx_bytes") is None
    assert st.cpu.usage_seconds_total == pytest.approx(0.5)
    # the next round derives from the new baseline
    c = raw(4.0, record(1.5, vcpu_s=(1.4,), rd=2050, rx=1060))
    st2 = derive(b, c, REF)
    assert st2.cpu.usage_percent == pytest.approx(50.0)
    assert st2.disks[0].read_bytes_per_sec == pytest.approx(1000)


def test_derive_new_domain_id_resets_even_if_counters_grew() -> None:
    a = raw(0.0, record(1.0, rd=10), dom_id=5)
    b = raw(2.0, record(3.0, rd=20), dom_id=6)
    st = derive(a, b, REF)
    assert st.cpu.usage_percent is None and st.disks[0].read_bytes_per_sec is None


def test_derive_single_counter_backwards_only_nulls_that_rate() -> None:
    a = raw(0.0, record(1.0, rd=1000, wr=1000, rx=100))
    b = raw(1.0, record(1.5, rd=10, wr=3000, rx=300))  # disk re-plugged: rd counter restarted
    st = derive(a, b, REF)
    assert st.disks[0].read_bytes_per_sec is None
    assert st.disks[0].write_bytes_per_sec == pytest.approx(2000)
    assert st.cpu.usage_percent == pytest.approx(50.0)
    assert st.nets[0].rate("rx_bytes") == pytest.approx(200)


def test_derive_non_positive_interval_and_other_uuid() -> None:
    a = raw(5.0, record(1.0))
    assert derive(a, raw(5.0, record(2.0)), REF).cpu.usage_percent is None
    assert derive(a, raw(4.0, record(2.0)), REF).cpu.usage_percent is None
    assert derive(a, raw(7.0, record(2.0), uuid="other"), REF).cpu.usage_percent is None


def test_derive_without_guest_balloon() -> None:
    st = derive(None, raw(0, record(1.0, balloon_guest=False)), REF)
    m = st.memory
    assert m.available_bytes is None and m.unused_bytes is None and m.usable_bytes is None
    assert m.used_bytes is None
    assert m.resident_bytes == 200000 * 1024 and m.domain_bytes == 98304 * 1024


def test_derive_device_added_between_rounds() -> None:
    a = raw(0.0, {**record(1.0), "net.count": 0})
    b = raw(1.0, record(2.0, rx=100))
    st = derive(a, b, REF)
    assert st.nets[0].rate("rx_bytes") is None and st.nets[0].total("rx_bytes") == 100


def test_identity_parsing() -> None:
    ref = parse_vm_metadata('<vm namespace="ns1" name="web" uid="abc" generation="4"/>')
    assert ref == VMRef("ns1", "web", "abc", 4)
    assert parse_vm_metadata("<vm/>") is None
    assert parse_vm_metadata("not xml") is None
    assert parse_domain_name("team-a_db-0") == VMRef("team-a", "db-0")
    assert parse_domain_name("k3svirt-unittest-stats-x") is None
    assert parse_domain_name("_x") is None


def test_device_labels_uses_user_aliases() -> None:
    xml = """<domain><devices>
      <disk type='file'><target dev='vda' bus='virtio'/><alias name='ua-rootdisk'/></disk>
      <disk type='file'><target dev='vdb' bus='virtio'/><alias name='virtio-disk1'/></disk>
      <interface type='network'><target dev='vnet3'/><alias name='ua-default'/></interface>
    </devices></domain>"""
    assert device_labels(xml) == {"vda": "rootdisk", "vnet3": "default"}
    s = raw(0, record(1.0, rx=5), labels=device_labels(xml))
    assert s.disks[0].drive == "rootdisk" and s.nets[0].interface == "default"


def test_summary() -> None:
    assert summarize(None) is None
    a = raw(0.0, record(1.0, rd=0, wr=0, rx=0, tx=0))
    b = raw(2.0, record(2.0, rd=2000, wr=4000, rdq=2, wrq=4, rx=1000, tx=3000))
    s = summarize(derive(a, b, REF))
    assert s == {
        "cpuPercent": 50.0,
        "memoryUsedBytes": (62012 - 39928) * 1024,
        "memoryTotalBytes": 62012 * 1024,
        "diskReadBytesPerSec": 1000,
        "diskWriteBytesPerSec": 2000,
        "diskReadIOPS": 1.0,
        "diskWriteIOPS": 2.0,
        "networkRxBytesPerSec": 500,
        "networkTxBytesPerSec": 1500,
        "updatedAt": "2023-11-14T22:13:22.000Z",
    }
    first = summarize(derive(None, raw(0, record(1.0, balloon_guest=False)), REF))
    assert first["cpuPercent"] is None and first["memoryUsedBytes"] == 200000 * 1024
    json.dumps(first)


# --------------------------------------------------------------------------- fake libvirt


class FakeDomain:
    def __init__(self, uuid: str, name: str, dom_id: int, meta: str | None) -> None:
        self.uuid, self._name, self.dom_id, self.meta = uuid, name, dom_id, meta
        self.metadata_calls = 0
        self.xml_calls = 0

    def UUIDString(self) -> str:  # noqa: N802
        return self.uuid

    def name(self) -> str:
        return self._name

    def ID(self) -> int:  # noqa: N802
        return self.dom_id

    def metadata(self, kind: int, uri: str) -> str:
        self.metadata_calls += 1
        if self.meta is None:
            err = libvirt.libvirtError("no metadata")
            err.err = (libvirt.VIR_ERR_NO_DOMAIN_METADATA, 0, "no metadata", 0, "", "", "", 0, 0)
            raise err
        return self.meta

    def XMLDesc(self, flags: int = 0) -> str:  # noqa: N802
        self.xml_calls += 1
        return "<domain><devices/></domain>"


class FakeConn:
    def __init__(self) -> None:
        self.domains: dict[str, tuple[FakeDomain, dict]] = {}
        self.calls = 0
        self.fail = False

    def getAllDomainStats(self, stats: int, flags: int) -> list:  # noqa: N802
        self.calls += 1
        if self.fail:
            raise libvirt.libvirtError("connection lost")
        return list(self.domains.values())


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make_sampler(conn: FakeConn, clock: Clock) -> Sampler:
    return Sampler(lambda: conn, clock=clock, wall_clock=lambda: 1_700_000_000 + clock.t)


def test_sampler_one_call_per_round_and_cached_identity() -> None:
    conn, clock = FakeConn(), Clock()
    doms = []
    for i in range(20):
        meta = f'<vm namespace="ns" name="vm{i}" uid="x{i}" generation="1"/>'
        d = FakeDomain(f"u{i}", f"dom{i}", i + 1, meta)
        doms.append(d)
        conn.domains[d.uuid] = (d, record(float(i), rd=i))
    # fallback by name, and one unmanaged domain that is ignored
    fb = FakeDomain("ufb", "other_vmfb", 50, None)
    un = FakeDomain("uun", "not-k3svirt", 51, None)
    conn.domains["ufb"] = (fb, record(1.0))
    conn.domains["uun"] = (un, record(1.0))
    s = make_sampler(conn, clock)
    out = s.sample()
    assert conn.calls == 1
    assert len(out) == 21 and "uun" not in out
    assert out["ufb"].ref == VMRef("other", "vmfb")
    assert out["u3"].ref == VMRef("ns", "vm3", "x3", 1)
    for _ in range(3):
        clock.t += 2
        for d in doms:
            conn.domains[d.uuid] = (d, record(conn.domains[d.uuid][1]["cpu.time"] / 1e9 + 1.0))
        out = s.sample()
    assert conn.calls == 4
    assert all(d.metadata_calls == 1 and d.xml_calls == 1 for d in doms)
    assert un.metadata_calls == 1  # negative result cached too
    assert out["u0"].cpu.usage_percent == pytest.approx(50.0)
    assert s.last_round is not None and s.last_round.domains == 22 and s.last_round.vms == 21


def test_sampler_drops_stopped_domain_and_restarts_without_rates() -> None:
    conn, clock = FakeConn(), Clock()
    d = FakeDomain("u1", "ns_vm", 1, None)
    conn.domains["u1"] = (d, record(1.0))
    s = make_sampler(conn, clock)
    s.sample()
    clock.t += 2
    conn.domains["u1"] = (d, record(2.0))
    assert s.sample()["u1"].cpu.usage_percent == pytest.approx(50.0)
    del conn.domains["u1"]  # shut off
    clock.t += 2
    assert s.sample() == {}
    d2 = FakeDomain("u1", "ns_vm", 2, None)  # started again
    conn.domains["u1"] = (d2, record(9.0))
    clock.t += 2
    st = s.sample()["u1"]
    assert st.cpu.usage_percent is None
    assert d2.metadata_calls == 1  # identity re-read after the domain went away


def test_sampler_xml_reread_on_restart_metadata_not() -> None:
    conn, clock = FakeConn(), Clock()
    d = FakeDomain("u1", "ns_vm", 1, '<vm namespace="ns" name="vm"/>')
    conn.domains["u1"] = (d, record(1.0))
    s = make_sampler(conn, clock)
    s.sample()
    d.dom_id = 2  # restarted between two rounds (never seen absent)
    conn.domains["u1"] = (d, record(0.1))
    clock.t += 2
    assert s.sample()["u1"].cpu.usage_percent is None
    assert d.metadata_calls == 1 and d.xml_calls == 2


def test_collector_staleness_errors_and_http() -> None:
    conn, clock = FakeConn(), Clock()
    d = FakeDomain("u1", "ns1_vm1", 1, '<vm namespace="ns1" name="vm1" uid="uid-9" generation="2"/>')
    conn.domains["u1"] = (d, record(1.0, vcpu_s=(1.0,), rd=10, rx=10))
    coll = StatsCollector(lambda: conn, node_name="node-a", interval=2.0, sampler=make_sampler(conn, clock))
    assert coll.stale_after == 5.0
    assert coll.get("ns1", "vm1") is None
    coll.sample_once()
    clock.t += 2
    conn.domains["u1"] = (d, record(2.0, vcpu_s=(2.0,), rd=2010, rx=1010))
    coll.sample_once()
    st = coll.get("ns1", "vm1")
    assert st is not None and st.cpu.usage_percent == pytest.approx(50.0)

    server = MetricsServer(coll, port=0, host="127.0.0.1")
    server.start()
    try:
        base = server.base_url("127.0.0.1")
        body = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        fams = {f.name: f for f in text_string_to_metric_families(body)}
        cpu = fams["k3svirt_vmi_cpu_usage_percent"].samples[0]
        assert cpu.labels == {"namespace": "ns1", "name": "vm1", "node": "node-a"}
        assert cpu.value == pytest.approx(50.0)
        rd = fams["k3svirt_vmi_storage_read_traffic_bytes"]
        assert rd.type == "counter" and rd.samples[0].name.endswith("_total")
        assert rd.samples[0].labels["drive"] == "vda" and rd.samples[0].value == 2010
        assert fams["k3svirt_vmi_vcpu_seconds"].samples[0].labels["id"] == "0"

        url = server.stats_url("ns1", "vm1", host="127.0.0.1")
        js = json.loads(urllib.request.urlopen(url, timeout=5).read())
        assert js["namespace"] == "ns1" and js["uid"] == "uid-9" and js["node"] == "node-a"
        assert js["cpu"]["usagePercent"] == pytest.approx(50.0)
        assert js["disks"][0]["readBytesPerSec"] == pytest.approx(1000)
        assert js["sampledAt"].endswith("Z")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/stats/ns1/nope", timeout=5)
        assert e.value.code == 404 and json.loads(e.value.read())["error"] == "NotFound"

        # libvirt goes away: the round fails, figures age out instead of freezing
        conn.fail = True
        assert coll.sample_once() is None
        assert coll.errors_total == 1
        coll.stale_after = 0.0
        assert coll.get("ns1", "vm1") is None
        body = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        fams = {f.name: f for f in text_string_to_metric_families(body)}
        assert fams["k3svirt_vmi_cpu_usage_percent"].samples == []
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/healthz", timeout=5)
        assert e.value.code == 503
    finally:
        server.stop()


def test_collector_thread_runs_and_stops() -> None:
    conn = FakeConn()
    d = FakeDomain("u1", "ns1_vm1", 1, None)
    conn.domains["u1"] = (d, record(1.0))
    coll = StatsCollector(lambda: conn, node_name="n", interval=0.05)  # type: ignore[arg-type,return-value]
    coll.start()
    try:
        ev = threading.Event()
        for _ in range(100):
            if coll.rounds_total >= 3:
                ev.set()
                break
            threading.Event().wait(0.05)
        assert ev.is_set()
        assert coll.healthy()
        assert coll.get("ns1", "vm1") is not None
    finally:
        coll.stop()
    assert not coll.running


def test_interval_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The interval and port come from the settings the operator reads once (config.Settings)."""

    def collector() -> StatsCollector:
        return StatsCollector(FakeConn, node_name="n", interval=Settings.from_env().stats_interval)  # type: ignore[arg-type]

    monkeypatch.setenv("K3SVIRT_STATS_INTERVAL", "0.5")
    assert collector().interval == 0.5
    monkeypatch.setenv("K3SVIRT_STATS_INTERVAL", "junk")
    assert collector().interval == 2.0
    monkeypatch.setenv("K3SVIRT_METRICS_PORT", "9999")
    assert MetricsServer(collector(), port=Settings.from_env().metrics_port).port == 9999


def _skipped(rec: dict) -> dict:
    """What libvirt returns with NOWAIT while another job holds the domain: no guarded groups."""
    out = {
        k: v
        for k, v in rec.items()
        if not k.startswith("block.")
        and not (k.startswith("balloon.") and k not in ("balloon.current", "balloon.maximum"))
    }
    out["block.count"] = 0
    return out


def test_sampler_bridges_nowait_gaps() -> None:
    conn, clock = FakeConn(), Clock()
    d = FakeDomain("u1", "ns_vm", 1, None)
    s = make_sampler(conn, clock)
    conn.domains["u1"] = (d, record(1.0, rd=0, wr=0))
    s.sample()
    clock.t += 2
    conn.domains["u1"] = (d, record(2.0, rd=2000, wr=4000))
    r2 = s.sample()["u1"]
    assert r2.disks[0].read_bytes_per_sec == pytest.approx(1000)
    clock.t += 2
    conn.domains["u1"] = (d, _skipped(record(3.0, rd=9999, wr=9999)))
    r3 = s.sample()["u1"]
    assert r3.cpu.usage_percent == pytest.approx(50.0)  # never skipped
    assert r3.memory.resident_bytes == 200000 * 1024  # carried gauge
    assert r3.disks[0].read_bytes_per_sec == pytest.approx(1000)  # last round's figures
    clock.t += 2
    conn.domains["u1"] = (d, record(4.0, rd=10000, wr=4000))
    r4 = s.sample()["u1"]
    assert r4.disks[0].read_bytes_per_sec == pytest.approx(2000)  # (10000-2000) over 4 s, not 2 s
    assert r4.disks[0].write_bytes_per_sec == pytest.approx(0)
    # gaps longer than the hold time are not bridged
    for _ in range(3):
        clock.t += 2
        conn.domains["u1"] = (d, _skipped(record(5.0)))
        r = s.sample()["u1"]
    assert r.disks == () and r.memory.resident_bytes is None
