"""Containers really running on the test bed's node, driven and observed only through the gateway:
status with reasons, logs, stats from the kubelet Summary API, node usage, rolling updates, scaling,
deletion. Needs a Ready node (`ready_node` skips, with the reason, on a test bed without a kubelet).

Traffic goes only to the pods' Service ClusterIP from the host (kube-proxy sends it into the pod's
network namespace) and, for the missing image, to loopback (the "localhost" registry that is not there).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
import requests
from helpers import APP_IMAGE
from k3svirt_gateway.k8s import core_path

from tests.polling import wait_until

MISSING = "localhost/k3svirt/not-imported:0.1"
RUN_TIMEOUT = 120.0


class Gw:
    """The gateway's test client, bound to one namespace and an admin key."""

    def __init__(self, client, headers: dict[str, str], ns: str) -> None:
        self.client, self.headers, self.ns = client, headers, ns

    def call(self, method: str, path: str, **kw: Any):
        sep = "&" if "?" in path else "?"
        return self.client.open(f"/api/v1{path}{sep}namespace={self.ns}", method=method, headers=self.headers, **kw)

    def ok(self, method: str, path: str, **kw: Any) -> Any:
        r = self.call(method, path, **kw)
        assert r.status_code in (200, 201, 202), (method, path, r.status_code, r.get_data(as_text=True))
        return r.json if r.is_json else r.get_data(as_text=True)

    def pods(self, app_name: str) -> list[dict[str, Any]]:
        return self.ok("GET", f"/pods?labelSelector=app%3D{app_name}")["items"]

    def running(self, app_name: str, count: int = 1) -> list[dict[str, Any]] | None:
        pods = [p for p in self.pods(app_name) if not p["deleting"]]
        ok = len(pods) == count and all(p["status"] == "Running" and p["readyContainers"] == "1/1" for p in pods)
        return pods if ok else None


@pytest.fixture()
def gw(client, admin, namespace, ready_node) -> Gw:
    return Gw(client, admin, namespace)


def deploy_echo(gw: Gw, name: str, message: str, **extra: Any) -> str:
    """An http-echo Deployment + ClusterIP Service on port 80; returns the Service's ClusterIP."""
    gw.ok(
        "POST",
        "/deployments",
        json={
            "name": name,
            "image": APP_IMAGE,
            "ports": [{"port": 8080, "name": "http"}],
            "env": {"MESSAGE": message, "PORT": "8080"},
            "resources": {"requests": {"cpu": "50m", "memory": "16Mi"}, "limits": {"cpu": "500m", "memory": "64Mi"}},
            **extra,
        },
    )
    svc = gw.ok(
        "POST", "/services", json={"name": name, "deployment": name, "ports": [{"port": 80, "targetPort": 8080}]}
    )
    return svc["clusterIP"]


def answer(cluster_ip: str) -> str:
    r = requests.get(f"http://{cluster_ip}:80/", timeout=5)
    r.raise_for_status()
    return r.text


def answered(cluster_ip: str, expected: str) -> str | None:
    try:
        text = answer(cluster_ip)
    except requests.RequestException:
        return None
    return text if expected in text else None


