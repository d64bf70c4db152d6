"""Fixtures for the gateway tests. Everything runs against the real API server (the harness's
kube-apiserver); nothing is mocked. The `kubeconfig` fixture comes from tests/conftest.py when the
lead's harness provides it; until then KUBECONFIG or the harness's default path is used."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import gateway_proc

REPO = Path(__file__).resolve().parents[2]
DEFAULT_KUBECONFIG = Path.home() / ".local/state/k3svirt/kubeconfig"


@pytest.fixture(scope="session")
def gw_kubeconfig(request: pytest.FixtureRequest) -> str:
    try:
        path = str(request.getfixturevalue("kubeconfig"))
    except pytest.FixtureLookupError:
        path = os.environ.get("KUBECONFIG") or str(DEFAULT_KUBECONFIG)
    if not Path(path).is_file():
        pytest.skip(f"API server harness not up (no kubeconfig at {path})")
    env = {**os.environ, "KUBECONFIG": path}
    kubectl = shutil.which("kubectl")
    if kubectl:  # the contract must be installed; applying is idempotent
        subprocess.run([kubectl, "apply", "-f", str(REPO / "crds")], env=env, check=True, capture_output=True)
        subprocess.run(
            [kubectl, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"],
            env=env,
            check=True,
            capture_output=True,
        )
    return path


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An API-key file with an admin and a read key, made with the documented CLI."""
    d = tmp_path_factory.mktemp("keys")
    path = d / "api-keys"
    out = {"file": str(path)}
    for name, role in (("admin", "admin"), ("reader", "read")):
        res = subprocess.run(
            [sys.executable, "-m", "k3svirt_gateway.keys", "add", name, "--role", role, "--file", str(path)],
            check=True,
            capture_output=True,
            text=True,
        )
        out[name] = res.stdout.strip()
    return out


@pytest.fixture(scope="session")
def app(gw_kubeconfig: str, keys: dict[str, str]):
    from k3svirt_gateway import create_app

    return create_app({"KUBECONFIG": gw_kubeconfig, "API_KEYS_FILE": keys["file"], "API_KEYS_SECRET": None})


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def admin(keys: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys['admin']}"}


@pytest.fixture(scope="session")
def reader(keys: dict[str, str]) -> dict[str, str]:
    return {"X-API-Key": keys["reader"]}


@pytest.fixture()
def namespace(app, client, admin) -> Iterator[str]:
    """A unique namespace, deleted afterwards (with everything in it)."""
    ns = f"gwt-{uuid.uuid4().hex[:10]}"
    r = client.post("/api/v1/namespaces", json={"name": ns}, headers=admin)
    assert r.status_code == 201, r.get_data(as_text=True)
    yield ns
    kube = app.extensions["k3svirt.kube"]
    from k3svirt_gateway import contract as c
    from k3svirt_gateway.k8s import group_path

    # VMs carry no finalizer without an operator, but strip any so namespace deletion completes.
    for plural in (c.VM_PLURAL, c.TEMPLATE_PLURAL):
        try:
            for obj in kube.get(group_path(c.GROUP, c.VERSION, plural, ns)).get("items", []):
                if obj["metadata"].get("finalizers"):
                    kube.patch(
                        group_path(c.GROUP, c.VERSION, plural, ns, obj["metadata"]["name"]),
                        {"metadata": {"finalizers": None}},
                    )
        except Exception:  # noqa: BLE001 - best-effort cleanup
            pass
    client.delete(f"/api/v1/namespaces/{ns}", headers=admin)


@pytest.fixture(scope="session")
def ready_node(app) -> str:
    """The name of a Ready node (a kubelet that runs pods). Skips only when the API server lists no
    Ready node - the same answer as `kubectl get nodes` - i.e. on a test bed without a kubelet."""
    from k3svirt_gateway.k8s import core_path

    nodes = app.extensions["k3svirt.kube"].get(core_path("nodes")).get("items", [])
    for node in nodes:
        conds = (node.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
            return node["metadata"]["name"]
    names = ", ".join(n["metadata"]["name"] for n in nodes) or "none"
    pytest.skip(f"no Ready node (kubectl get nodes: {names}): this test bed runs no kubelet")


@pytest.fixture(scope="session")
def live_gateway(gw_kubeconfig: str, keys: dict[str, str], tmp_path_factory) -> Iterator[str]:
    """The production entry point (`k3svirt-gateway`, gunicorn) on 127.0.0.1:<free port>."""
    env = {"KUBECONFIG": gw_kubeconfig, "K3SVIRT_API_KEYS_FILE": keys["file"], "K3SVIRT_API_KEYS_SECRET": ""}
    log = tmp_path_factory.mktemp("gw") / "gateway.log"
    with gateway_proc.gateway(env, log, args=("--threads", "8")) as (url, _proc):
        yield url
