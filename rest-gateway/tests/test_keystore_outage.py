"""A Secret-backed key store while the API server is away: the last good copy for a bounded time, then
503 + Retry-After; never a 500, never a revoked key beyond TTL + MAX_STALE.

"Away" is a real client pointed at a port where nothing listens (the store's own connection; the
routes keep the test bed's API server), so the Secret can change while the store cannot see it."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import yaml
from k3svirt_gateway.auth import format_entry
from k3svirt_gateway.k8s import Kube, core_path

from tests.gateway_proc import free_port

TTL, MAX_STALE = 1.0, 3.0


def _secret(kube, ns: str, text: str, create: bool = False) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "gw-keys", "namespace": ns},
        "data": {"keys": base64.b64encode(text.encode()).decode()},
    }
    if create:
        kube.post(core_path("secrets", ns), body)
    else:
        kube.put(core_path("secrets", ns, "gw-keys"), body)


def _dead_kube(kubeconfig: str, tmp: Path) -> Kube:
    cfg = yaml.safe_load(Path(kubeconfig).read_text())
    for cluster in cfg["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    path = tmp / "dead-kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    return Kube({"KUBECONFIG": str(path), "KUBE_TIMEOUT": 2.0, "KUBE_CONNECT_TIMEOUT": 1.0})


def test_keys_survive_a_short_outage_then_503_and_recover(gw_kubeconfig, app, namespace, tmp_path):
    from k3svirt_gateway import create_app

    kube = app.extensions["k3svirt.kube"]
    alice, bob = "k3sv_alice-outage", "k3sv_bob-outage"
    _secret(
        kube, namespace, format_entry("alice", "read", alice) + "\n" + format_entry("bob", "read", bob) + "\n", True
    )
    gw = create_app(
        {
            "KUBECONFIG": gw_kubeconfig,
            "API_KEYS_FILE": None,
            "API_KEYS_SECRET": f"{namespace}/gw-keys",
            "API_KEYS_SECRET_TTL": TTL,
            "API_KEYS_SECRET_MAX_STALE": MAX_STALE,
        }
    )
    store, c = gw.extensions["k3svirt.keys"], gw.test_client()
    url = f"/api/v1/vms?namespace={namespace}"

    def get(key: str):
        t = time.monotonic()
        r = c.get(url, headers={"X-API-Key": key})
        assert time.monotonic() - t < 3, "a request hung on the unreachable API server"
        assert r.status_code < 500 or r.status_code == 503, r.get_data(as_text=True)
        return r

    assert get(bob).status_code == 200
    t0 = time.monotonic()  # the store's good read
    real = store.kube
    store.kube = _dead_kube(gw_kubeconfig, tmp_path)
    _secret(kube, namespace, format_entry("alice", "read", alice) + "\n")  # bob revoked while unseen
    time.sleep(max(0.0, t0 + TTL + 1.0 - time.monotonic()))
    assert get(bob).status_code == 200  # past the TTL, re-read failed: the last good copy, within bound
    assert get(alice).status_code == 200
    time.sleep(max(0.0, t0 + TTL + MAX_STALE + 0.5 - time.monotonic()))
    for key in (bob, alice, "k3sv_never-issued"):
        r = get(key)
        assert r.status_code == 503, r.get_data(as_text=True)  # bob is never served beyond the bound
        assert r.mimetype == "application/problem+json" and int(r.headers["Retry-After"]) > 0
        assert "API keys unavailable" in r.json["detail"] and f"{namespace}/gw-keys" in r.json["detail"]
    store.kube = real  # the API server is back: recovery without a restart
    time.sleep(store.RETRY_SECONDS + 0.2)
    assert get(alice).status_code == 200
    assert get(bob).status_code == 401  # and the revocation it missed now holds


def test_file_keys_still_work_while_the_secret_is_unreadable(gw_kubeconfig, keys, tmp_path):
    from k3svirt_gateway import create_app

    gw = create_app(
        {
            "KUBECONFIG": gw_kubeconfig,
            "API_KEYS_FILE": keys["file"],
            "API_KEYS_SECRET": "k3svirt-system/never-read",
        }
    )
    gw.extensions["k3svirt.keys"].kube = _dead_kube(gw_kubeconfig, tmp_path)
    c = gw.test_client()
    assert c.get("/api/v1/vms", headers={"X-API-Key": keys["admin"]}).status_code == 200
    r = c.get("/api/v1/vms", headers={"X-API-Key": "k3sv_maybe-in-the-secret"})
    assert r.status_code == 503 and "Retry-After" in r.headers, r.json  # not 401: it may be a valid key


def test_malformed_secret_is_503_not_500(gw_kubeconfig, app, namespace):
    from k3svirt_gateway import create_app

    bad = base64.b64encode(b"\xff\xfe\xfd").decode()  # valid base64 for the API server, not UTF-8 text
    app.extensions["k3svirt.kube"].post(
        core_path("secrets", namespace),
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gw-keys"}, "data": {"keys": bad}},
    )
    gw = create_app({"KUBECONFIG": gw_kubeconfig, "API_KEYS_FILE": None, "API_KEYS_SECRET": f"{namespace}/gw-keys"})
    r = gw.test_client().get("/api/v1/vms", headers={"X-API-Key": "k3sv_any"})
    assert r.status_code == 503 and "not base64 UTF-8" in r.json["detail"], r.json


def test_unreadable_key_file_is_401_not_500(gw_kubeconfig, tmp_path):
    from k3svirt_gateway import create_app

    path = tmp_path / "keys"
    path.write_bytes(b"\xff\xfe not UTF-8\n")
    gw = create_app({"KUBECONFIG": gw_kubeconfig, "API_KEYS_FILE": str(path), "API_KEYS_SECRET": None})
    r = gw.test_client().get("/api/v1/vms", headers={"X-API-Key": "k3sv_any"})
    assert r.status_code == 401, r.get_data(as_text=True)
    path.write_text(format_entry("ok", "read", "k3sv_now-readable") + "\n")  # fixed: read again
    assert gw.test_client().get("/api/v1/vms", headers={"X-API-Key": "k3sv_now-readable"}).status_code == 200
