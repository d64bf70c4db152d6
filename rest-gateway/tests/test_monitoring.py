"""/nodes, /pods/{name}/stats, /stats/pods against the real API server.

A Node object is registered here without a kubelet behind it (unschedulable, tainted, no addresses: no
pod is ever placed on it and the API server's node proxy has nowhere to connect), so the sums of VM and
pod usage and the "kubelet unreachable" answers are checked on any test bed. Figures from a running
kubelet are in test_node_e2e.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from helpers import TEMPLATE_YAML, import_template
from k3svirt_gateway.k8s import core_path
from k3svirt_gateway.routes.vms import vm_path

MISSING = "localhost/k3svirt/not-imported:0.1"


@pytest.fixture()
def fake_node(app) -> Iterator[str]:
    kube = app.extensions["k3svirt.kube"]
    name = f"gwt-node-{uuid.uuid4().hex[:8]}"
    kube.post(
        core_path("nodes"),
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"k3svirt.io/test": "gateway"}},
            "spec": {
                "unschedulable": True,
                "taints": [{"key": "k3svirt.io/test", "value": "no-kubelet", "effect": "NoSchedule"}],
            },
        },
    )
    kube.patch(
        core_path("nodes", None, name, "status"),
        {
            "status": {
                "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                "nodeInfo": {
                    "kubeletVersion": "v1.36.3",
                    "containerRuntimeVersion": "containerd://1.6.20",
                    "osImage": "Debian GNU/Linux 12 (bookworm)",
                    "kernelVersion": "6.1.0",
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                    "kubeProxyVersion": "",
                },
            }
        },
    )
    yield name
    kube.delete(core_path("nodes", None, name))


def _pod(kube, ns: str, name: str, node: str, requests: dict[str, str]) -> None:
    kube.post(
        core_path("pods", ns),
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "stats"}},
            "spec": {
                "nodeName": node,
                "tolerations": [{"key": "k3svirt.io/test", "operator": "Exists"}],
                "containers": [{"name": "c", "image": MISSING, "resources": {"requests": requests}}],
            },
        },
    )


def test_node_view_and_usage(app, client, admin, reader, namespace, fake_node):
    kube = app.extensions["k3svirt.kube"]
    _pod(kube, namespace, "p1", fake_node, {"cpu": "250m", "memory": "64Mi"})
    _pod(kube, namespace, "p2", fake_node, {"cpu": "500m", "memory": "192Mi"})
    import_template(client, admin, namespace, "small", TEMPLATE_YAML.format(name="small"))  # 1 core, 128Mi
    vms = {
        "own": {
            "spec": {"nodeName": fake_node, "cpu": {"sockets": 1, "cores": 2, "threads": 2}, "memory": {"size": "1Gi"}}
        },
        "tmpl": {"template": {"name": "small"}},
        "off": {"spec": {"nodeName": fake_node, "cpu": {"cores": 3}, "memory": {"size": "2Gi"}}},
    }
    for vm, body in vms.items():
        r = client.post(f"/api/v1/vms?namespace={namespace}", headers=admin, json={"name": vm, **body})
        assert r.status_code == 201, r.json
    for vm, state in (("own", "Running"), ("tmpl", "Paused"), ("off", "Stopped")):
        status = {"node": fake_node, "printableStatus": state}
        if vm == "tmpl":
            status["resolvedTemplate"] = {"name": "small", "version": "1.0.0"}
        kube.patch(vm_path(namespace, vm, "status"), {"status": status})

    r = client.get(f"/api/v1/nodes/{fake_node}", headers=reader)
    assert r.status_code == 200, r.json
    n = r.json
    assert (n["name"], n["status"], n["ready"], n["unschedulable"]) == (fake_node, "Unknown", False, True)
    assert n["kubeletVersion"] == "v1.36.3" and n["capacity"]["cpuCores"] == 4.0
    assert n["allocatable"]["memoryBytes"] == 8 * 1024**3 and n["addresses"] == []
    # (the node lifecycle controller adds its own not-ready taint next to ours)
    assert {"key": "k3svirt.io/test", "value": "no-kubelet", "effect": "NoSchedule"} in n["taints"]
    u = n["usage"]
    assert u["pods"] == {"count": 2, "cpuRequestCores": 0.75, "memoryRequestBytes": 256 * 1024**2}
    assert (u["vms"]["count"], u["vms"]["active"]) == (3, 2)
    # own: 4 vCPUs + 1Gi (Running); tmpl: the template's 1 core + 128Mi (Paused); off: Stopped, not counted
    assert (u["vms"]["vcpus"], u["vms"]["memoryBytes"]) == (5, 1024**3 + 128 * 1024**2)
    assert {i["name"]: i["vcpus"] for i in u["vms"]["items"]} == {"own": 4, "tmpl": 1, "off": 3}
    assert u["total"]["cpuCores"] == 5.75 and u["total"]["cpuPercentOfAllocatable"] == round(100 * 5.75 / 4, 2)

    listed = client.get("/api/v1/nodes?labelSelector=k3svirt.io%2Ftest%3Dgateway", headers=reader).json["items"]
    assert [x["name"] for x in listed] == [fake_node] and listed[0]["usage"] == u
    assert client.get("/api/v1/nodes/gwt-never-registered", headers=reader).status_code == 404
    assert client.get("/api/v1/nodes/Not_A_Name", headers=reader).status_code == 422


def test_stats_without_a_reachable_kubelet(app, client, admin, namespace, fake_node):
    kube = app.extensions["k3svirt.kube"]
    _pod(kube, namespace, "bound", fake_node, {"cpu": "100m"})
    kube.post(
        core_path("pods", namespace),
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "gated", "labels": {"app": "stats"}},
            "spec": {"schedulingGates": [{"name": "k3svirt.io/test"}], "containers": [{"name": "c", "image": MISSING}]},
        },
    )
    r = client.get(f"/api/v1/pods/gated/stats?namespace={namespace}", headers=admin)
    assert r.status_code == 409 and r.json["reason"] == "PodNotRunning", r.json
    assert "not scheduled" in r.json["detail"] and r.json["podStatus"] == "SchedulingGated"
    # bound to a node whose kubelet cannot be reached: 503 + Retry-After, never a made-up figure
    r = client.get(f"/api/v1/pods/bound/stats?namespace={namespace}", headers=admin)
    assert r.status_code == 503 and r.headers["Retry-After"] == "10", r.json
    assert fake_node in r.json["detail"]
    assert client.get(f"/api/v1/pods/nope/stats?namespace={namespace}", headers=admin).status_code == 404

    r = client.get(f"/api/v1/stats/pods?namespace={namespace}&labelSelector=app%3Dstats", headers=admin)
    assert r.status_code == 200, r.json
    items = {i["name"]: i for i in r.json["items"]}
    assert set(items) == {"bound", "gated"} and not any(i["available"] for i in items.values())
    assert items["gated"]["reason"] == "not scheduled on a node yet"
    assert fake_node in items["bound"]["reason"] and items["bound"]["node"] == fake_node
    assert r.json["totals"]["pods"] == 2 and r.json["totals"]["podsWithStats"] == 0
    assert r.json["totals"]["cpuUsageCores"] is None
    empty = client.get("/api/v1/stats/pods?namespace=default&labelSelector=k3svirt.io%2Fnone%3Dx", headers=admin)
    assert empty.status_code == 200 and empty.json["items"] == [] and empty.json["totals"]["pods"] == 0


def test_logs_when_the_kubelet_cannot_be_reached(app, client, admin, namespace, fake_node):
    """The pod says its container runs (status written here as a kubelet would), but the API server
    cannot reach the node's kubelet: 503 naming the cause, never a 500 or a 406."""
    kube = app.extensions["k3svirt.kube"]
    _pod(kube, namespace, "runs", fake_node, {"cpu": "100m"})
    kube.patch(
        core_path("pods", namespace, "runs", "status"),
        {
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": "c",
                        "image": MISSING,
                        "imageID": "",
                        "ready": True,
                        "restartCount": 0,
                        "started": True,
                        "state": {"running": {"startedAt": "2025-01-10T10:00:05Z"}},
                    }
                ],
            }
        },
    )
    assert client.get(f"/api/v1/pods/runs?namespace={namespace}", headers=admin).json["status"] == "Running"
    r = client.get(f"/api/v1/pods/runs/logs?namespace={namespace}&tailLines=3", headers=admin)
    assert r.status_code == 503 and r.mimetype == "application/problem+json", r.get_data(as_text=True)
    assert r.headers["Retry-After"] == "10" and "kubelet unreachable" in r.json["detail"], r.json
    # the API server's own reason comes through (its errors are JSON: text/plain alone would be a 406)
    assert "no preferred addresses found" in r.json["detail"], r.json
