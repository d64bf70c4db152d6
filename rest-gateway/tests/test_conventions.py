"""The conventions integrators expect, against the real API server: ETag on single-object GETs,
If-Match on every PATCH/PUT/DELETE (412 on another version), limit/continue pagination with
`next` and `Link` (consistent while others write), GET /api/v1, documented problem types. Hostile
values of each new input get a 4xx problem+json, never a 5xx."""

from __future__ import annotations

import base64
import json
import re
import threading
from urllib.parse import parse_qs, urlsplit

import pytest
from helpers import APP_IMAGE, TEMPLATE_YAML, import_template
from k3svirt_gateway.errors import PROBLEM_TYPE_BASE
from k3svirt_gateway.openapi import build

SPEC = {"memory": {"size": "64Mi"}, "cpu": {"cores": 1}}


@pytest.fixture(scope="module")
def documented_types(app) -> set[str]:
    examples = build(app)["components"]["examples"]
    return {e["value"]["type"] for e in examples.values()}


@pytest.fixture()
def problem(documented_types):
    """Assert `r` is a problem+json answer of `status` whose type URI the OpenAPI document lists."""

    def check(r, status: int, slug: str | None = None, field: str | None = None) -> dict:
        assert r.status_code == status, (r.status_code, r.get_data(as_text=True))
        assert r.mimetype == "application/problem+json"
        body = r.json
        assert body["status"] == status and body["type"] in documented_types, body
        if slug:
            assert body["type"] == PROBLEM_TYPE_BASE + slug
        if field:
            assert [e["field"] for e in body.get("errors", [])] == [field], body
        return body

    return check


def _objects(client, admin, ns: str) -> dict[str, str]:
    """One object of every kind a write route changes; returns route -> URL of the object."""
    assert (
        client.post(f"/api/v1/vms?namespace={ns}", json={"name": "vm1", "spec": SPEC}, headers=admin).status_code == 201
    )
    snap = client.post(f"/api/v1/vms/vm1/snapshots?namespace={ns}", json={"name": "s1"}, headers=admin)
    assert snap.status_code == 201
    import_template(client, admin, ns, "tmpl")
    dep = {"name": "web", "image": APP_IMAGE, "replicas": 0}
    assert client.post(f"/api/v1/deployments?namespace={ns}", json=dep, headers=admin).status_code == 201
    svc = {"name": "web", "deployment": "web", "ports": [{"port": 80}]}
    assert client.post(f"/api/v1/services?namespace={ns}", json=svc, headers=admin).status_code == 201
    return {
        "/api/v1/vms/<name>": f"/api/v1/vms/vm1?namespace={ns}",
        "/api/v1/vms/<name>/snapshots/<snap>": f"/api/v1/vms/vm1/snapshots/s1?namespace={ns}",
        "/api/v1/templates/<name>": f"/api/v1/templates/tmpl?namespace={ns}",
        "/api/v1/deployments/<name>": f"/api/v1/deployments/web?namespace={ns}",
        "/api/v1/services/<name>": f"/api/v1/services/web?namespace={ns}",
        "/api/v1/namespaces/<name>": f"/api/v1/namespaces/{ns}",
    }


def _etag(client, admin, url: str) -> str:
    r = client.get(url, headers=admin)
    assert r.status_code == 200, r.get_data(as_text=True)
    tag = r.headers.get("ETag")
    assert tag and re.fullmatch(r'"[0-9]+"', tag), tag
    return tag


