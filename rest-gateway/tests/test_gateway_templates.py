"""/templates: import (YAML/JSON), versions, export, delete protection."""

from __future__ import annotations

import json
import time

import yaml
from helpers import TEMPLATE_YAML, import_template
from k3svirt_gateway.routes.vms import vm_path

V2 = """\
    - version: 1.1.0
      vm:
        cpu: {cores: 2}
        memory: {size: 256Mi}
"""


def test_import_yaml_get_list_export(client, admin, namespace):
    out = import_template(client, admin, namespace, "small")
    assert out["versions"] == ["1.0.0"] and out["latest"] == "1.0.0"
    r = client.get(f"/api/v1/templates/small?namespace={namespace}", headers=admin)
    assert r.status_code == 200 and r.json["spec"]["kind"] == "Template"
    items = client.get(f"/api/v1/templates?namespace={namespace}", headers=admin).json["items"]
    assert [(i["name"], i["kind"], i["versions"]) for i in items] == [("small", "Template", ["1.0.0"])]
    r = client.get(f"/api/v1/templates/small/export?namespace={namespace}&version=1.0.0", headers=admin)
    assert r.status_code == 200 and r.mimetype == "application/yaml"
    doc = yaml.safe_load(r.get_data(as_text=True))
    assert doc["metadata"] == {"name": "small"} and [v["version"] for v in doc["spec"]["versions"]] == ["1.0.0"]
    assert (
        client.get(f"/api/v1/templates/small/export?namespace={namespace}&version=3.0.0", headers=admin).status_code
        == 404
    )


def test_import_json_and_publish_new_version(client, admin, namespace):
    doc = yaml.safe_load(TEMPLATE_YAML.format(name="j"))
    r = client.post(
        f"/api/v1/templates?namespace={namespace}",
        data=json.dumps(doc),
        headers={**admin, "Content-Type": "application/json"},
    )
    assert r.status_code == 201, r.json
    # same content again: unchanged, 200
    assert import_template(client, admin, namespace, "j")["versions"] == ["1.0.0"]
    out = import_template(client, admin, namespace, "j", TEMPLATE_YAML.format(name="j") + V2)
    assert out["versions"] == ["1.0.0", "1.1.0"] and out["latest"] == "1.1.0"
    # exported YAML round-trips
    text = client.get(f"/api/v1/templates/j/export?namespace={namespace}", headers=admin).get_data(as_text=True)
    assert import_template(client, admin, namespace, "j", text)["versions"] == ["1.0.0", "1.1.0"]


def test_changing_published_version_is_409(client, admin, namespace):
    import_template(client, admin, namespace, "small")
    edited = TEMPLATE_YAML.format(name="small").replace("128Mi", "512Mi")
    r = client.post(
        f"/api/v1/templates?namespace={namespace}", data=edited, headers={**admin, "Content-Type": "application/yaml"}
    )
    assert r.status_code == 409, r.json
    assert r.json["errors"][0]["field"].startswith("spec.versions[0]")


def test_invalid_template_is_422(client, admin, namespace):
    bad = TEMPLATE_YAML.format(name="bad").replace("cores: 1", "cores: 0")
    r = client.post(
        f"/api/v1/templates?namespace={namespace}", data=bad, headers={**admin, "Content-Type": "application/yaml"}
    )
    assert r.status_code == 422
    assert any("cpu.cores" in e["field"] for e in r.json["errors"]), r.json
    r = client.post(
        f"/api/v1/templates?namespace={namespace}", data="a: [", headers={**admin, "Content-Type": "application/yaml"}
    )
    assert r.status_code == 422
    r = client.post(
        f"/api/v1/templates?namespace={namespace}", data="x", headers={**admin, "Content-Type": "text/plain"}
    )
    assert r.status_code == 415


def test_delete_refused_while_referenced(app, client, admin, namespace):
    import_template(client, admin, namespace, "small")
    r = client.post(
        f"/api/v1/vms?namespace={namespace}", headers=admin, json={"name": "user", "template": {"name": "small"}}
    )
    assert r.status_code == 201, r.json
    r = client.delete(f"/api/v1/templates/small?namespace={namespace}", headers=admin)
    assert r.status_code == 409 and "user" in r.json["detail"]
    client.delete(f"/api/v1/vms/user?namespace={namespace}", headers=admin)
    # a terminating VM still references the template; wait for the operator's finalizer (or drop it)
    deadline = time.monotonic() + 20
    while client.get(f"/api/v1/vms/user?namespace={namespace}", headers=admin).status_code != 404:
        if time.monotonic() > deadline:
            app.extensions["k3svirt.kube"].patch(vm_path(namespace, "user"), {"metadata": {"finalizers": None}})
            deadline = float("inf")
        time.sleep(0.5)
    assert client.delete(f"/api/v1/templates/small?namespace={namespace}", headers=admin).status_code == 202
    assert client.get(f"/api/v1/templates/small?namespace={namespace}", headers=admin).status_code == 404
