"""/deployments, /services, /pods, /namespaces against the real API server (and controller-manager).

Images are localhost/ names that no node has: with a kubelet a pull attempt goes to loopback only."""

from __future__ import annotations

from k3svirt_gateway.k8s import core_path, group_path

from tests.polling import poll

MISSING = "localhost/k3svirt/not-imported:0.1"


def test_deployment_lifecycle(client, admin, namespace):
    base = f"/api/v1/deployments?namespace={namespace}"
    r = client.post(
        base,
        headers=admin,
        json={
            "name": "web",
            "image": MISSING,
            "replicas": 2,
            "ports": [{"port": 80, "name": "http"}],
            "env": {"MODE": "x"},
        },
    )
    assert r.status_code == 201, r.json
    assert r.json["replicas"] == 2 and r.json["env"] == {"MODE": "x"} and r.json["image"] == MISSING
    assert r.json["imagePullPolicy"] == "IfNotPresent"
    assert client.post(base, headers=admin, json={"name": "web", "image": "x"}).status_code == 409
    assert [d["name"] for d in client.get(base, headers=admin).json["items"]] == ["web"]
    one = f"/api/v1/deployments/web?namespace={namespace}"
    assert client.get(one, headers=admin).json["ports"] == [{"name": "http", "containerPort": 80, "protocol": "TCP"}]
    scale = f"/api/v1/deployments/web/scale?namespace={namespace}"
    assert client.patch(scale, headers=admin, json={"replicas": 0}).json["replicas"] == 0
    assert client.post(scale, headers=admin, json={"replicas": 3}).json["replicas"] == 3
    r = client.post(scale, headers=admin, json={"replicas": -1})
    assert r.status_code == 422 and r.json["errors"][0]["field"] == "replicas"
    r = client.delete(one, headers=admin)
    assert r.status_code == 202 and "ReplicaSets and Pods" in r.json["message"]
    # Foreground deletion: visible (deleting) until the garbage collector removed its dependents
    assert poll(lambda: client.get(one, headers=admin).status_code == 404, 60.0, 0.5), "deployment never went away"


def test_deployment_patch_rolls_out_a_new_replicaset(app, client, admin, namespace):
    kube = app.extensions["k3svirt.kube"]
    base = f"/api/v1/deployments?namespace={namespace}"
    one = f"/api/v1/deployments/roll?namespace={namespace}"
    r = client.post(base, headers=admin, json={"name": "roll", "image": MISSING, "env": {"A": "1", "B": "2"}})
    assert r.status_code == 201, r.json

    def replicasets():
        items = kube.get(group_path("apps", "v1", "replicasets", namespace)).get("items", [])
        return {rs["spec"]["template"]["spec"]["containers"][0]["image"]: rs for rs in items}

    assert poll(lambda: MISSING in replicasets(), 60.0, 0.5), "the controller-manager made no ReplicaSet"
    new_image = "localhost/k3svirt/not-imported:0.2"
    r = client.patch(one, headers=admin, json={"image": new_image, "env": {"B": "3"}, "args": ["-v"]})
    assert r.status_code == 200, r.json
    assert (r.json["image"], r.json["env"], r.json["args"], r.json["generation"]) == (new_image, {"B": "3"}, ["-v"], 2)
    assert r.json["rollout"] == "Progressing"
    # a new ReplicaSet for the new template, owned by the Deployment, next to the old one
    sets = poll(lambda: (lambda s: s if new_image in s else None)(replicasets()), 60.0, 0.5)
    assert sets and set(sets) == {MISSING, new_image}
    assert all(rs["metadata"]["ownerReferences"][0]["name"] == "roll" for rs in sets.values())
    # replicas only: no new template, no new ReplicaSet; scale to 0 and back
    r = client.patch(one, headers=admin, json={"replicas": 0})
    assert r.status_code == 200 and r.json["replicas"] == 0 and r.json["image"] == new_image
    assert poll(lambda: client.get(one, headers=admin).json["rollout"] == "Complete", 60.0, 0.5)
    assert client.patch(one, headers=admin, json={"replicas": 2}).json["replicas"] == 2
    assert set(replicasets()) == {MISSING, new_image}
    for body, field in (
        ({}, ""),
        ({"replicas": 101}, "replicas"),
        ({"image": "has space"}, "image"),
        ({"resources": {"limits": {"cpu": "lots"}}}, "resources.limits.cpu"),
        ({"name": "renamed"}, "name"),
    ):
        r = client.patch(one, headers=admin, json=body)
        assert r.status_code == 422 and r.json["errors"][0]["field"] == field, (body, r.json)
    r = client.patch(f"/api/v1/deployments/nope?namespace={namespace}", headers=admin, json={"replicas": 1})
    assert r.status_code == 404
    # the API server's own rule (requests above limits) comes back as 422 naming its field
    r = client.patch(one, headers=admin, json={"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}})
    assert r.status_code == 422 and "resources.requests" in r.json["errors"][0]["field"], r.json


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
    """No node runs the pod here (ready_node tests cover a running one): the gateway must say so."""
    kube = app.extensions["k3svirt.kube"]
    kube.post(
        core_path("pods", namespace),
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p1", "labels": {"app": "p"}},
            "spec": {"nodeName": "gwt-no-such-node", "containers": [{"name": "c", "image": MISSING}]},
        },
    )
    kube.post(
        core_path("pods", namespace),
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p2", "labels": {"app": "q"}},
            "spec": {
                "containers": [{"name": "a", "image": MISSING}, {"name": "b", "image": MISSING}],
                "schedulingGates": [{"name": "k3svirt.io/test"}],
            },
        },
    )
    items = client.get(f"/api/v1/pods?namespace={namespace}&labelSelector=app%3Dp", headers=admin).json["items"]
    assert [(p["name"], p["phase"], p["status"], p["ready"], p["readyContainers"]) for p in items] == [
        ("p1", "Pending", "Pending", False, "0/1")
    ]
    assert items[0]["containers"] == [
        {"name": "c", "image": MISSING, "state": "waiting", "ready": False, "restarts": 0}
    ]
    p2 = client.get(f"/api/v1/pods/p2?namespace={namespace}", headers=admin).json
    assert p2["node"] == "" and p2["status"] == "SchedulingGated" and p2["readyContainers"] == "0/2"
    logs = f"/api/v1/pods/p1/logs?namespace={namespace}"
    r = client.get(logs, headers=admin)
    assert r.status_code == 409 and r.mimetype == "application/problem+json"
    assert r.json["podStatus"] == "Pending" and "has not been created yet" in r.json["detail"]
    assert r.json["containers"][0]["name"] == "c"
    r = client.get(f"/api/v1/pods/p2/logs?namespace={namespace}&container=a", headers=admin)
    assert r.status_code == 409 and "not scheduled" in r.json["detail"]
    assert client.get(f"/api/v1/pods/nope/logs?namespace={namespace}", headers=admin).status_code == 404
    r = client.get(f"/api/v1/pods?namespace={namespace}&labelSelector=%21%21bad", headers=admin)
    assert r.status_code == 400