def test_single_object_gets_answer_the_resource_version_as_etag(app, client, admin, namespace):
    urls = _objects(client, admin, namespace)
    vm = client.get(urls["/api/v1/vms/<name>"], headers=admin)
    assert vm.headers["ETag"] == f'"{vm.json["metadata"]["resourceVersion"]}"'
    for url in urls.values():
        _etag(client, admin, url)
    # documented wherever a view marks its object (the document says which GETs do)
    doc = build(app)
    for path in ("/api/v1/vms/{name}", "/api/v1/templates/{name}", "/api/v1/deployments/{name}", "/api/v1/pods/{name}"):
        assert "ETag" in doc["paths"][path]["get"]["responses"]["200"]["headers"], path
    # a change moves the ETag
    before = _etag(client, admin, urls["/api/v1/deployments/<name>"])
    r = client.patch(urls["/api/v1/deployments/<name>"], json={"replicas": 0, "env": {"A": "1"}}, headers=admin)
    assert r.status_code == 200, r.json
    assert _etag(client, admin, urls["/api/v1/deployments/<name>"]) != before


def _writes(urls: dict[str, str]) -> dict[tuple[str, str], tuple[str, dict]]:
    """(rule, method) -> (URL, request kwargs) for every conditional route: PATCH/PUT/DELETE, and the
    POSTs that change one object (VM actions, the scale alias)."""
    dep = urls["/api/v1/deployments/<name>"]
    scale = dep.replace("/web?", "/web/scale?")
    vm = urls["/api/v1/vms/<name>"]
    return {
        ("/api/v1/vms/<name>/reboot", "POST"): (vm.replace("/vm1?", "/vm1/reboot?"), {}),
        ("/api/v1/vms/<name>/stop", "POST"): (vm.replace("/vm1?", "/vm1/stop?"), {}),
        ("/api/v1/vms/<name>/start", "POST"): (vm.replace("/vm1?", "/vm1/start?"), {}),
        ("/api/v1/deployments/<name>/scale", "POST"): (scale, {"json": {"replicas": 0}}),
        ("/api/v1/vms/<name>/snapshots/<snap>", "DELETE"): (urls["/api/v1/vms/<name>/snapshots/<snap>"], {}),
        ("/api/v1/vms/<name>", "PATCH"): (vm, {"json": {"spec": {"memory": {"size": "80Mi"}}}}),
        ("/api/v1/vms/<name>", "PUT"): (vm, {"json": {"spec": {"memory": {"size": "96Mi"}}}}),
        ("/api/v1/vms/<name>", "DELETE"): (vm, {}),
        ("/api/v1/templates/<name>", "DELETE"): (urls["/api/v1/templates/<name>"], {}),
        ("/api/v1/deployments/<name>", "PATCH"): (dep, {"json": {"env": {"B": "2"}}}),
        ("/api/v1/deployments/<name>/scale", "PATCH"): (scale, {"json": {"replicas": 0}}),
        ("/api/v1/services/<name>", "DELETE"): (urls["/api/v1/services/<name>"], {}),
        ("/api/v1/deployments/<name>", "DELETE"): (dep, {}),
        ("/api/v1/namespaces/<name>", "DELETE"): (urls["/api/v1/namespaces/<name>"], {}),
    }


