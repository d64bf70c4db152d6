"""Problem responses: 400, 404, 413, 415, 422, and 503 when the API server is down."""

from __future__ import annotations

import socket

import yaml


def test_unknown_route_is_problem_404(client, admin):
    r = client.get("/api/v1/nothing", headers=admin)
    assert r.status_code == 404 and r.mimetype == "application/problem+json"


def test_not_found_object(client, admin, namespace):
    r = client.get(f"/api/v1/vms/missing?namespace={namespace}", headers=admin)
    assert r.status_code == 404 and r.mimetype == "application/problem+json"
    assert "missing" in r.json["detail"]


def test_body_too_large_413(client, admin, namespace):
    body = b'{"name": "big", "spec": {"x": "' + b"a" * (2 * 1024 * 1024) + b'"}}'
    r = client.post(
        f"/api/v1/vms?namespace={namespace}", data=body, headers={**admin, "Content-Type": "application/json"}
    )
    assert r.status_code == 413 and r.mimetype == "application/problem+json"


def test_wrong_media_type_415(client, admin, namespace):
    r = client.post(
        f"/api/v1/vms?namespace={namespace}", data="name: x", headers={**admin, "Content-Type": "text/plain"}
    )
    assert r.status_code == 415


def test_malformed_json_400(client, admin, namespace):
    r = client.post(
        f"/api/v1/vms?namespace={namespace}", data="{nope", headers={**admin, "Content-Type": "application/json"}
    )
    assert r.status_code == 400


def test_invalid_names_422(client, admin):
    r = client.get("/api/v1/vms/Bad_Name", headers=admin)
    assert r.status_code == 422 and r.json["errors"][0]["field"] == "name"
    r = client.get("/api/v1/vms?namespace=NOPE", headers=admin)
    assert r.status_code == 422 and r.json["errors"][0]["field"] == "namespace"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_api_server_down_is_503(gw_kubeconfig, keys, tmp_path):
    from k3svirt_gateway import create_app

    with open(gw_kubeconfig) as fh:
        cfg = yaml.safe_load(fh)
    for cluster in cfg["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{_closed_port()}"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    app = create_app({"KUBECONFIG": str(path), "API_KEYS_FILE": keys["file"]})
    c = app.test_client()
    h = {"Authorization": f"Bearer {keys['admin']}"}
    assert c.get("/readyz").status_code == 503
    for method, url, body in (
        ("get", "/api/v1/vms", None),
        ("post", "/api/v1/vms", {"name": "a", "spec": {"memory": {"size": "64Mi"}}}),
        ("get", "/api/v1/pods", None),
        ("get", "/api/v1/pci-devices", None),
        ("post", "/api/v1/namespaces", {"name": "x"}),
    ):
        r = getattr(c, method)(url, json=body, headers=h)
        assert r.status_code == 503, (url, r.get_data(as_text=True))
        assert r.mimetype == "application/problem+json"
        assert r.headers.get("Retry-After")


def test_no_kubeconfig_is_503(keys, tmp_path):
    from k3svirt_gateway import create_app

    app = create_app({"KUBECONFIG": str(tmp_path / "missing"), "API_KEYS_FILE": keys["file"]})
    r = app.test_client().get("/api/v1/vms", headers={"X-API-Key": keys["admin"]})
    assert r.status_code == 503