def test_log_parameters_are_validated(app, client, admin, namespace):
    kube = app.extensions["k3svirt.kube"]
    kube.post(
        core_path("pods", namespace),
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "two"},
            "spec": {"containers": [{"name": "a", "image": MISSING}, {"name": "b", "image": MISSING}]},
        },
    )
    base = f"/api/v1/pods/two/logs?namespace={namespace}"
    for query, field in (
        ("&container=a&tailLines=-1", "tailLines"),
        ("&container=a&tailLines=100001", "tailLines"),
        ("&container=a&tailLines=ten", "tailLines"),
        ("&container=a&tailLines=1.5", "tailLines"),
        ("&container=a&sinceSeconds=0", "sinceSeconds"),
        ("&container=a&limitBytes=0", "limitBytes"),
        ("&container=a&limitBytes=99999999", "limitBytes"),
        ("&container=a&previous=yes", "previous"),
        ("&container=a&timestamps=1", "timestamps"),
        ("&container=Bad_Name", "container"),
        ("", "container"),  # two containers: which one?
        ("&container=c", "container"),  # no such container
    ):
        r = client.get(base + query, headers=admin)
        assert r.status_code == 400, (query, r.json)
        assert r.mimetype == "application/problem+json" and r.json["errors"][0]["field"] == field, (query, r.json)
        assert field in r.json["detail"]
    r = client.get(base + "&container=b&tailLines=5&previous=true&timestamps=true&sinceSeconds=60", headers=admin)
    assert r.status_code == 409, r.json  # valid, but nothing ran


def test_namespaces(client, admin, namespace):
    names = [n["name"] for n in client.get("/api/v1/namespaces", headers=admin).json["items"]]
    assert namespace in names and "default" in names
    r = client.get(f"/api/v1/namespaces/{namespace}", headers=admin)
    assert r.status_code == 200 and r.json["labels"]["app.kubernetes.io/managed-by"] == "k3svirt-gateway"
    assert client.post("/api/v1/namespaces", headers=admin, json={"name": namespace}).status_code == 409
    for protected in ("default", "kube-system"):
        assert client.delete(f"/api/v1/namespaces/{protected}", headers=admin).status_code == 403
    assert client.delete("/api/v1/namespaces/gwt-never-existed", headers=admin).status_code == 404
