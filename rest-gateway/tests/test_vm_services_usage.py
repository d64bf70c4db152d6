"""POST /services {vm} (a Service in front of a VM) and GET /usage, against the real API server."""

from __future__ import annotations

import pytest
from k3svirt_common import names, vmservice
from k3svirt_gateway.k8s import core_path, group_path

from tests.polling import wait_until

SPEC = {"memory": {"size": "64Mi"}, "cpu": {"cores": 1}}


def test_expose_a_vm(app, client, admin, namespace):
    base = f"/api/v1/services?namespace={namespace}"
    assert client.post(f"/api/v1/vms?namespace={namespace}", headers=admin,
                       json={"name": "web1", "spec": SPEC}).status_code == 201  # fmt: skip
    body = {"name": "web1-ssh", "vm": "web1", "type": "NodePort",
            "ports": [{"port": 22, "nodePort": 30222}, {"name": "http", "port": 80, "targetPort": 8080}]}  # fmt: skip
    r = client.post(base, headers=admin, json=body)
    assert r.status_code == 201, r.json
    assert r.json["vmSelector"] == "k3svirt.io/vm-name=web1" and r.json["selector"] == {}
    assert [p.get("nodePort") for p in r.json["ports"]][0] == 30222
    svc = app.extensions["k3svirt.kube"].get(core_path("services", namespace, "web1-ssh"))
    assert "selector" not in svc["spec"]  # selector-less: the operators publish the endpoints
    assert svc["metadata"]["annotations"][vmservice.ANNOTATION_VM_SELECTOR] == "k3svirt.io/vm-name=web1"
    listed = client.get(base, headers=admin).json["items"]
    assert [s.get("vmSelector") for s in listed] == ["k3svirt.io/vm-name=web1"]
    r = client.post(base, headers=admin, json={"name": "sel", "vmSelector": "app=web,tier!=db", "ports": [{"port": 1}]})
    assert r.status_code == 201 and r.json["vmSelector"] == "app=web,tier!=db"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"vm": "nobody"}, 404, None),
        ({"vm": "Bad_Name"}, 422, "vm"),
        ({"vm": "web1", "selector": {"app": "x"}}, 422, "vm"),
        ({"vm": "web1", "deployment": "web"}, 422, "vm"),
        ({"vmSelector": "app in (a)"}, 422, "vmSelector"),
        ({"vmSelector": "x=" + "v" * 64}, 422, "vmSelector"),
        ({"vmSelector": ""}, 422, "vmSelector"),
        ({"vmSelector": "a" * 5000}, 422, "vmSelector"),
        ({"vmSelector": {"app": "x"}}, 422, "vmSelector"),
        ({"vm": "web1", "ports": [{"port": 22, "nodePort": 30222}]}, 422, "ports[0].nodePort"),
        ({"vm": "web1", "type": "NodePort", "ports": [{"port": 22, "nodePort": 70000}]}, 422, None),
    ],
)
def test_expose_refuses_bad_input_naming_the_field(client, admin, namespace, body, status, field):
    client.post(f"/api/v1/vms?namespace={namespace}", headers=admin, json={"name": "web1", "spec": SPEC})
    r = client.post(f"/api/v1/services?namespace={namespace}", headers=admin,
                    json={"name": "s", "ports": [{"port": 22}], **body})  # fmt: skip
    assert r.status_code == status, r.json
    assert r.headers["Content-Type"].startswith("application/problem+json")
    if field:
        assert r.json["errors"][0]["field"] == field, r.json


def usage_object(ns: str, vm: str, buckets: list[dict]) -> dict:
    return {"apiVersion": names.API_VERSION, "kind": "VMUsage", "metadata": {"name": f"{vm}-0000", "namespace": ns},
            "spec": {}, "status": {"vm": {"name": vm, "uid": f"uid-{vm}"}, "node": "n1", "bucketSeconds": 3600,
                                   "buckets": buckets}}  # fmt: skip


def bucket(start: str, cpu: float, rx: float = 0.0) -> dict:
    return {"start": start, "cpuSeconds": cpu, "memoryAllocatedGiBHours": 1.0, "memoryUsedGiBHours": 0.5,
            "diskGBHours": 10.0, "networkRxBytes": rx, "networkTxBytes": 0.0}  # fmt: skip


