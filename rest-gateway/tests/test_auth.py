"""Authentication and roles."""

from __future__ import annotations

import base64
from pathlib import Path


def test_public_routes_need_no_key(client):
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        assert client.get(path).status_code == 200, path


def test_missing_key_is_401_with_challenge(client):
    r = client.get("/api/v1/vms")
    assert r.status_code == 401
    assert r.mimetype == "application/problem+json"
    assert "Bearer" in r.headers["WWW-Authenticate"]
    assert r.json["status"] == 401


def test_wrong_key_is_401(client):
    for headers in (
        {"Authorization": "Bearer nope"},
        {"X-API-Key": "k3sv_wrong"},
        {"Authorization": "Basic " + base64.b64encode(b"u:bad").decode()},
        {"Authorization": "Basic !!!notbase64"},
    ):
        r = client.get("/api/v1/vms", headers=headers)
        assert r.status_code == 401, headers
        assert "WWW-Authenticate" in r.headers


def test_read_key_can_read_not_write(client, reader, namespace):
    assert client.get(f"/api/v1/vms?namespace={namespace}", headers=reader).status_code == 200
    r = client.post(
        f"/api/v1/vms?namespace={namespace}", headers=reader, json={"name": "x", "spec": {"memory": {"size": "64Mi"}}}
    )
    assert r.status_code == 403
    assert r.json["title"] == "Forbidden"
    assert client.delete(f"/api/v1/vms/x?namespace={namespace}", headers=reader).status_code == 403
    assert client.post("/api/v1/namespaces", headers=reader, json={"name": "zz"}).status_code == 403


def test_all_key_forms_accepted(client, keys, namespace):
    key = keys["admin"]
    for headers in (
        {"Authorization": f"Bearer {key}"},
        {"X-API-Key": key},
        {"Authorization": "Basic " + base64.b64encode(f"anyone:{key}".encode()).decode()},
    ):
        assert client.get(f"/api/v1/vms?namespace={namespace}", headers=headers).status_code == 200


def test_key_file_stores_only_hashes(keys):
    text = Path(keys["file"]).read_text()
    assert keys["admin"] not in text and keys["reader"] not in text
    assert "admin:admin:sha256:" in text and "reader:read:sha256:" in text


def test_key_file_reloaded_on_change(client, keys, tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "k3svirt_gateway.keys", "add", "late", "--file", keys["file"]],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert client.get("/api/v1/namespaces", headers={"X-API-Key": out}).status_code == 200
    subprocess.run([sys.executable, "-m", "k3svirt_gateway.keys", "remove", "late", "--file", keys["file"]], check=True)
    assert client.get("/api/v1/namespaces", headers={"X-API-Key": out}).status_code == 401


def test_keys_from_secret(gw_kubeconfig, app, namespace):
    """K3SVIRT_API_KEYS_SECRET=namespace/name: same content as the file, in data.keys."""
    from k3svirt_gateway import create_app
    from k3svirt_gateway.auth import format_entry
    from k3svirt_gateway.k8s import core_path

    key = "k3sv_secret-test-key"
    content = format_entry("ops", "admin", key) + "\n"
    kube = app.extensions["k3svirt.kube"]
    kube.post(
        core_path("secrets", namespace),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "gw-keys"},
            "data": {"keys": base64.b64encode(content.encode()).decode()},
        },
    )
    app2 = create_app({"KUBECONFIG": gw_kubeconfig, "API_KEYS_FILE": None, "API_KEYS_SECRET": f"{namespace}/gw-keys"})
    c = app2.test_client()
    assert c.get("/api/v1/namespaces", headers={"X-API-Key": key}).status_code == 200
    assert c.get("/api/v1/namespaces", headers={"X-API-Key": key + "x"}).status_code == 401
