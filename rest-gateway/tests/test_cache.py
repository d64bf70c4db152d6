"""The watch-backed list cache (k3svirt_gateway.cache) against the real API server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from k3svirt_gateway import create_app
from k3svirt_gateway.cache import matches, parse_selector
from k3svirt_gateway.routes.templates import TEMPLATES
from k3svirt_gateway.routes.vms import VMS

from tests.polling import poll

SPEC = {"memory": {"size": "64Mi"}, "runStrategy": "Halted"}


@pytest.fixture()
def kubectl(gw_kubeconfig: str) -> Callable[..., str]:
    exe = shutil.which("kubectl")
    if not exe:
        pytest.skip("kubectl not on PATH")

    def run(*args: str, stdin: str | None = None) -> str:
        env = {**os.environ, "KUBECONFIG": gw_kubeconfig}
        return subprocess.run([exe, *args], env=env, input=stdin, check=True, capture_output=True, text=True).stdout

    return run


def kubectl_vm(kubectl, ns: str, name: str, labels: dict[str, str] | None = None) -> None:
    obj = {
        "apiVersion": "k3svirt.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": SPEC,
    }
    kubectl("create", "-f", "-", stdin=json.dumps(obj))


def names(client, admin, ns: str, selector: str | None = None) -> list[str]:
    query = {"namespace": ns, **({"labelSelector": selector} if selector else {})}
    r = client.get("/api/v1/vms", query_string=query, headers=admin)
    assert r.status_code == 200, r.get_data(as_text=True)
    return [i["name"] for i in r.json["items"]]


def synced_informer(app, resource=VMS):
    cache = app.extensions["k3svirt.cache"]
    cache.list(resource, "default", None)  # what the first list request does: start it
    inf = cache.informer(resource)
    assert inf.wait_synced(15), "informer did not sync"
    return inf


@pytest.fixture()
def own_app(gw_kubeconfig: str, keys: dict[str, str]) -> Iterator:
    """A separate gateway app (own cache) the test may freeze without disturbing the session app."""
    app = create_app({"KUBECONFIG": gw_kubeconfig, "API_KEYS_FILE": keys["file"], "API_KEYS_SECRET": None})
    yield app
    app.extensions["k3svirt.cache"].stop()


def test_building_the_app_starts_nothing(gw_kubeconfig, keys):
    app = create_app({"KUBECONFIG": gw_kubeconfig, "API_KEYS_FILE": keys["file"]})
    assert app.extensions["k3svirt.cache"]._informers == {}


def test_list_follows_kubectl_create_and_delete(app, client, admin, namespace, kubectl):
    inf = synced_informer(app)
    assert app.extensions["k3svirt.cache"].list(VMS, namespace, None) is not None  # routes read memory now
    kubectl_vm(kubectl, namespace, "outside")
    assert poll(lambda: names(client, admin, namespace) == ["outside"], 3.0, 0.05), names(client, admin, namespace)
    assert inf.synced
    kubectl("delete", "vm", "outside", "-n", namespace, "--wait=false")

    def gone_or_deleting() -> bool:
        items = client.get(f"/api/v1/vms?namespace={namespace}", headers=admin).json["items"]
        return items == [] or items[0]["deleting"]  # an operator's finalizer may hold it

    assert poll(gone_or_deleting, 3.0, 0.05)


def test_a_list_answer_is_encoded_once_until_something_changes(app, client, admin, namespace, kubectl, monkeypatch):
    """GET /vms of an unchanged cache reuses the encoded body; any change (and only a change) re-encodes."""
    import k3svirt_gateway.routes as routes

    synced_informer(app)
    kubectl_vm(kubectl, namespace, "first")
    assert poll(lambda: names(client, admin, namespace) == ["first"], 3.0, 0.05)
    calls: list[int] = []
    real = routes._encode_items
    monkeypatch.setattr(routes, "_encode_items", lambda items: calls.append(len(items)) or real(items))
    bodies = {client.get("/api/v1/vms", query_string={"namespace": namespace}, headers=admin).data for _ in range(5)}
    assert len(bodies) == 1 and len(calls) <= 1  # 0: encoded before the patch, at the poll above
    assert json.loads(bodies.pop())["items"][0]["name"] == "first"
    other = client.get("/api/v1/vms", query_string={"namespace": namespace, "labelSelector": "x=y"}, headers=admin)
    assert other.json == {"items": []}  # another selector: its own answer
    kubectl_vm(kubectl, namespace, "second")
    assert poll(lambda: names(client, admin, namespace) == ["first", "second"], 3.0, 0.05)


def test_read_your_writes_without_the_watch(own_app, admin, namespace, kubectl):
    """With the watch stopped (cache frozen but still 'fresh'), the gateway's own writes still show up
    in its lists at once, and a change made outside the gateway does not: the list is served from memory."""
    client = own_app.test_client()
    inf = synced_informer(own_app)
    inf.stop()  # no more watch events: only the write path can change the cache now
    r = client.post(f"/api/v1/vms?namespace={namespace}", json={"name": "mine", "spec": SPEC}, headers=admin)
    assert r.status_code == 201, r.json
    assert names(client, admin, namespace) == ["mine"]
    item = client.get(f"/api/v1/vms?namespace={namespace}", headers=admin).json["items"][0]
    assert item["runStrategy"] == "Halted"
    assert client.post(f"/api/v1/vms/mine/start?namespace={namespace}", headers=admin).status_code == 202
    item = client.get(f"/api/v1/vms?namespace={namespace}", headers=admin).json["items"][0]
    assert item["runStrategy"] == "Always"

    kubectl_vm(kubectl, namespace, "outside")
    time.sleep(0.5)
    assert names(client, admin, namespace) == ["mine"]  # frozen: proves the route answered from memory

    assert client.delete(f"/api/v1/vms/mine?namespace={namespace}", headers=admin).status_code == 202
    items = client.get(f"/api/v1/vms?namespace={namespace}", headers=admin).json["items"]
    assert items == [] or (items[0]["name"] == "mine" and items[0]["deleting"])


def test_stale_cache_is_flagged_then_bypassed(own_app, admin, namespace, kubectl):
    """Watch disconnected: the cache answers with a Warning header for up to LIST_CACHE_MAX_STALE
    seconds, then the route lists directly (here the API server is up, so the direct list is fresh)."""
    client = own_app.test_client()
    inf = synced_informer(own_app)
    inf.stop()
    kubectl_vm(kubectl, namespace, "outside")
    inf.disconnected_since = time.monotonic() - 5
    r = client.get(f"/api/v1/vms?namespace={namespace}", headers=admin)
    assert r.status_code == 200 and r.json["items"] == []
    assert r.headers["Warning"].startswith("110 ") and "Stale" in r.headers["Warning"]
    inf.disconnected_since = time.monotonic() - inf.max_stale - 1
    r = client.get(f"/api/v1/vms?namespace={namespace}", headers=admin)
    assert [i["name"] for i in r.json["items"]] == ["outside"] and "Warning" not in r.headers


def test_recovers_after_410_gone(app, client, admin, namespace, kubectl):
    inf = synced_informer(app)
    relists = inf.relists
    inf.restart_watch(resource_version="1")  # long compacted: the API server answers 410 Expired
    assert poll(lambda: inf.relists > relists, 10, 0.05), "no relist after 410"
    assert inf.synced
    kubectl_vm(kubectl, namespace, "after-410")
    assert poll(lambda: names(client, admin, namespace) == ["after-410"], 3.0, 0.05)
    assert inf.resource_version not in ("", "1")


def test_label_selectors_match_the_api_server(app, client, admin, namespace, gw_kubeconfig, keys):
    for name, labels in (("a", {"app": "web", "tier": "1"}), ("b", {"app": "db"}), ("c", {})):
        r = client.post(
            f"/api/v1/vms?namespace={namespace}", json={"name": name, "labels": labels, "spec": SPEC}, headers=admin
        )
        assert r.status_code == 201, r.json
    synced_informer(app)
    direct = create_app(
        {"KUBECONFIG": gw_kubeconfig, "API_KEYS_FILE": keys["file"], "API_KEYS_SECRET": None, "LIST_CACHE": "off"}
    ).test_client()
    for sel in ("app=web", "app==db", "app!=web", "app", "!app", "app in (web, db)", "app notin (web)", "app,tier=1"):
        assert names(client, admin, namespace, sel) == names(direct, admin, namespace, sel), sel
    for odd in ("app=", "x>1", "=nope", "a b"):  # the last three are not evaluated locally: the API server decides
        query = {"namespace": namespace, "labelSelector": odd}
        r1 = client.get("/api/v1/vms", query_string=query, headers=admin)
        r2 = direct.get("/api/v1/vms", query_string=query, headers=admin)
        assert (r1.status_code, r1.json.get("items")) == (r2.status_code, r2.json.get("items")), odd


def test_templates_list_from_cache(app, client, admin, namespace):
    from helpers import import_template

    synced_informer(app, TEMPLATES)
    import_template(client, admin, namespace, "small")
    items = client.get(f"/api/v1/templates?namespace={namespace}", headers=admin).json["items"]
    assert [i["name"] for i in items] == ["small"] and items[0]["versions"] == ["1.0.0"]
    assert client.delete(f"/api/v1/templates/small?namespace={namespace}", headers=admin).status_code == 202
    items = client.get(f"/api/v1/templates?namespace={namespace}", headers=admin).json["items"]
    # gone, or held by a node operator's finalizer (then the API server still lists it too)
    still = client.get(f"/api/v1/templates/small?namespace={namespace}", headers=admin)
    assert items == [] or (still.status_code == 200 and still.json["metadata"].get("deletionTimestamp"))


def test_selector_parser():
    assert parse_selector(None) == [] and parse_selector(" ") == []
    reqs = parse_selector("a=1, b!=2,c in (x, y),!d,example.com/e,f notin (z)")
    assert matches(reqs, {"a": "1", "c": "y", "example.com/e": ""})
    assert not matches(reqs, {"a": "1", "b": "2", "c": "y", "example.com/e": ""})
    assert not matches(reqs, {"a": "1", "c": "y", "d": "", "example.com/e": ""})
    assert not matches(reqs, {"a": "1", "c": "y", "example.com/e": "", "f": "z"})
    assert matches(parse_selector("a="), {"a": ""}) and not matches(parse_selector("a="), {})
    for bad in ("a>1", "a b", "=x", "a in x", "Bad_Prefix/x=1", "a=" + "v" * 64):
        with pytest.raises(ValueError):
            parse_selector(bad)
