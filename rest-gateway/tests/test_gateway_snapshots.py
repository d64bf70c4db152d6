"""/vms/{name}/snapshots against the real API server (no operator: phases are set by the test)."""

from __future__ import annotations

import pytest
from k3svirt_gateway import contract as c
from k3svirt_gateway.routes.snapshots import snapshot_path

SPEC = {"memory": {"size": "64Mi"}, "cpu": {"cores": 1}, "runStrategy": "Halted"}


def _vm(client, admin, ns, name):
    r = client.post(f"/api/v1/vms?namespace={ns}", json={"name": name, "spec": SPEC}, headers=admin)
    assert r.status_code == 201, r.json


def _set_phase(app, ns, snap, **status):
    kube = app.extensions["k3svirt.kube"]
    with app.app_context():
        kube.patch(snapshot_path(ns, snap) + "/status", {"status": status})


def test_create_list_get_delete(client, admin, namespace):
    _vm(client, admin, namespace, "web")
    _vm(client, admin, namespace, "other")
    r = client.post(f"/api/v1/vms/web/snapshots?namespace={namespace}", json={"name": "s1"}, headers=admin)
    assert r.status_code == 201, r.json
    assert r.headers["Location"].endswith(f"/api/v1/vms/web/snapshots/s1?namespace={namespace}")
    assert r.json["kind"] == c.SNAPSHOT_KIND and r.json["spec"] == {"vmName": "web"}
    r = client.post(f"/api/v1/vms/web/snapshots?namespace={namespace}", headers=admin)  # no body: a default name
    assert r.status_code == 201 and r.json["metadata"]["name"].startswith("web-")
    assert client.post(f"/api/v1/vms/other/snapshots?namespace={namespace}", json={"name": "o1"},
                       headers=admin).status_code == 201  # fmt: skip

    items = client.get(f"/api/v1/vms/web/snapshots?namespace={namespace}", headers=admin).json["items"]
    assert "s1" in {i["name"] for i in items} and len(items) == 2  # not o1: another VM's
    assert all(i["vm"] == "web" and i["phase"] == "Pending" for i in items)
    page = client.get(f"/api/v1/vms/web/snapshots?namespace={namespace}&limit=1", headers=admin).json
    assert len(page["items"]) == 1 and page["continue"]

    r = client.get(f"/api/v1/vms/web/snapshots/s1?namespace={namespace}", headers=admin)
    assert r.status_code == 200 and r.headers["ETag"]
    assert client.get(f"/api/v1/vms/other/snapshots/s1?namespace={namespace}", headers=admin).status_code == 404
    assert client.get(f"/api/v1/vms/web/snapshots/nope?namespace={namespace}", headers=admin).status_code == 404

    stale = client.delete(f"/api/v1/vms/web/snapshots/s1?namespace={namespace}",
                          headers={**admin, "If-Match": '"1"'})  # fmt: skip
    assert stale.status_code == 412 and stale.mimetype == "application/problem+json"
    assert client.delete(f"/api/v1/vms/other/snapshots/s1?namespace={namespace}", headers=admin).status_code == 404
    assert client.delete(f"/api/v1/vms/web/snapshots/s1?namespace={namespace}", headers=admin).status_code == 202
    assert client.get(f"/api/v1/vms/web/snapshots/s1?namespace={namespace}", headers=admin).status_code == 404