def test_every_write_honours_if_match(app, client, admin, namespace, problem):
    urls = _objects(client, admin, namespace)
    writes = _writes(urls)
    served = {
        (rule.rule, m)
        for rule in app.url_map.iter_rules()
        for m, meta in getattr(app.view_functions[rule.endpoint], "k3s_ops", {}).items()
        if meta["conditional"]
    }
    writes_all = {(r.rule, m) for r in app.url_map.iter_rules() for m in r.methods & {"PATCH", "PUT", "DELETE"}}
    assert writes_all <= served, "every PATCH/PUT/DELETE is conditional"
    assert served == set(writes), f"a conditional route is not covered here: {served ^ set(writes)}"
    doc = build(app)
    for (rule, method), (url, kw) in writes.items():
        path = re.sub(r"<([^>]+)>", r"{\1}", rule)
        op = doc["paths"][path][method.lower()]
        assert {"$ref": "#/components/parameters/If-Match"} in op["parameters"] and "412" in op["responses"]
        obj_url = re.sub(r"/(scale|start|stop|reboot)\?", "?", url)
        tag = _etag(client, admin, obj_url)
        stale = f'"{int(tag.strip(chr(34))) - 1}"'
        for garbage in ("12345", "W/", '"a b"', '"1", "2"', "x" * 200, '""', '"' + "1" * 81 + '"', '"\x7f"'):
            problem(client.open(url, method=method, headers={**admin, "If-Match": garbage}, **kw), 400, "bad-request")
        # well-formed, but no version of ours: matches nothing (and never reaches the API server, which
        # takes "0" for "no precondition" and fails on non-numbers)
        for impossible in (
            'W/"1"',
            tag.replace('"', 'W/"', 1),
            '".."',
            '"abc"',
            '"0"',
            '"-1"',
            '"007"',
            '"' + "9" * 20 + '"',
        ):
            problem(client.open(url, method=method, headers={**admin, "If-Match": impossible}, **kw), 412)
        problem(client.open(url, method=method, headers={**admin, "If-Match": stale}, **kw), 412, "precondition-failed")
        for _attempt in range(10):  # controllers write status too: an optimistic client re-reads and retries
            r = client.open(url, method=method, headers={**admin, "If-Match": tag}, **kw)
            if r.status_code != 412:
                break
            tag = _etag(client, admin, obj_url)
        assert r.status_code in (200, 202), (rule, method, r.get_data(as_text=True))
    # the other writes (creating, PCI assignment) refuse a precondition rather than ignore it
    for url, kw in (
        (f"/api/v1/vms?namespace={namespace}", {"json": {"name": "vm2", "spec": SPEC}}),
        ("/api/v1/namespaces", {"json": {"name": namespace + "-x"}}),
        ("/api/v1/pci-devices/0000:01:00.0/assign", {"json": {"vm": "vm1", "node": "n1"}}),
    ):
        r = client.post(url, headers={**admin, "If-Match": '"1"'}, **kw)
        problem(r, 400, "bad-request", "If-Match")
    assert client.get(f"/api/v1/vms/vm2?namespace={namespace}", headers=admin).status_code == 404
    # `*` is any version
    r = client.delete(f"/api/v1/namespaces/{namespace}", headers={**admin, "If-Match": "*"})
    assert r.status_code in (202, 404)


def _templates(client, admin, ns: str, names: list[str]) -> None:
    for n in names:
        import_template(client, admin, ns, n, TEMPLATE_YAML.format(name=n))


def _pages(client, admin, first: str, between=None) -> tuple[list[str], int]:
    names, url, pages = [], first, 0
    while url:
        r = client.get(url, headers=admin)
        assert r.status_code == 200, r.get_data(as_text=True)
        body = r.json
        names += [i["name"] for i in body["items"]]
        pages += 1
        url = body.get("next")
        if url:
            assert r.headers["Link"] == f'<{url}>; rel="next"'
            assert parse_qs(urlsplit(url).query)["continue"] == [body["continue"]]
            if between:
                between(pages)
        else:
            assert "Link" not in r.headers and "continue" not in body
    return names, pages


def test_pagination_walks_every_item_once(client, admin, namespace):
    names = [f"t{i}" for i in range(5)]
    _templates(client, admin, namespace, names)
    got, pages = _pages(client, admin, f"/api/v1/templates?namespace={namespace}&limit=2")
    assert got == names and pages == 3
    vms = [f"v{i}" for i in range(3)]
    for n in vms:
        client.post(f"/api/v1/vms?namespace={namespace}", json={"name": n, "spec": SPEC}, headers=admin)
    got, pages = _pages(client, admin, f"/api/v1/vms?namespace={namespace}&limit=1")
    assert got == vms and pages == 3
    # the whole list without limit is unchanged (and never carries a token)
    r = client.get(f"/api/v1/vms?namespace={namespace}", headers=admin)
    assert [i["name"] for i in r.json["items"]] == vms and "continue" not in r.json


