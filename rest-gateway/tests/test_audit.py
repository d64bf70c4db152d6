"""The audit log: one structured line per write through the real gateway process, never a key or a body."""

from __future__ import annotations

import json
import time
import uuid

import requests

from tests.gateway_proc import gateway


def _audit_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        _, sep, payload = line.partition(" k3svirt_gateway.audit audit ")
        if sep:
            out.append(json.loads(payload))
    return out


def test_one_audit_line_per_write(gw_kubeconfig, keys, tmp_path):
    log = tmp_path / "gateway.log"
    ns = f"gwt-audit-{uuid.uuid4().hex[:8]}"
    secret_env = f"s3cr3t-{uuid.uuid4().hex}"
    env = {"KUBECONFIG": gw_kubeconfig, "K3SVIRT_API_KEYS_FILE": keys["file"], "K3SVIRT_API_KEYS_SECRET": ""}
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    with gateway(env, log) as (url, _proc):
        api = url + "/api/v1"
        try:
            assert requests.post(f"{api}/namespaces", json={"name": ns}, headers=admin, timeout=10).status_code == 201
            r = requests.post(
                f"{api}/deployments?namespace={ns}",
                json={"name": "web", "image": "localhost/x:1", "env": {"TOKEN": secret_env}},
                headers=admin,
                timeout=10,
            )
            assert r.status_code == 201, r.text
            assert requests.get(f"{api}/deployments/web?namespace={ns}", headers=admin, timeout=10).status_code == 200
            tmpl = (
                "apiVersion: k3svirt.io/v1alpha1\nkind: VMTemplate\nmetadata: {name: tiny}\nspec:\n  kind: Template\n"
            )
            tmpl += "  versions:\n    - version: 1.0.0\n      vm: {memory: {size: 64Mi}}\n"
            for _ in range(2):  # created, then answered 200 as unchanged: no Location, the name still logged
                r = requests.post(f"{api}/templates?namespace={ns}", data=tmpl, timeout=10,
                                  headers={**admin, "Content-Type": "application/yaml"})  # fmt: skip
                assert r.status_code in (200, 201), r.text
            r = requests.patch(
                f"{api}/deployments/web/scale?namespace={ns}", json={"replicas": 2}, headers=admin, timeout=10
            )
            assert r.status_code == 200
            reader = {"X-API-Key": keys["reader"]}
            r = requests.delete(f"{api}/deployments/web?namespace={ns}", headers=reader, timeout=10)
            assert r.status_code == 403
            r = requests.delete(f"{api}/deployments/web?namespace={ns}", headers={"X-API-Key": "k3sv_bad"}, timeout=10)
            assert r.status_code == 401
            r = requests.delete(f"{api}/deployments/web?namespace={ns}", headers=admin, timeout=10)
            assert r.status_code == 202
        finally:
            assert requests.delete(f"{api}/namespaces/{ns}", headers=admin, timeout=10).status_code == 202
        time.sleep(0.5)  # let gunicorn's stderr reach the file
    text = log.read_text()
    lines = _audit_lines(text)
    got = [(e["method"], e["resource"], e["action"], e["namespace"], e["name"], e["status"], e["who"]) for e in lines]
    assert got == [
        ("POST", "namespaces", None, None, ns, 201, "admin"),
        ("POST", "deployments", None, ns, "web", 201, "admin"),
        ("POST", "templates", None, ns, "tiny", 201, "admin"),
        ("POST", "templates", None, ns, "tiny", 200, "admin"),
        ("PATCH", "deployments", "scale", ns, "web", 200, "admin"),
        ("DELETE", "deployments", None, ns, "web", 403, "reader"),
        ("DELETE", "deployments", None, ns, "web", 401, None),
        ("DELETE", "deployments", None, ns, "web", 202, "admin"),
        ("DELETE", "namespaces", None, None, ns, 202, "admin"),
    ], text
    assert all(e["remote"] == "127.0.0.1" and e["path"].startswith("/api/v1/") for e in lines)
    # Never the key (presented or hashed), never the body.
    for secret in (keys["admin"], keys["reader"], "k3sv_bad", secret_env):
        assert secret not in text
