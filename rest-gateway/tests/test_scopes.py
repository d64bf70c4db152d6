"""Key scopes: a role (read / operate / admin) and a set of namespaces, held on every route.

The matrix walks the app's URL map, so a new route is checked (and must be classified below) as soon
as it exists. Requests go through the real gateway app to the test bed's API server."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from k3svirt_gateway.auth import RANK

# Routes whose writes an `operate` key may do (every other write needs admin; every GET read).
OPERATE = {
    ("POST", "/api/v1/vms/<name>/start"),
    ("POST", "/api/v1/vms/<name>/stop"),
    ("POST", "/api/v1/vms/<name>/reboot"),
    ("POST", "/api/v1/vms/<name>/snapshots"),  # taking a snapshot discards nothing; restore and delete do
    ("PATCH", "/api/v1/deployments/<name>/scale"),
    ("POST", "/api/v1/deployments/<name>/scale"),
    ("GET", "/api/v1/vms/<name>/console"),  # a guest's terminal: as much as reboot
}
# WebSocket routes: asked for with the upgrade (without it the router answers 426 before any key check).
UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
# First path segment after /api/v1 of namespaced resources (the namespace is ?namespace=).
NAMESPACED = {"vms", "templates", "deployments", "services", "pods", "stats", "usage"}
# Cluster-wide: need a key for all namespaces. (GET /namespaces/<name> acts in the namespace it names.)
CLUSTER = {"nodes", "pci-devices", "namespaces"}
PATH_ARGS = {"name": "scope-probe-x", "address": "0000:ff:1f.7", "snap": "scope-probe-s"}


def _add_key(path: Path, name: str, role: str, namespaces: str) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "k3svirt_gateway.keys", "add", name, "--role", role, "--namespaces", namespaces]
        + ["--file", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return res.stdout.strip()


@pytest.fixture(scope="module")
def scoped(gw_kubeconfig: str, tmp_path_factory: pytest.TempPathFactory):
    """An app whose key file holds one key per role scoped to namespace A, and all-namespace keys."""
    from k3svirt_gateway import create_app

    tag = uuid.uuid4().hex[:8]
    ns_a, ns_b = f"scope-a-{tag}", f"scope-b-{tag}"
    path = tmp_path_factory.mktemp("scoped") / "keys"
    specs = {
        "read-a": ("read", ns_a),
        "operate-a": ("operate", ns_a),
        "admin-a": ("admin", f"{ns_a},other-{tag}"),
        "read-all": ("read", "*"),
        "operate-all": ("operate", "*"),
        "admin-all": ("admin", "*"),
    }
    keys = {name: _add_key(path, name, role, scope) for name, (role, scope) in specs.items()}
    app = create_app({"KUBECONFIG": gw_kubeconfig, "API_KEYS_FILE": str(path), "API_KEYS_SECRET": None})
    return {"app": app, "keys": keys, "specs": specs, "a": ns_a, "b": ns_b, "file": path}


def _routes(app) -> list[tuple[str, str, str]]:
    """(method, rule, endpoint) of every authenticated route."""
    out = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        if getattr(view, "k3s_public", False) or rule.endpoint == "static":
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            out.append((method, rule.rule, rule.endpoint))
    return out


def _classify(method: str, rule: str) -> str:
    """'namespaced', 'path-namespace', 'cluster' or 'any', from the rule itself (not the app's metadata)."""
    segment = rule.removeprefix("/api/v1/").split("/")[0]
    if rule == "/api/v1" and method == "GET":
        return "any"  # the API index: resources and features, no tenant's data (feature detection)
    if rule == "/api/v1/namespaces/<name>" and method == "GET":
        return "path-namespace"
    if segment in NAMESPACED:
        return "namespaced"
    if segment in CLUSTER:
        return "cluster"
    raise AssertionError(f"new route {method} {rule}: classify it in test_scopes.py (and decide its scope)")


def _needed(method: str, rule: str) -> str:
    if (method, rule) in OPERATE:
        return "operate"
    return "read" if method == "GET" else "admin"


def test_role_namespace_matrix_over_every_route(scoped):
    client = scoped["app"].test_client()
    routes = _routes(scoped["app"])
    assert len(routes) >= 30, routes  # the URL map really was walked
    checked = refused = 0
    for method, rule, _endpoint in routes:
        kind = _classify(method, rule)
        for target in (scoped["a"], scoped["b"]):
            args = dict(PATH_ARGS)
            if kind == "path-namespace":
                args["name"] = target
            path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: args[m.group(1)], rule)  # noqa: B023
            for key_name, (role, scope) in scoped["specs"].items():
                in_scope = scope == "*" or target in scope.split(",")
                out_of_scope = {"cluster": scope != "*", "any": False}.get(kind, not in_scope)
                expect_403 = RANK[role] < RANK[_needed(method, rule)] or out_of_scope
                headers = {"X-API-Key": scoped["keys"][key_name], **(UPGRADE if rule.endswith("/console") else {})}
                r = client.open(f"{path}?namespace={target}", method=method, headers=headers)
                where = f"{key_name} {method} {path}?namespace={target}: {r.status_code} {r.get_data(as_text=True)}"
                checked += 1
                if expect_403:
                    refused += 1
                    assert r.status_code == 403, where
                    assert r.mimetype == "application/problem+json", where
                    assert key_name in r.json["detail"], where
                else:
                    assert r.status_code not in (401, 403) and r.status_code < 500, where
    assert refused > 100 and checked - refused > 50, (checked, refused)