def put_usage(app, obj: dict) -> None:
    kube, ns = app.extensions["k3svirt.kube"], obj["metadata"]["namespace"]
    path = group_path(names.GROUP, names.VERSION, "vmusages", ns)
    kube.post(path, {k: v for k, v in obj.items() if k != "status"})
    kube.patch(group_path(names.GROUP, names.VERSION, "vmusages", ns, obj["metadata"]["name"], "status"),
               {"status": obj["status"]})  # fmt: skip


def test_usage_per_vm_and_namespace(app, client, admin, namespace):
    put_usage(app, usage_object(namespace, "a", [bucket("2026-01-01T22:00:00Z", 10.0), bucket("2026-01-01T23:00:00Z",
              20.0, rx=5.0), bucket("2026-01-02T00:00:00Z", 40.0)]))  # fmt: skip
    put_usage(app, usage_object(namespace, "b", [bucket("2026-01-01T23:00:00Z", 1.0)]))
    q = f"/api/v1/usage?namespace={namespace}&from=2026-01-01T23:00:00Z&to=2026-01-02T01:00:00Z"
    r = client.get(q, headers=admin)
    assert r.status_code == 200, r.json
    a, b = r.json["vms"]
    assert [x["start"] for x in a["buckets"]] == ["2026-01-01T23:00:00Z", "2026-01-02T00:00:00Z"]  # from included
    assert a["total"]["cpuSeconds"] == 60.0 and a["total"]["networkRxBytes"] == 5.0
    assert b["total"]["cpuSeconds"] == 1.0
    ns_total = r.json["total"]
    assert ns_total["total"]["cpuSeconds"] == 61.0 and ns_total["total"]["diskGBHours"] == 30.0
    assert [x["cpuSeconds"] for x in ns_total["buckets"]] == [21.0, 40.0]
    day = client.get(q.replace("from=2026-01-01T23", "from=2026-01-01T00") + "&granularity=day", headers=admin).json
    assert [(x["start"], x["cpuSeconds"]) for x in day["total"]["buckets"]] == [
        ("2026-01-01T00:00:00Z", 31.0), ("2026-01-02T00:00:00Z", 40.0)]  # fmt: skip
    empty = client.get(f"/api/v1/usage?namespace={namespace}&from=2020-01-01&to=2020-01-02", headers=admin).json
    assert empty["total"]["total"]["cpuSeconds"] == 0.0


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=yesterday", "from"),
        ("to=2026-13-01T00:00:00Z", "to"),
        ("from=2026-01-01T00:00:00", "from"),  # no time zone
        ("from=" + "1" * 100, "from"),
        ("from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
        ("from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
        ("granularity=week", "granularity"),
    ],
)
def test_usage_refuses_bad_queries(client, admin, namespace, query, field):
    r = client.get(f"/api/v1/usage?namespace={namespace}&{query}", headers=admin)
    assert r.status_code == 400, r.json
    assert r.json["errors"][0]["field"] == field


def test_vm_list_shows_the_addresses_of_status_interfaces(app, client, admin, namespace):
    assert client.post(f"/api/v1/vms?namespace={namespace}", headers=admin,
                       json={"name": "ipvm", "spec": SPEC}).status_code == 201  # fmt: skip
    interfaces = [{"name": "default", "macAddress": "52:54:00:00:00:01"},
                  {"name": "lan", "macAddress": "52:54:00:00:00:02", "ipAddress": "10.0.0.7"}]  # fmt: skip
    app.extensions["k3svirt.kube"].patch(group_path(names.GROUP, names.VERSION, names.VM_PLURAL, namespace, "ipvm",
                                                    "status"), {"status": {"interfaces": interfaces}})  # fmt: skip

    def listed() -> dict:
        return next(v for v in client.get(f"/api/v1/vms?namespace={namespace}", headers=admin).json["items"])

    item = wait_until(lambda: listed() if listed().get("ipAddress") else None, 30, "the list cache lagged")
    assert item["ipAddress"] == "10.0.0.7" and item["interfaces"] == interfaces
