"""PATCH (JSON merge patch of the spec) and PUT (the whole spec) of a VM, against the real API server."""

from __future__ import annotations

import pytest

SPEC = {"memory": {"size": "64Mi"}, "cpu": {"cores": 1}, "runStrategy": "Halted"}


@pytest.fixture()
def vm(client, admin, namespace) -> str:
    r = client.post(f"/api/v1/vms?namespace={namespace}", json={"name": "ed", "spec": SPEC}, headers=admin)
    assert r.status_code == 201, r.json
    return f"/api/v1/vms/ed?namespace={namespace}"


def patch(client, admin, url, body, **headers):
    return client.patch(url, json=body, headers={**admin, **headers, "Content-Type": "application/merge-patch+json"})


def test_merge_patch_changes_only_what_it_names(client, admin, vm):
    r = patch(client, admin, vm, {"spec": {"memory": {"size": "96Mi"}, "cpu": {"sockets": 2}}})
    assert r.status_code == 200, r.json
    spec = r.json["spec"]
    assert spec["memory"] == {"size": "96Mi"} and spec["cpu"] == {"cores": 1, "sockets": 2}
    assert spec["runStrategy"] == "Halted"
    assert r.json["metadata"]["generation"] == 2


def test_null_removes_a_field(client, admin, vm):
    r = patch(client, admin, vm, {"spec": {"cpu": None}})
    assert r.status_code == 200, r.json
    assert "cpu" not in r.json["spec"]


def test_put_replaces_the_whole_spec(client, admin, vm):
    r = client.put(vm, json={"spec": {"memory": {"size": "32Mi"}}}, headers=admin)
    assert r.status_code == 200, r.json
    spec = r.json["spec"]
    assert spec["memory"] == {"size": "32Mi"} and "cpu" not in spec
    assert spec["runStrategy"] == "Always"  # the CRD's default again: Halted was replaced too


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"spec": {"cpu": {"cores": 0}}}, "spec.cpu.cores"),
        ({"spec": {"memory": {"size": "lots"}}}, "spec.memory.size"),
        ({"spec": {"cpu": {"sockets": 2, "cores": 2, "maxVcpus": 3}}}, "spec.cpu.maxVcpus"),
        ({"spec": {"memory": None}}, "spec.memory.size"),  # the merged spec must still be valid
        ({"spec": {"nope": 1}}, "spec"),
        ({"metadata": {"labels": {"a": "b"}}}, "metadata"),
        ({"spec": "no"}, "spec"),
    ],
)
def test_invalid_result_names_the_field_and_changes_nothing(client, admin, vm, body, field):
    before = client.get(vm, headers=admin).json
    r = patch(client, admin, vm, body)
    assert r.status_code == 422, r.json
    assert any(e["field"].startswith(field) for e in r.json["errors"]), r.json
    after = client.get(vm, headers=admin).json
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_put_validates_like_create(client, admin, vm):
    r = client.put(vm, json={"spec": {"memory": {"size": "64Mi"}, "cpu": {"threads": 99}}}, headers=admin)
    assert r.status_code == 422 and r.json["errors"][0]["field"] == "spec.cpu.threads", r.json


def test_if_match_stale_is_412_current_is_applied(client, admin, vm):
    etag = client.get(vm, headers=admin).headers["ETag"]
    assert patch(client, admin, vm, {"spec": {"memory": {"size": "80Mi"}}}, **{"If-Match": etag}).status_code == 200
    r = patch(client, admin, vm, {"spec": {"memory": {"size": "90Mi"}}}, **{"If-Match": etag})
    assert r.status_code == 412 and r.json["type"].endswith("/precondition-failed"), r.json
    assert client.get(vm, headers=admin).json["spec"]["memory"]["size"] == "80Mi"
    r = client.put(vm, json={"spec": SPEC}, headers={**admin, "If-Match": etag})
    assert r.status_code == 412


def test_edits_need_admin_and_the_namespace(client, reader, vm):
    assert patch(client, reader, vm, {"spec": {"memory": {"size": "80Mi"}}}).status_code == 403


def test_missing_vm_is_404(client, admin, namespace):
    r = patch(client, admin, f"/api/v1/vms/nope?namespace={namespace}", {"spec": {}})
    assert r.status_code == 404


def test_wrong_media_type_is_415(client, admin, vm):
    r = client.patch(vm, data="spec: {}", headers={**admin, "Content-Type": "application/yaml"})
    assert r.status_code == 415