def test_default_namespace_is_held_to_the_scope(scoped):
    client = scoped["app"].test_client()
    r = client.get("/api/v1/vms", headers={"X-API-Key": scoped["keys"]["read-a"]})  # no ?namespace=: default
    assert r.status_code == 403 and "'default'" in r.json["detail"], r.json
    assert client.get("/api/v1/vms", headers={"X-API-Key": scoped["keys"]["read-all"]}).status_code == 200
    # HEAD is held like the GET it shadows.
    h = {"X-API-Key": scoped["keys"]["read-a"]}
    assert client.head(f"/api/v1/vms?namespace={scoped['b']}", headers=h).status_code == 403
    assert client.head(f"/api/v1/vms?namespace={scoped['a']}", headers=h).status_code == 200


def test_out_of_scope_objects_are_never_read(scoped, client, admin, namespace):
    """A key scoped elsewhere gets 403 for a real Deployment (never its env), for its list (never an
    empty one), and for a name that does not exist there (never a 404 that tells which exist)."""
    # `namespace` is the foreign one (created by the all-namespaces admin); the scoped app sees it too.
    r = client.post(
        f"/api/v1/deployments?namespace={namespace}",
        headers=admin,
        json={"name": "web", "image": "localhost/x:1", "env": {"TOKEN": "hunter2-secret"}},
    )
    assert r.status_code == 201, r.json
    sc = scoped["app"].test_client()
    for key_name in ("read-a", "operate-a", "admin-a"):
        h = {"X-API-Key": scoped["keys"][key_name]}
        for method, path in (
            ("GET", "/api/v1/deployments/web"),
            ("GET", "/api/v1/deployments"),
            ("GET", "/api/v1/deployments/never-existed"),
            ("GET", "/api/v1/pods"),
            ("GET", "/api/v1/pods/web/logs"),
            ("GET", "/api/v1/pods/web/stats"),
            ("GET", "/api/v1/stats/pods"),
            ("GET", "/api/v1/services"),
            ("GET", "/api/v1/vms"),
            ("GET", "/api/v1/templates"),
            ("DELETE", "/api/v1/deployments/web"),
            ("PATCH", "/api/v1/deployments/web/scale"),
        ):
            r = sc.open(f"{path}?namespace={namespace}", method=method, headers=h, json={"replicas": 0})
            body = r.get_data(as_text=True)
            assert r.status_code == 403, (key_name, method, path, body)
            assert "hunter2" not in body and "items" not in r.json
        r = sc.get(f"/api/v1/namespaces/{namespace}", headers=h)
        assert r.status_code == 403
        assert sc.get("/api/v1/namespaces", headers=h).status_code == 403  # cluster-wide list
    r = client.get(f"/api/v1/deployments/web?namespace={namespace}", headers=admin)
    assert r.status_code == 200 and r.json["replicas"] == 1, r.json  # the refused writes did nothing


def test_scoped_keys_work_inside_their_namespace(scoped, client, admin):
    """admin-a creates and deletes in A; operate-a scales but cannot create or delete; read-a reads."""
    ns = scoped["a"]
    assert client.post("/api/v1/namespaces", headers=admin, json={"name": ns}).status_code == 201
    sc = scoped["app"].test_client()
    try:
        h = {k: {"X-API-Key": v} for k, v in scoped["keys"].items()}
        body = {"name": "web", "image": "localhost/x:1", "env": {"MODE": "prod"}}
        r = sc.post(f"/api/v1/namespaces?namespace={ns}", headers=h["admin-a"], json={"name": "x"})
        assert r.status_code == 403
        assert sc.post(f"/api/v1/deployments?namespace={ns}", headers=h["operate-a"], json=body).status_code == 403
        r = sc.post(f"/api/v1/deployments?namespace={ns}", headers=h["admin-a"], json=body)
        assert r.status_code == 201, r.json
        r = sc.get(f"/api/v1/deployments/web?namespace={ns}", headers=h["read-a"])
        assert r.status_code == 200 and r.json["env"] == {"MODE": "prod"}, r.json
        assert sc.get(f"/api/v1/namespaces/{ns}", headers=h["read-a"]).status_code == 200
        r = sc.patch(f"/api/v1/deployments/web/scale?namespace={ns}", headers=h["operate-a"], json={"replicas": 2})
        assert r.status_code == 200, r.json
        assert sc.patch(f"/api/v1/deployments/web/scale?namespace={ns}", headers=h["read-a"], json={"replicas": 3})\
            .status_code == 403  # fmt: skip
        assert sc.delete(f"/api/v1/deployments/web?namespace={ns}", headers=h["operate-a"]).status_code == 403
        assert sc.delete(f"/api/v1/deployments/web?namespace={ns}", headers=h["admin-a"]).status_code == 202
        # Namespaces are cluster-wide objects: even its own namespace is not deleted by a scoped admin.
        assert sc.delete(f"/api/v1/namespaces/{ns}", headers=h["admin-a"]).status_code == 403
    finally:
        client.delete(f"/api/v1/namespaces/{ns}", headers=admin)