def test_pages_are_one_snapshot_while_others_write(client, admin, namespace):
    """Objects deleted and created between pages neither vanish, duplicate nor appear: the pages are
    the list as it was at the first page (Kubernetes' continue semantics)."""
    names = [f"s{i}" for i in range(8)]
    _templates(client, admin, namespace, names)

    def write_concurrently(page: int) -> None:
        if page != 1:
            return
        errors: list[str] = []

        def delete(n: str) -> None:
            r = client.delete(f"/api/v1/templates/{n}?namespace={namespace}", headers=admin)
            if r.status_code != 202:
                errors.append(r.get_data(as_text=True))

        def create(n: str) -> None:
            import_template(client, admin, namespace, n, TEMPLATE_YAML.format(name=n))

        threads = [threading.Thread(target=delete, args=(n,)) for n in ("s3", "s6")]
        threads += [threading.Thread(target=create, args=(n,)) for n in ("s25", "s45", "s9")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors

    got, _ = _pages(client, admin, f"/api/v1/templates?namespace={namespace}&limit=2", write_concurrently)
    assert got == names, got
    now, _ = _pages(client, admin, f"/api/v1/templates?namespace={namespace}&limit=3")
    assert now == sorted(set(names) - {"s3", "s6"} | {"s25", "s45", "s9"})


@pytest.mark.parametrize("limit", ["-1", "0", "501", "99999999999999999999", "abc", "", "1.5", "1e3", " 2"])
def test_hostile_limit_is_400_naming_it(client, admin, namespace, problem, limit):
    for route in ("vms", "templates", "deployments", "services", "pods"):
        problem(
            client.get(f"/api/v1/{route}?namespace={namespace}&limit={limit}", headers=admin),
            400,
            "bad-request",
            "limit",
        )
    problem(client.get(f"/api/v1/namespaces?limit={limit}", headers=admin), 400, "bad-request", "limit")


def _b64(data: object) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_forged_and_foreign_continue_tokens_are_400(app, client, admin, namespace, problem):
    _templates(client, admin, namespace, ["a1", "a2", "a3"])
    first = client.get(f"/api/v1/templates?namespace={namespace}&limit=1", headers=admin).json
    token = first["continue"]
    body, _, mac = token.partition(".")
    inner = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    assert mac, "the token is signed"
    other = client.post("/api/v1/namespaces", json={"name": namespace + "-b"}, headers=admin)
    assert other.status_code == 201
    try:
        forged = [
            "garbage",
            "%%%",
            "x" * 5000,
            _b64(b"\xff\xfe"),
            _b64([1, 2]),
            _b64({"v": 1, "s": inner["s"], "k": ""}),
            _b64({"v": 2, "s": inner["s"], "k": inner["k"]}),
            # Kubernetes' own token with a forged start key: the API server refuses it
            _b64({"v": 1, "s": inner["s"], "k": _b64({"v": "meta.k8s.io/v1", "rv": 1, "start": "../../secrets/x"})}),
            _b64({"v": 1, "s": inner["s"], "k": "not-base64-either"}),
            # Kubernetes' token with a future resourceVersion: the API server would wait, then answer 504
            _b64({"v": 1, "s": inner["s"], "k": _b64({"v": "meta.k8s.io/v1", "rv": 10**11, "start": "/a1\x00"})}),
            # the real token, its signature moved onto another body / cut / missing
            _b64({"v": 1, "s": inner["s"], "k": inner["k"] + "x"}) + "." + mac,
            body + "." + mac[:-2],
            body,
            body + ".",
        ]
        for bad in forged:
            r = client.get(f"/api/v1/templates?namespace={namespace}&limit=1&continue={bad}", headers=admin)
            problem(r, 400, "bad-request", "continue")
        # a real token, replayed on another namespace, route or selector
        for url in (
            f"/api/v1/templates?namespace={namespace}-b&continue={token}",
            f"/api/v1/vms?namespace={namespace}&continue={token}",
            f"/api/v1/deployments?namespace={namespace}&continue={token}",
            f"/api/v1/templates?namespace={namespace}&labelSelector=a%3Db&continue={token}",
        ):
            problem(client.get(url, headers=admin), 400, "bad-request", "continue")
        # another gateway process (another key) does not take it
        from k3svirt_gateway import create_app

        other_gw = create_app({**app.config, "CONTINUE_KEY": None}).test_client()
        r = other_gw.get(f"/api/v1/templates?namespace={namespace}&limit=1&continue={token}", headers=admin)
        problem(r, 400, "bad-request", "continue")
        # and it still works where it belongs
        r = client.get(f"/api/v1/templates?namespace={namespace}&limit=1&continue={token}", headers=admin)
        assert r.status_code == 200 and [i["name"] for i in r.json["items"]] == ["a2"]
    finally:
        client.delete(f"/api/v1/namespaces/{namespace}-b", headers=admin)


def test_api_index_lists_resources_and_features(app, client, admin, reader, problem):
    problem(client.get("/api/v1"), 401, "unauthorized")
    r = client.get("/api/v1", headers=reader)
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.json
    names = {res["name"]: res for res in body["resources"]}
    for n in ("vms", "templates", "deployments", "services", "pods", "namespaces", "nodes", "pci-devices"):
        assert n in names and names[n]["path"] == f"/api/v1/{n}"
    assert "POST" in names["vms"]["methods"] and "DELETE" in names["vms"]["methods"]
    assert {"etag", "if-match", "pagination", "problem-types", "template-yaml"} <= set(body["features"])
    assert ("list-cache" in body["features"]) == (str(app.config.get("LIST_CACHE", "on")).lower() in ("1", "on"))
    assert body["openapi"] == "/openapi.json"
    from k3svirt_gateway import create_app

    off = create_app({**app.config, "LIST_CACHE": "off"}).test_client().get("/api/v1", headers=reader).json
    assert "list-cache" not in off["features"]


def test_every_problem_type_is_documented(app, client, admin, documented_types):
    """Types seen across failure kinds are the documented ones; every documented one has a description."""
    examples = build(app)["components"]["examples"]
    assert all(e["description"] and e["value"]["type"].startswith(PROBLEM_TYPE_BASE) for e in examples.values())
    seen = set()
    for r in (
        client.get("/api/v1/vms/missing", headers=admin),
        client.get("/api/v1/vms/Bad_Name", headers=admin),
        client.put("/api/v1/vms", headers=admin),
        client.post("/api/v1/vms", data="x", headers={**admin, "Content-Type": "text/plain"}),
        client.get("/api/v1/vms"),
    ):
        assert r.mimetype == "application/problem+json" and r.status_code < 500
        seen.add(r.json["type"])
    assert len(seen) == 5 and seen <= documented_types


@pytest.mark.parametrize("selector", ["app=w\u00e9b", "a=b\nc=d", "x" * 1025, "a=\x00"])
def test_hostile_label_selector_is_400_naming_it(client, admin, namespace, problem, selector):
    """Held to its documented schema (printable ASCII, <= 1024) by the gateway, never passed on."""
    from urllib.parse import quote

    for route in ("vms", "templates", "deployments", "services", "pods"):
        r = client.get(f"/api/v1/{route}?namespace={namespace}&labelSelector={quote(selector)}", headers=admin)
        problem(r, 400, "bad-request", "labelSelector")


def test_continue_tokens_stay_short_whatever_the_selector(client, admin, namespace):
    _templates(client, admin, namespace, ["t1", "t2"])
    selector = "k3svirt.io/" + "x" * 50 + " notin (" + ",".join("v" * 60 for _ in range(14)) + ")"
    assert len(selector) <= 1024
    r = client.get(f"/api/v1/templates?namespace={namespace}&limit=1&labelSelector={selector}", headers=admin)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert 0 < len(r.json["continue"]) < 1024, r.json