def test_app_runs_logs_and_is_measured(gw, ready_node):
    message = f"m-{uuid.uuid4().hex[:6]}"
    ip = deploy_echo(gw, "echo", message)
    (pod,) = wait_until(lambda: gw.running("echo"), RUN_TIMEOUT, "waiting for the echo pod Running", 1.0)
    assert pod["node"] == ready_node and pod["podIP"] and pod["startTime"] and pod["phase"] == "Running"
    (c,) = pod["containers"]
    assert c["state"] == "running" and c["startedAt"] and c["image"] == APP_IMAGE and c["ready"]
    assert pod["restarts"] == 0 and pod["statusMessage"] == ""

    # through the Service's ClusterIP from the host (kube-proxy)
    text = wait_until(lambda: answered(ip, message), 60, "waiting for an answer through the Service", 1.0)
    assert text.strip() == f"http-echo host={pod['name']} message={message}"
    for _ in range(3):
        answer(ip)

    logs = f"/pods/{pod['name']}/logs"
    full = wait_until(
        lambda: (lambda t: t if t.count("http-echo: GET /") >= 4 else None)(gw.ok("GET", logs)),
        RUN_TIMEOUT,
        "waiting for request lines in the log",
        1.0,
    )
    assert re.search(r"^http-echo: GET / from \S+$", full, re.M), full
    r = gw.call("GET", logs + "?tailLines=1")
    assert r.status_code == 200 and r.mimetype == "text/plain" and len(r.get_data(as_text=True).splitlines()) == 1
    stamped = gw.ok("GET", logs + "?timestamps=true&sinceSeconds=3600").splitlines()
    assert stamped and all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z http-echo: ", line) for line in stamped)
    assert len(gw.ok("GET", logs + "?limitBytes=10").encode()) == 10
    r = gw.call("GET", logs + "?previous=true")
    assert r.status_code == 409 and r.json["podStatus"] == "Running" and "no previous" in r.json["detail"]

    # figures from the kubelet's Summary API, through the API server's node proxy (network: below)
    def measured():
        s = gw.ok("GET", f"/pods/{pod['name']}/stats")
        have = (s["memory"]["workingSetBytes"], s["cpu"]["usageCores"], s["filesystem"]["usedBytes"])
        return s if all(v is not None for v in have) and s["memory"]["workingSetBytes"] > 0 else None

    s = wait_until(measured, 90, "waiting for the kubelet's figures for the pod", 3)
    assert s["available"] and s["node"] == ready_node and s["status"] == "Running" and ready_node in s["source"]
    assert 0 < s["memory"]["workingSetBytes"] <= 64 * 1024**2
    assert s["memory"]["limitBytes"] == 64 * 1024**2 and s["memory"]["percentOfLimit"] > 0
    assert s["cpu"]["limitCores"] == 0.5 and s["cpu"]["nodeCores"] >= 1 and s["cpu"]["usageCores"] >= 0
    assert s["cpu"]["usageCoreSeconds"] > 0
    assert s["filesystem"]["rootfsUsedBytes"] is not None and s["filesystem"]["logsUsedBytes"] is not None
    assert [c["name"] for c in s["containers"]] == ["echo"]

    listing = gw.ok("GET", "/stats/pods")
    (item,) = [i for i in listing["items"] if i["name"] == pod["name"]]
    assert item["available"] and listing["totals"]["podsWithStats"] >= 1
    assert listing["totals"]["memoryWorkingSetBytes"] >= item["memory"]["workingSetBytes"]

    # the node: Ready, its versions, and our pod's requests in its usage
    node = gw.ok("GET", f"/nodes/{ready_node}")
    assert node["ready"] and node["status"] == "Ready" and node["kubeletVersion"].startswith("v1.")
    assert node["capacity"]["cpuCores"] >= 1 and node["allocatable"]["memoryBytes"] > 0
    assert any(a["address"] for a in node["addresses"])
    assert node["usage"]["pods"]["count"] >= 1 and node["usage"]["pods"]["cpuRequestCores"] >= 0.05
    assert ready_node in [n["name"] for n in gw.ok("GET", "/nodes")["items"]]


def test_pod_network_figures_and_rates(gw):
    """rx/tx bytes of the pod (cumulative, from the kubelet) and bytes/s from two kubelet samples."""
    ip = deploy_echo(gw, "net", "n")
    (pod,) = wait_until(lambda: gw.running("net"), RUN_TIMEOUT, "waiting for the pod Running", 1.0)
    wait_until(lambda: answered(ip, "message=n"), 60, "waiting for an answer through the Service", 1.0)

    def traffic_counted():
        answer(ip)
        n = gw.ok("GET", f"/pods/{pod['name']}/stats")["network"]
        return n if (n["rxBytes"] or 0) > 0 and (n["txBytes"] or 0) > 0 else None

    net = wait_until(traffic_counted, 90, "waiting for the kubelet's network figures for the pod", 3)
    assert "eth0" in net["interfaces"] and net["time"]

    # a rate needs a second kubelet sample: keep traffic flowing and ask again
    def with_rate():
        answer(ip)
        n = gw.ok("GET", f"/pods/{pod['name']}/stats")["network"]
        return n if n["rateWindowSeconds"] else None

    net = wait_until(with_rate, 90, "waiting for a network rate from two kubelet samples", 3)
    assert net["rateWindowSeconds"] > 0 and net["rxBytesPerSecond"] >= 0 and net["txBytesPerSecond"] >= 0
    assert "rateNote" not in net