@pytest.mark.parametrize("name", ["default", "kube-system", "kube-public", "kube-node-lease", "k3svirt-system"])
def test_system_namespaces_cannot_be_deleted(client, admin, name):
    r = client.delete(f"/api/v1/namespaces/{name}", headers=admin)
    assert r.status_code == 403 and r.mimetype == "application/problem+json", r.get_data(as_text=True)
    assert r.json["reason"] == "SystemNamespace" and "system namespace" in r.json["detail"]


def test_gateway_own_namespaces_are_protected(gw_kubeconfig, keys, namespace):
    """The API-key Secret's namespace and K3SVIRT_PROTECTED_NAMESPACES join the system ones."""
    from k3svirt_gateway import create_app

    app = create_app(
        {
            "KUBECONFIG": gw_kubeconfig,
            "API_KEYS_FILE": keys["file"],
            "API_KEYS_SECRET": f"{namespace}/gw-keys",
            "PROTECTED_NAMESPACES": "tenant-infra, other",
        }
    )
    c = app.test_client()
    h = {"Authorization": f"Bearer {keys['admin']}"}
    for name in (namespace, "tenant-infra", "other"):
        r = c.delete(f"/api/v1/namespaces/{name}", headers=h)
        assert r.status_code == 403 and r.json["reason"] == "SystemNamespace", (name, r.json)
    assert c.get(f"/api/v1/namespaces/{namespace}", headers=h).status_code == 200  # still there


def test_scoped_keys_from_a_secret(gw_kubeconfig, app, namespace):
    from k3svirt_gateway import create_app
    from k3svirt_gateway.auth import format_entry
    from k3svirt_gateway.k8s import core_path

    key = "k3sv_scoped-secret-key"
    content = format_entry("tenant", "operate", key, namespace) + "\n"
    assert content.startswith(f"tenant:operate:{namespace}:sha256:")
    app.extensions["k3svirt.kube"].post(
        core_path("secrets", namespace),
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gw-keys"},
         "data": {"keys": base64.b64encode(content.encode()).decode()}},
    )  # fmt: skip
    c = create_app({"KUBECONFIG": gw_kubeconfig, "API_KEYS_FILE": None, "API_KEYS_SECRET": f"{namespace}/gw-keys"})
    tc = c.test_client()
    h = {"X-API-Key": key}
    assert tc.get(f"/api/v1/vms?namespace={namespace}", headers=h).status_code == 200
    assert tc.get("/api/v1/vms?namespace=kube-system", headers=h).status_code == 403
    assert tc.get("/api/v1/nodes", headers=h).status_code == 403


def test_key_tool_scopes(tmp_path):
    path = tmp_path / "keys"
    _add_key(path, "t1", "operate", "b,a")
    _add_key(path, "t2", "admin", "*")
    text = path.read_text()
    assert re.search(r"^t1:operate:a,b:sha256:[0-9a-f]{64}$", text, re.M), text
    assert re.search(r"^t2:admin:sha256:[0-9a-f]{64}$", text, re.M), text  # all namespaces: the old form
    out = subprocess.run(
        [sys.executable, "-m", "k3svirt_gateway.keys", "list", "--file", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out.splitlines() == ["t1\toperate\ta,b", "t2\tadmin\t*"]
    bad = subprocess.run(
        [sys.executable, "-m", "k3svirt_gateway.keys", "add", "t3", "--namespaces", "Bad_NS", "--file", str(path)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--namespaces" in bad.stderr


def test_old_key_lines_keep_their_meaning_and_bad_scopes_are_ignored():
    from k3svirt_gateway.auth import parse_keys

    d = "0" * 64
    text = f"old:sha256:{d}\nadm:admin:sha256:{d}\nbad:admin:Kube_System:sha256:{d}\n"
    entries = {e.name: e for e in parse_keys(text)}
    assert entries["old"].role == "read" and entries["old"].namespaces is None
    assert entries["adm"].role == "admin" and entries["adm"].namespaces is None
    assert "bad" not in entries  # an unreadable scope never becomes "all namespaces"