def test_restore_in_place_and_into_a_new_vm(app, client, admin, namespace):
    _vm(client, admin, namespace, "web")
    _vm(client, admin, namespace, "taken")
    assert client.post(f"/api/v1/vms/web/snapshots?namespace={namespace}", json={"name": "s1"},
                       headers=admin).status_code == 201  # fmt: skip
    r = client.post(f"/api/v1/vms/web/snapshots/s1/restore?namespace={namespace}", headers=admin)
    assert r.status_code == 409 and r.json["reason"] == "NotReady" and "Pending" in r.json["detail"]

    _set_phase(app, namespace, "s1", phase="Ready")
    r = client.post(f"/api/v1/vms/web/snapshots/s1/restore?namespace={namespace}", headers=admin)
    assert r.status_code == 202, r.json
    assert r.json["kind"] == c.RESTORE_KIND and r.json["spec"] == {"snapshotName": "s1"}
    r = client.post(f"/api/v1/vms/web/snapshots/s1/restore?namespace={namespace}", json={"target": "taken"},
                    headers=admin)  # fmt: skip
    assert r.status_code == 409 and r.json["reason"] == "TargetExists"
    r = client.post(f"/api/v1/vms/web/snapshots/s1/restore?namespace={namespace}",
                    json={"target": "web2", "name": "to-web2"}, headers=admin)  # fmt: skip
    assert r.status_code == 202 and r.json["spec"] == {"snapshotName": "s1", "target": {"name": "web2"}}
    assert r.json["metadata"]["name"] == "to-web2"
    assert client.post(f"/api/v1/vms/taken/snapshots/s1/restore?namespace={namespace}",
                       headers=admin).status_code == 404  # fmt: skip


def test_the_vm_must_exist_and_a_read_key_cannot_write(client, admin, reader, namespace):
    r = client.post(f"/api/v1/vms/ghost/snapshots?namespace={namespace}", json={"name": "s"}, headers=admin)
    assert r.status_code == 404 and r.mimetype == "application/problem+json"
    _vm(client, admin, namespace, "web")
    assert client.post(f"/api/v1/vms/web/snapshots?namespace={namespace}", json={"name": "s"},
                       headers=reader).status_code == 403  # fmt: skip
    assert client.get(f"/api/v1/vms/web/snapshots?namespace={namespace}", headers=reader).status_code == 200


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("snapshots", {"name": "Bad_Name"}, "name"),
        ("snapshots", {"name": "a" * 64}, "name"),
        ("snapshots", {"name": "s", "path": "/etc"}, "path"),
        ("snapshots", {"name": 5}, "name"),
        ("snapshots", ["s"], ""),
        ("snapshots/s1/restore", {"target": "../etc"}, "target"),
        ("snapshots/s1/restore", {"target": "x\ny"}, "target"),
        ("snapshots/s1/restore", {"target": "web2", "disks": ["/dev/sda"]}, "disks"),
    ],
)
def test_hostile_bodies_are_422_naming_the_field(app, client, admin, namespace, route, body, field):
    _vm(client, admin, namespace, "web")
    client.post(f"/api/v1/vms/web/snapshots?namespace={namespace}", json={"name": "s1"}, headers=admin)
    _set_phase(app, namespace, "s1", phase="Ready")
    r = client.post(f"/api/v1/vms/web/{route}?namespace={namespace}", json=body, headers=admin)
    assert r.status_code == 422 and r.mimetype == "application/problem+json", r.json
    assert any(e["field"] == field for e in r.json["errors"]), r.json


@pytest.mark.parametrize(
    ("data", "ctype", "status"),
    [("{", "application/json", 400), ("name: s", "text/plain", 415), ('{"name": NaN}', "application/json", 400)],
)
def test_malformed_bodies(client, admin, namespace, data, ctype, status):
    _vm(client, admin, namespace, "web")
    r = client.post(f"/api/v1/vms/web/snapshots?namespace={namespace}", data=data,
                    headers={**admin, "Content-Type": ctype})  # fmt: skip
    assert r.status_code == status and r.mimetype == "application/problem+json"


@pytest.mark.parametrize("snap", ["Bad_Name", "a" * 64, ".hidden", "a.b"])
def test_hostile_snapshot_names_in_the_path_are_422(client, admin, namespace, snap):
    for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", "/restore")):
        r = client.open(f"/api/v1/vms/web/snapshots/{snap}{suffix}?namespace={namespace}", method=method,
                        headers=admin)  # fmt: skip
        assert r.status_code in (404, 422) and r.mimetype == "application/problem+json", (method, r.status_code)
