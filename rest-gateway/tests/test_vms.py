"""/vms against the real API server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import PRESET_YAML, import_template
from k3svirt_gateway import contract as c
from k3svirt_gateway.routes.vms import vm_path

SPEC = {"memory": {"size": "64Mi"}, "cpu": {"cores": 1}}


def create(client, admin, ns, name="vm1", **body):
    body = body or {"spec": SPEC}
    return client.post(f"/api/v1/vms?namespace={ns}", json={"name": name, **body}, headers=admin)


def test_create_from_spec_get_list_delete(client, admin, namespace):
    r = create(client, admin, namespace)
    assert r.status_code == 201, r.json
    assert r.headers["Location"].endswith(f"/api/v1/vms/vm1?namespace={namespace}")
    assert r.json["spec"]["memory"]["size"] == "64Mi"
    assert "managedFields" not in r.json["metadata"]
    r = client.get(f"/api/v1/vms/vm1?namespace={namespace}", headers=admin)
    assert r.status_code == 200 and r.json["kind"] == "VirtualMachine"
    items = client.get(f"/api/v1/vms?namespace={namespace}", headers=admin).json["items"]
    assert items == [
        {
            **items[0],
            "name": "vm1",
            "namespace": namespace,
            "runStrategy": "Always",
            "printableStatus": "Pending",
            "ready": False,
        }
    ]
    r = client.delete(f"/api/v1/vms/vm1?namespace={namespace}", headers=admin)
    assert r.status_code == 202
    r = client.get(f"/api/v1/vms/vm1?namespace={namespace}", headers=admin)  # gone, or finalizing (operator)
    assert r.status_code == 404 or r.json["metadata"].get("deletionTimestamp")


def test_duplicate_is_409(client, admin, namespace):
    assert create(client, admin, namespace).status_code == 201
    r = create(client, admin, namespace)
    assert r.status_code == 409 and r.json["reason"] == "AlreadyExists"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"spec": {"memory": {"size": "64Mi"}, "cpu": {"cores": 0}}}, "spec.cpu.cores"),
        ({"spec": {"memory": {"size": "lots"}}}, "spec.memory.size"),
        ({"spec": {"memory": {"size": "64Mi"}, "runStrategy": "Sometimes"}}, "spec.runStrategy"),
        ({"spec": {"memory": {"size": "1Gi", "maxSize": "512Mi"}}}, "spec.memory.maxSize"),  # a CEL rule
        ({"spec": "no"}, "spec"),
        ({}, "spec"),
    ],
)
def test_invalid_spec_names_field(client, admin, namespace, body, field):
    r = client.post(f"/api/v1/vms?namespace={namespace}", json={"name": "bad", **body}, headers=admin)
    assert r.status_code == 422, r.json
    assert r.mimetype == "application/problem+json"
    assert any(e["field"] == field for e in r.json["errors"]), r.json


def test_invalid_vm_name_422(client, admin, namespace):
    r = client.post(f"/api/v1/vms?namespace={namespace}", json={"name": "Not_OK", "spec": SPEC}, headers=admin)
    assert r.status_code == 422 and r.json["errors"][0]["field"] == "name"


def test_api_server_validation_is_422_with_field(client, admin, namespace):
    """CEL rules only the API server evaluates still come back as 422 naming the field."""
    r = client.post(
        f"/api/v1/vms?namespace={namespace}", headers=admin, json={"name": "cel", "spec": {"cpu": {"cores": 1}}}
    )  # no memory.size, no template
    assert r.status_code == 422, r.json
    assert r.json["errors"][0]["field"].startswith("spec")


def test_create_from_template_presets_overrides(client, admin, namespace):
    import_template(client, admin, namespace, "small")
    import_template(client, admin, namespace, "fast", PRESET_YAML.format(name="fast"))
    r = client.post(
        f"/api/v1/vms?namespace={namespace}",
        headers=admin,
        json={
            "name": "fromtmpl",
            "template": {"name": "small", "version": "1.0.0"},
            "presets": ["fast"],
            "overrides": {"cpu": {"cores": 2}, "runStrategy": "Manual"},
        },
    )
    assert r.status_code == 201, r.json
    spec = r.json["spec"]
    assert spec["template"] == {"name": "small", "version": "1.0.0"}
    assert spec["presets"] == [{"name": "fast"}]
    assert spec["cpu"] == {"cores": 2} and spec["runStrategy"] == "Manual"
    summary = client.get(f"/api/v1/vms?namespace={namespace}", headers=admin).json["items"][0]
    assert summary["template"] == "small" and summary["templateVersion"] == "1.0.0"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"template": {"name": "ghost"}}, "template.name"),
        ({"template": {"name": "small", "version": "9.9.9"}}, "template.version"),
        ({"template": {"name": "small"}, "overrides": {"cpu": {"cores": -1}}}, "overrides.cpu.cores"),
        ({"template": {"name": "small"}, "presets": ["small"]}, "presets[0].name"),
        ({"template": {"name": "small"}, "overrides": {"template": {"name": "x"}}}, "overrides.template"),
        # the reference rules are the CRD's (spec.template, spec.presets), not re-declared by the gateway
        ({"template": {"name": "Bad_Name"}}, "template.name"),
        ({"template": {"name": "small", "version": "-x-"}}, "template.version"),
        ({"template": {"name": "small", "extra": 1}}, "template.extra"),
        ({"template": {"name": "small"}, "presets": ["p"] * 17}, "presets"),
        ({"template": {"name": "small"}, "presets": [{"name": "UPPER"}]}, "presets[0].name"),
        ({"template": {"name": "small"}, "presets": ["UPPER"]}, "presets[0].name"),
    ],
)
def test_template_request_errors_name_field(client, admin, namespace, body, field):
    import_template(client, admin, namespace, "small")
    r = client.post(f"/api/v1/vms?namespace={namespace}", headers=admin, json={"name": "tv", **body})
    assert r.status_code == 422, r.json
    assert any(e["field"] == field for e in r.json["errors"]), r.json


def _vm(app, ns, name):
    return app.extensions["k3svirt.kube"].get(vm_path(ns, name))


def test_start_stop_patch_run_strategy(app, client, admin, namespace):
    create(client, admin, namespace)
    r = client.post(f"/api/v1/vms/vm1/stop?namespace={namespace}", headers=admin)
    assert r.status_code == 202 and r.json["runStrategy"] == "Halted"
    assert _vm(app, namespace, "vm1")["spec"]["runStrategy"] == "Halted"
    r = client.post(f"/api/v1/vms/vm1/start?namespace={namespace}", headers=admin)
    assert r.status_code == 202
    assert _vm(app, namespace, "vm1")["spec"]["runStrategy"] == "Always"


def test_manual_strategy_uses_action_annotation(app, client, admin, namespace):
    create(client, admin, namespace, spec={**SPEC, "runStrategy": "Manual"})
    for action, word in (("start", "start"), ("stop", "stop"), ("reboot", "restart")):
        r = client.post(f"/api/v1/vms/vm1/{action}?namespace={namespace}", headers=admin)
        assert r.status_code == 202, r.json
        value = _vm(app, namespace, "vm1")["metadata"]["annotations"][c.ACTION_ANNOTATION]
        assert value == r.json["requestId"] and value.startswith(f"{word}/")
        assert _vm(app, namespace, "vm1")["spec"]["runStrategy"] == "Manual"


def test_reboot_sets_restart_annotation_any_strategy(app, client, admin, namespace):
    create(client, admin, namespace)
    r = client.post(f"/api/v1/vms/vm1/reboot?namespace={namespace}", headers=admin)
    assert r.status_code == 202
    ann = _vm(app, namespace, "vm1")["metadata"]["annotations"][c.ACTION_ANNOTATION]
    assert ann.startswith("restart/")
    client.post(f"/api/v1/vms/vm1/stop?namespace={namespace}", headers=admin)
    assert client.post(f"/api/v1/vms/vm1/reboot?namespace={namespace}", headers=admin).status_code == 409


def test_actions_on_missing_vm_404(client, admin, namespace):
    for action in ("start", "stop", "reboot"):
        assert client.post(f"/api/v1/vms/nope/{action}?namespace={namespace}", headers=admin).status_code == 404


class _Stats(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = json.dumps({"cpuPercent": 12.5, "memoryUsedBytes": 1234}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _set_status(app, ns, name, status):
    app.extensions["k3svirt.kube"].patch(vm_path(ns, name, "status"), {"status": status})


def test_stats(app, client, admin, namespace):
    create(client, admin, namespace)
    url = f"/api/v1/vms/vm1/stats?namespace={namespace}"
    r = client.get(url, headers=admin)
    assert r.status_code == 409 and r.mimetype == "application/problem+json"  # not running
    _set_status(app, namespace, "vm1", {"printableStatus": "Running"})
    assert client.get(url, headers=admin).status_code == 503  # no endpoint published
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Stats)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        port = srv.server_address[1]
        _set_status(app, namespace, "vm1", {"monitoring": {"endpoint": f"http://127.0.0.1:{port}/vm1"}})
        r = client.get(url, headers=admin)
        assert r.status_code == 200 and r.json == {"cpuPercent": 12.5, "memoryUsedBytes": 1234}
    finally:
        srv.shutdown()
        srv.server_close()
    r = client.get(url, headers=admin)  # endpoint gone
    assert r.status_code == 503 and r.mimetype == "application/problem+json"