def test_rolling_update_scale_and_delete(gw, app):
    kube = app.extensions["k3svirt.kube"]
    ip = deploy_echo(gw, "roll", "one", replicas=2)
    first = wait_until(lambda: gw.running("roll", 2), RUN_TIMEOUT, "waiting for 2 pods Running", 1.0)
    old_hash = {p["labels"]["pod-template-hash"] for p in first}
    assert len(old_hash) == 1
    wait_until(lambda: answered(ip, "message=one"), 60, "waiting for the first answer", 1.0)

    d = gw.ok("PATCH", "/deployments/roll", json={"env": {"MESSAGE": "two", "PORT": "8080"}})
    assert d["env"]["MESSAGE"] == "two" and d["generation"] == 2
    wait_until(
        lambda: gw.ok("GET", "/deployments/roll")["rollout"] == "Complete",
        RUN_TIMEOUT,
        "waiting for the rollout to complete",
        1.0,
    )
    pods = wait_until(lambda: gw.running("roll", 2), RUN_TIMEOUT, "waiting for 2 new pods and no old one", 1.0)
    new_hash = {p["labels"]["pod-template-hash"] for p in pods}
    assert len(new_hash) == 1 and new_hash != old_hash
    sets = kube.get(f"/apis/apps/v1/namespaces/{gw.ns}/replicasets").get("items", [])
    by_hash = {rs["metadata"]["labels"]["pod-template-hash"]: rs for rs in sets}
    assert by_hash[new_hash.pop()]["status"].get("replicas") == 2
    assert by_hash[old_hash.pop()]["status"].get("replicas", 0) == 0
    wait_until(lambda: answered(ip, "message=two"), 60, "waiting for the new answer", 1.0)

    d = gw.ok("PATCH", "/deployments/roll", json={"replicas": 0})
    assert d["replicas"] == 0
    wait_until(lambda: gw.pods("roll") == [], RUN_TIMEOUT, "waiting for no pod left", 1.0)
    gw.ok("PATCH", "/deployments/roll", json={"replicas": 1})
    wait_until(lambda: gw.running("roll", 1), RUN_TIMEOUT, "waiting for 1 pod Running again", 1.0)

    gw.ok("DELETE", "/deployments/roll")
    wait_until(
        lambda: gw.call("GET", "/deployments/roll").status_code == 404,
        RUN_TIMEOUT,
        "waiting for the deployment gone",
        1.0,
    )
    assert gw.pods("roll") == [], "Foreground deletion returned before its pods were gone"


def test_missing_image_says_it_is_not_on_the_node(gw):
    gw.ok("POST", "/deployments", json={"name": "ghost", "image": MISSING})

    def pull_failed():
        pods = gw.pods("ghost")
        return pods[0] if pods and pods[0]["status"] in ("ErrImagePull", "ImagePullBackOff") else None

    pod = wait_until(pull_failed, RUN_TIMEOUT, "waiting for an image pull failure", 1.0)
    assert pod["phase"] == "Pending"
    assert MISSING in pod["statusMessage"]
    assert "not present on the node; images are imported locally, no registry is reachable" in pod["statusMessage"]
    (c,) = pod["containers"]
    assert c["state"] == "waiting" and c["reason"] in ("ErrImagePull", "ImagePullBackOff") and c["message"]
    r = gw.call("GET", f"/pods/{pod['name']}/logs")
    assert r.status_code == 409 and r.json["podStatus"] in ("ErrImagePull", "ImagePullBackOff")
    assert MISSING in r.json["statusMessage"]


def test_crash_loop_and_completed(gw, app):
    gw.ok(
        "POST",
        "/deployments",
        json={"name": "crash", "image": APP_IMAGE, "command": ["/bin/busybox", "sh", "-c", "echo bye; exit 3"]},
    )

    def crashing():
        # Between restarts the kubelet reports either the back-off (waiting CrashLoopBackOff) or, until
        # its next sync, the last exit (terminated Error): both must name the exit code.
        pods = gw.pods("crash")
        if not pods or pods[0]["restarts"] < 2 or pods[0]["status"] not in ("CrashLoopBackOff", "Error"):
            return None
        c = pods[0]["containers"][0]
        return pods[0] if (c.get("lastState") or {}).get("exitCode") == 3 else None

    pod = wait_until(crashing, RUN_TIMEOUT, "waiting for a crash loop", 1.0)
    c = pod["containers"][0]
    logs = f"/pods/{pod['name']}/logs"
    if pod["status"] == "CrashLoopBackOff":
        assert c["state"] == "waiting" and c["reason"] == "CrashLoopBackOff"
        assert "last exit code 3" in pod["statusMessage"], pod
        logs += "?previous=true"  # the instance that exited
    else:
        # the exited instance is the current one (the kubelet keeps one dead instance per container)
        assert c["state"] == "terminated" and c["exitCode"] == 3 and c["reason"] == "Error"
        assert "exited with code 3" in pod["statusMessage"], pod
    assert gw.ok("GET", logs).strip() == "bye"

    kube = app.extensions["k3svirt.kube"]
    kube.post(
        core_path("pods", gw.ns),
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "once", "labels": {"app": "once"}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "once",
                        "image": APP_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["/bin/busybox", "echo", "done"],
                    }
                ],
            },
        },
    )
    # the kubelet reports the container terminated before it moves the pod to Succeeded
    done = wait_until(
        lambda: (lambda p: p if p["status"] == "Completed" and p["phase"] == "Succeeded" else None)(
            gw.ok("GET", "/pods/once")
        ),
        RUN_TIMEOUT,
        "waiting for Completed and Succeeded",
        1.0,
    )
    assert done["phase"] == "Succeeded" and done["containers"][0]["exitCode"] == 0
    assert gw.ok("GET", "/pods/once/logs").strip() == "done"
    r = gw.call("GET", "/pods/once/stats")
    assert r.status_code in (200, 409), r.json  # a finished pod may or may not still be in the Summary
