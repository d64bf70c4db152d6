"""Pure Summary API -> stats views, rate bookkeeping, node views and node usage sums."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from k3svirt_gateway.nodeview import node_usage, node_view, vm_resources
from k3svirt_gateway.podstats import RateTracker, find_pod, parse_time, pod_stats_view, totals, unavailable
from pod_objects import RUNNING, cstatus, node, pod, summary, summary_pod

T0 = datetime.fromisoformat("2025-01-10T10:05:00+00:00")


def test_rate_tracker_needs_two_distinct_samples():
    r = RateTracker()
    assert r.observe(("k",), T0, 1000) == (None, None)
    assert r.observe(("k",), T0, 1000) == (None, None)  # kubelet has not sampled again
    assert r.observe(("k",), T0 + timedelta(seconds=10), 6000) == (500.0, 10.0)
    # asked again before the next kubelet sample: same rate, same window
    assert r.observe(("k",), T0 + timedelta(seconds=10), 6000) == (500.0, 10.0)
    assert r.observe(("k",), T0 + timedelta(seconds=25), 6000) == (0.0, 15.0)
    # out of order: no rate, nothing forgotten
    assert r.observe(("k",), T0, 1000) == (None, None)
    assert r.observe(("k",), T0 + timedelta(seconds=35), 7000) == (100.0, 10.0)


def test_rate_tracker_counter_reset_and_age_and_bound():
    r = RateTracker(max_keys=2, max_age=60)
    r.observe(("a",), T0, 5000)
    assert r.observe(("a",), T0 + timedelta(seconds=10), 100) == (None, None)  # sandbox restarted
    assert r.observe(("a",), T0 + timedelta(seconds=20), 1100) == (100.0, 10.0)
    assert r.observe(("a",), T0 + timedelta(seconds=200), 2000) == (None, None)  # previous too old
    r.observe(("b",), T0, 1)
    r.observe(("c",), T0, 1)  # evicts "a" (least recently observed)
    assert r.observe(("a",), T0 + timedelta(seconds=210), 3000) == (None, None)


def test_parse_time():
    assert parse_time("2025-01-10T10:05:00Z") == T0
    assert parse_time("") is None and parse_time(None) is None and parse_time("yesterday") is None


def _stats(entry, p, rates=None, cpu=8.0, memory=16 * 1024**3):
    return pod_stats_view(entry, p, {"cpu": cpu, "memory": memory}, rates or RateTracker())


def test_pod_stats_view_without_limits():
    p = pod(statuses=[cstatus(RUNNING, ready=True)], ready=True)
    v = _stats(summary_pod(), p)
    assert v["name"] == "web-7d9c8b6f5-x2x9q" and v["namespace"] == "demo" and v["node"] == "node1"
    assert v["cpu"] == {
        "time": "2025-01-10T10:05:00Z",
        "usageCores": 0.25,
        "usageCoreSeconds": 12.0,
        "nodeCores": 8.0,
        "percentOfNode": 3.12,
        "limitCores": None,
        "percentOfLimit": None,
    }
    assert v["memory"]["workingSetBytes"] == 50 * 1024**2
    assert v["memory"]["percentOfNode"] == round(100 * 50 / (16 * 1024), 2)
    assert v["memory"]["limitBytes"] is None and v["memory"]["percentOfLimit"] is None
    assert v["filesystem"] == {
        "rootfsUsedBytes": 40960,
        "logsUsedBytes": 8192,
        "usedBytes": 49152,
        "ephemeralStorageUsedBytes": 53248,
        "volumesUsedBytes": 12288,
    }
    net = v["network"]
    assert (net["rxBytes"], net["txBytes"]) == (1_000_000, 2_000_000)
    assert (
        net["rxBytesPerSecond"] is None
        and net["rateWindowSeconds"] is None
        and "two kubelet samples" in net["rateNote"]
    )
    assert net["interfaces"] == ["eth0"]
    (c,) = v["containers"]
    assert c["name"] == "app" and c["cpu"]["usageCores"] == 0.25 and c["cpu"]["percentOfLimit"] is None
    assert c["filesystem"] == {"rootfsUsedBytes": 40960, "logsUsedBytes": 8192}
    assert v["processes"] == 1


def test_pod_stats_view_against_limits_and_rates():
    p = pod(statuses=[cstatus(RUNNING, ready=True)], ready=True)
    p["spec"]["containers"][0]["resources"] = {
        "limits": {"cpu": "500m", "memory": "100Mi"},
        "requests": {"cpu": "500m", "memory": "100Mi"},
    }
    rates = RateTracker()
    _stats(summary_pod(), p, rates)
    later = summary_pod(t="2025-01-10T10:05:15Z", rx=1_000_000 + 15_000, tx=2_000_000 + 30_000)
    v = _stats(later, p, rates)
    assert v["cpu"]["limitCores"] == 0.5 and v["cpu"]["percentOfLimit"] == 50.0
    assert v["memory"]["limitBytes"] == 100 * 1024**2 and v["memory"]["percentOfLimit"] == 50.0
    assert v["containers"][0]["cpu"]["percentOfLimit"] == 50.0
    assert v["containers"][0]["memory"]["percentOfLimit"] == 50.0
    net = v["network"]
    assert (net["rxBytesPerSecond"], net["txBytesPerSecond"], net["rateWindowSeconds"]) == (1000.0, 2000.0, 15.0)
    assert "rateNote" not in net


def test_rates_are_per_pod_uid():
    rates = RateTracker()
    p = pod()
    _stats(summary_pod(), p, rates)
    recreated = summary_pod(t="2025-01-10T10:05:15Z", rx=5)
    recreated["podRef"]["uid"] = "another-uid"
    assert _stats(recreated, p, rates)["network"]["rxBytesPerSecond"] is None


def test_pod_without_network_figures():
    # what a kubelet whose cAdvisor cannot see the pod sandbox reports: no "network" section at all
    entry = summary_pod()
    del entry["network"]
    net = _stats(entry, pod())["network"]
    assert net["rxBytes"] is None and net["rxBytesPerSecond"] is None and net["interfaces"] == []
    assert net["rateNote"] == "the kubelet's Summary has no network figures for this pod"


def test_first_sample_without_cpu_rate():
    # right after a container starts the kubelet has usageCoreNanoSeconds but no usageNanoCores yet
    entry = summary_pod()
    del entry["cpu"]["usageNanoCores"]
    v = _stats(entry, pod())
    assert v["cpu"]["usageCores"] is None and v["cpu"]["percentOfNode"] is None


def test_find_pod_matches_uid():
    p = pod()
    s = summary([summary_pod("other"), summary_pod()])
    assert find_pod(s, p)["podRef"]["name"] == "web-7d9c8b6f5-x2x9q"
    p["metadata"]["uid"] = "recreated"
    assert find_pod(s, p) is None
    assert find_pod({"node": {}}, p) is None  # a kubelet that runs no pods omits nothing but pods


def test_totals():
    rates = RateTracker()
    a = _stats(summary_pod("a"), pod("a"), rates)
    b = _stats(summary_pod("b", nano_cores=500_000_000, working_set=10), pod("b"), rates)
    t = totals([a, b, unavailable(pod("c", node=None, phase="Pending"), "not scheduled")])
    assert t["pods"] == 3 and t["podsWithStats"] == 2
    assert t["cpuUsageCores"] == 0.75 and t["memoryWorkingSetBytes"] == 50 * 1024**2 + 10
    assert t["networkRxBytes"] == 2_000_000 and t["networkRxBytesPerSecond"] is None
    assert t["filesystemUsedBytes"] == 2 * 49152


def test_node_view():
    v = node_view(node())
    assert (v["name"], v["status"], v["ready"], v["kubeletVersion"]) == ("node1", "Ready", True, "v1.36.3")
    assert v["capacity"]["cpuCores"] == 8.0 and v["capacity"]["memoryBytes"] == 16318012 * 1024
    assert v["capacity"]["pods"] == 110 and v["capacity"]["quantities"]["memory"] == "16318012Ki"
    assert v["allocatable"]["ephemeralStorageBytes"] == 18861479601
    assert v["addresses"] == [{"type": "InternalIP", "address": "10.0.2.15"}, {"type": "Hostname", "address": "node1"}]
    assert [c["type"] for c in v["conditions"]] == ["MemoryPressure", "Ready"]
    assert v["containerRuntimeVersion"] == "containerd://1.6.20"
    assert node_view(node(ready=False))["status"] == "NotReady"
    bare = node()
    bare["status"]["conditions"] = []
    assert node_view(bare)["status"] == "Unknown"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"cpu": {"sockets": 1, "cores": 2, "threads": 2}, "memory": {"size": "1Gi"}}, (4, 1024**3)),
        ({"cpu": {}, "memory": {"size": "512Mi"}}, (1, 512 * 1024**2)),
        ({"cpu": {"cores": 1}}, (1, None)),
    ],
)
def test_vm_resources(spec, expected):
    assert vm_resources(spec) == expected


def _vm(name: str, node_name: str | None, state: str) -> dict:
    status = {"printableStatus": state}
    if node_name:
        status["node"] = node_name
    return {
        "apiVersion": "k3svirt.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"runStrategy": "Always", "template": {"name": "small"}},
        "status": status,
    }


def test_node_usage_sums_vms_and_pod_requests():
    small = {"cpu": {"sockets": 1, "cores": 2, "threads": 1}, "memory": {"size": "1Gi"}}
    vms = [
        (_vm("a", "node1", "Running"), small),
        (_vm("b", "node1", "Stopped"), small),  # assigned but holds nothing
        (_vm("c", "node2", "Running"), small),  # another node
        (_vm("d", None, "Pending"), small),
        (_vm("e", "node1", "Paused"), {"cpu": {"cores": 1}, "memory": {"size": "512Mi"}}),
        (_vm("f", "node1", "Running"), None),  # template missing
    ]
    req = {"requests": {"cpu": "250m", "memory": "128Mi"}}
    p1 = pod("p1")
    p1["spec"]["containers"][0]["resources"] = req
    p2 = pod("p2", phase="Succeeded")
    p2["spec"]["containers"][0]["resources"] = req
    p3 = pod("p3", node="node2")
    p3["spec"]["containers"][0]["resources"] = req
    p4 = pod("p4")  # BestEffort: no requests
    u = node_usage(node(), vms, [p1, p2, p3, p4])
    assert u["vms"]["count"] == 4 and u["vms"]["active"] == 3
    assert (u["vms"]["vcpus"], u["vms"]["memoryBytes"]) == (3, 1024**3 + 512 * 1024**2)
    assert [i["name"] for i in u["vms"]["items"]] == ["a", "b", "e", "f"]
    assert "could not be resolved" in u["vms"]["items"][3]["note"]
    assert u["pods"] == {"count": 2, "cpuRequestCores": 0.25, "memoryRequestBytes": 128 * 1024**2}
    assert u["total"]["cpuCores"] == 3.25
    assert u["total"]["memoryBytes"] == 1024**3 + 640 * 1024**2
    assert u["total"]["cpuPercentOfAllocatable"] == round(100 * 3.25 / 8, 2)
    assert u["total"]["memoryPercentOfAllocatable"] == round(100 * (1024**3 + 640 * 1024**2) / (16215612 * 1024), 2)
