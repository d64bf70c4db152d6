"""/deployments, /services, /pods, /namespaces."""

from __future__ import annotations

from k3svirt_gateway.k8s import core_path


def test_deployment_lifecycle(client, admin, namespace):
    base = f"/api/v1/deployments?namespace={namespace}"
    r = client.post(
        base,
        headers=admin,
        json={
            "name": "web",
            "image": "nginx:1.27",
            "replicas": 2,
            "ports": [{"port": 80, "name": "http"}],
            "env": {"MODE": "x"},
        },
    )
    assert r.status_code == 201, r.json
    assert r.json["replicas"] == 2 and r.json["env"] == {"MODE": "x"} and r.json["image"] == "nginx:1.27"
    assert client.post(base, headers=admin, json={"name": "web", "image": "x"}).status_code == 409
    assert [d["name"] for d in client.get(base, headers=admin).json["items"]] == ["web"]
    one = f"/api/v1/deployments/web?namespace={namespace}"
    assert client.get(one, headers=admin).json["ports"] == [{"name": "http", "containerPort": 80, "protocol": "TCP"}]
    scale = f"/api/v1/deployments/web/scale?namespace={namespace}"
    assert client.patch(scale, headers=admin, json={"replicas": 0}).json["replicas"] == 0
    assert client.post(scale, headers=admin, json={"replicas": 3}).json["replicas"] == 3
    r = client.post(scale, headers=admin, json={"replicas": -1})
    assert r.status_code == 422 and r.json["errors"][0]["field"] == "replicas"
    assert client.delete(one, headers=admin).status_code == 202
    assert client.get(one, headers=admin).status_code == 404


def test_deployment_validation(client, admin, namespace):
    base = f"/api/v1/deployments?namespace={namespace}"
    for body, field in (
        ({"name": "w"}, "image"),
        ({"name": "w", "image": "x", "replicas": "2"}, "replicas"),
        ({"name": "w", "image": "x", "ports": [{"port": 70000}]}, "ports[0].port"),
        ({"name": "w", "image": "x", "bogus": 1}, "bogus"),
    ):
        r = client.post(base, headers=admin, json=body)
        assert r.status_code == 422, body
        assert r.json["errors"][0]["field"] == field, r.json


def test_service_lifecycle(client, admin, namespace):
    base = f"/api/v1/services?namespace={namespace}"
    r = client.post(
        base, headers=admin, json={"name": "web", "deployment": "web", "ports": [{"port": 80, "targetPort": 8080}]}
    )
    assert r.status_code == 201, r.json
    assert r.json["selector"] == {"app": "web"} and r.json["ports"][0]["targetPort"] == 8080
    assert r.json["clusterIP"]
    assert [s["name"] for s in client.get(base, headers=admin).json["items"]] == ["web"]
    assert client.get(f"/api/v1/services/web?namespace={namespace}", headers=admin).status_code == 200
    assert client.post(base, headers=admin, json={"name": "x", "ports": []}).status_code == 422
    assert client.delete(f"/api/v1/services/web?namespace={namespace}", headers=admin).status_code == 202
    assert client.get(f"/api/v1/services/web?namespace={namespace}", headers=admin).status_code == 404


def test_pods_list_get_logs_without_kubelet(app, client, admin, namespace):
    kube = app.extensions["k3svirt.kube"]
    kube.post(
        core_path("pods", namespace),
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p1", "labels": {"app": "p"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        },
    )
    items = client.get(f"/api/v1/pods?namespace={namespace}&labelSelector=app%3Dp", headers=admin).json["items"]
    assert [(p["name"], p["phase"], p["ready"], p["containers"]) for p in items] == [("p1", "Pending", False, ["c"])]
    assert client.get(f"/api/v1/pods/p1?namespace={namespace}", headers=admin).json["node"] == ""
    r = client.get(f"/api/v1/pods/p1/logs?namespace={namespace}", headers=admin)
    assert r.status_code == 409 and r.mimetype == "application/problem+json"
    assert client.get(f"/api/v1/pods/nope/logs?namespace={namespace}", headers=admin).status_code == 404
    r = client.get(f"/api/v1/pods?namespace={namespace}&labelSelector=%21%21bad", headers=admin)
    assert r.status_code == 400


def test_namespaces(client, admin, namespace):
    names = [n["name"] for n in client.get("/api/v1/namespaces", headers=admin).json["items"]]
    assert namespace in names and "default" in names
    r = client.get(f"/api/v1/namespaces/{namespace}", headers=admin)
    assert r.status_code == 200 and r.json["labels"]["app.kubernetes.io/managed-by"] == "k3svirt-gateway"
    assert client.post("/api/v1/namespaces", headers=admin, json={"name": namespace}).status_code == 409
    for protected in ("default", "kube-system"):
        assert client.delete(f"/api/v1/namespaces/{protected}", headers=admin).status_code == 409
    assert client.delete("/api/v1/namespaces/gwt-never-existed", headers=admin).status_code == 404
