"""The Kubernetes layer (k3svirt_common.kube) against the test bed's real API server: paths and
quoting, one error type, patches and apply, paging, watches (bookmarks, 410 -> relist), credentials
(client certificates from files or inline data, tokens), timeouts, text answers. Nothing is mocked."""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from k3svirt_common.kube import (
    SYNC,
    ApiError,
    Client,
    ConfigError,
    KubeConfig,
    ListWatch,
    core_path,
    from_kubeconfig,
    group_path,
    k3svirt_path,
    load_config,
)

from tests.polling import poll


@pytest.fixture(scope="module")
def api(kubeconfig: str) -> Client:
    return Client(from_kubeconfig(kubeconfig))


def configmap(name: str, data: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels or {}},
        "data": data or {},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------- paths
def test_paths_quote_every_segment():
    assert core_path("pods") == "/api/v1/pods"
    assert core_path("pods", "ns", "p", "log") == "/api/v1/namespaces/ns/pods/p/log"
    assert core_path("nodes", name="n1", sub="proxy/stats/summary") == "/api/v1/nodes/n1/proxy/stats/summary"
    assert core_path("configmaps", "a/b", "x y?#%") == "/api/v1/namespaces/a%2Fb/configmaps/x%20y%3F%23%25"
    assert group_path("k3svirt.io", "v1alpha1", "virtualmachines", "ns", "vm", "status") == (
        "/apis/k3svirt.io/v1alpha1/namespaces/ns/virtualmachines/vm/status"
    )
    assert k3svirt_path("virtualmachines", "ns", "vm", "status") == group_path(
        "k3svirt.io", "v1alpha1", "virtualmachines", "ns", "vm", "status"
    )
    assert k3svirt_path("pcipassthroughs", None, "a/b") == "/apis/k3svirt.io/v1alpha1/pcipassthroughs/a%2Fb"
    for bad in ("", ".", ".."):
        with pytest.raises(ValueError):
            core_path("configmaps", "ns", bad)
    with pytest.raises(ValueError):
        core_path("pods", "ns", sub="log")  # a subresource without an object


def test_quoted_name_reaches_the_server_as_one_name(api, namespace):
    """'../x' would climb out of the namespace unquoted; quoted, it is one (invalid, absent) name."""
    with pytest.raises(ApiError) as err:
        api.get(core_path("configmaps", namespace, "../../../namespaces"))
    assert err.value.status in (400, 404)
    assert err.value.status != 200 and "namespaces" not in (err.value.details.get("kind") or "")


# ---------------------------------------------------------------------------------------- errors
def test_errors_carry_status_reason_message_details(api, namespace):
    path = core_path("configmaps", namespace)
    with pytest.raises(ApiError) as err:
        api.get(core_path("configmaps", namespace, "absent"))
    e = err.value
    assert (e.status, e.reason, e.answered) == (404, "NotFound", True)
    assert e.details == {"name": "absent", "kind": "configmaps"} and "absent" in e.message

    api.create(path, configmap("twice"))
    with pytest.raises(ApiError) as err:
        api.create(path, configmap("twice"))
    assert (err.value.status, err.value.reason) == (409, "AlreadyExists")

    with pytest.raises(ApiError) as err:
        api.create(path, configmap("Not_A_Name"))
    assert (err.value.status, err.value.reason) == (422, "Invalid")
    assert [c["field"] for c in err.value.causes] == ["metadata.name"]

    stale = api.get(core_path("configmaps", namespace, "twice"))
    api.patch(core_path("configmaps", namespace, "twice"), {"data": {"a": "1"}})
    with pytest.raises(ApiError) as err:
        api.replace(core_path("configmaps", namespace, "twice"), stale)  # old resourceVersion
    assert (err.value.status, err.value.reason) == (409, "Conflict")

    with pytest.raises(ApiError) as err:  # a resource type nobody serves: 404 without details
        api.get(group_path("example.invalid", "v1", "things", namespace))
    assert err.value.status == 404 and err.value.details == {}


def test_no_answer_is_status_0(kubeconfig):
    cfg = from_kubeconfig(kubeconfig)
    down = Client(KubeConfig(**{**cfg.__dict__, "server": f"https://127.0.0.1:{free_port()}"}))
    with pytest.raises(ApiError) as err:
        down.get("/version")
    assert (err.value.status, err.value.reason, err.value.answered) == (0, "Unreachable", False)
    with pytest.raises(ConfigError) as cerr:
        Client(lambda: load_config("/nonexistent/kubeconfig")).get("/version")
    assert cerr.value.status == 0 and cerr.value.reason == "NotConfigured"


def test_read_timeout(kubeconfig):
    """A server that accepts and never answers: ApiError(0, Timeout) after the read timeout."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        cfg = KubeConfig(server=f"http://127.0.0.1:{srv.getsockname()[1]}")
        t0 = time.monotonic()
        with pytest.raises(ApiError) as err:
            Client(cfg, timeout=0.5).get("/version")
        assert (err.value.status, err.value.reason) == (0, "Timeout")
        assert time.monotonic() - t0 < 5


# ------------------------------------------------------------------------------- writes, patches
def test_create_patch_apply_replace_delete(api, namespace):
    path = core_path("configmaps", namespace)
    one = core_path("configmaps", namespace, "cm")
    created = api.create(path, configmap("cm", {"a": "1"}, {"x": "1"}))
    assert created["metadata"]["uid"] and created["data"] == {"a": "1"}
    assert api.patch(one, {"data": {"b": "2", "a": None}})["data"] == {"b": "2"}  # merge: None removes
    assert api.patch(one, {"metadata": {"labels": {"y": "2"}}}, patch="strategic")["metadata"]["labels"] == {
        "x": "1",
        "y": "2",
    }
    out = api.patch(
        one, [{"op": "add", "path": "/data/c", "value": "3"}, {"op": "remove", "path": "/data/b"}], patch="json"
    )
    assert out["data"] == {"c": "3"}
    with pytest.raises(ApiError) as err:  # a JSON patch whose test fails changes nothing
        api.patch(one, [{"op": "test", "path": "/data/c", "value": "nope"}], patch="json")
    assert err.value.status == 422

    applied = api.apply(
        one,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"owned": "yes"}},
        field_manager="k3svirt-test",
    )
    assert applied["data"] == {"c": "3", "owned": "yes"}
    assert "k3svirt-test" in {m["manager"] for m in applied["metadata"]["managedFields"]}
    # Another manager taking a field the first owns: 409 unless forced.
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"owned": "no"}}
    with pytest.raises(ApiError) as err:
        api.apply(one, body, field_manager="other")
    assert err.value.status == 409
    assert api.apply(one, body, field_manager="other", force=True)["data"]["owned"] == "no"

    current = api.get(one)
    assert api.get_or_none(one) == current and api.get_or_none(core_path("configmaps", namespace, "none")) is None
    with pytest.raises(ApiError) as err:  # only a 404 is None: any other answer still raises
        api.get_or_none(path, query={"labelSelector": "a in"})
    assert err.value.status == 400
    current["data"] = {"only": "this"}
    assert api.replace(one, current)["data"] == {"only": "this"}
    api.delete(one, propagation="Background")
    with pytest.raises(ApiError) as err:
        api.delete(one)
    assert err.value.status == 404


def test_list_selectors_and_paging(api, namespace):
    path = core_path("configmaps", namespace)
    for i in range(5):
        api.create(path, configmap(f"cm{i}", labels={"parity": "even" if i % 2 == 0 else "odd"}))
    names = sorted(o["metadata"]["name"] for o in api.list(path, label_selector="parity=even")["items"])
    assert names == ["cm0", "cm2", "cm4"]
    items, rv = api.list_all(path, page=2)  # three pages
    assert sorted(o["metadata"]["name"] for o in items if o["metadata"]["name"].startswith("cm")) == [
        f"cm{i}" for i in range(5)
    ]
    assert int(rv) > 0
    with pytest.raises(ApiError) as err:
        api.list(path, label_selector="a b")
    assert err.value.status == 400


# ----------------------------------------------------------------------------------------- watch
@pytest.fixture()
def cms(api, namespace) -> Iterator[str]:
    yield core_path("configmaps", namespace)


def test_watch_events_and_bookmarks(api, cms):
    start_rv = api.list(cms)["metadata"]["resourceVersion"]
    api.create(cms, configmap("w1"))
    api.patch(f"{cms}/w1", {"data": {"k": "v"}})
    api.delete(f"{cms}/w1")
    seen, rvs = [], []
    # The watch cache sends bookmarks in the last seconds before the server-side timeout ends the watch.
    with api.watch(cms, resource_version=start_rv, timeout_seconds=8) as w:
        for ev in w:
            name = ev.object["metadata"].get("name")
            if name != "kube-root-ca.crt":  # the controller-manager adds it to new namespaces at any time
                seen.append((ev.type, name))
                rvs.append(int(ev.object["metadata"]["resourceVersion"]))
    assert [s for s in seen if s[0] != "BOOKMARK"] == [("ADDED", "w1"), ("MODIFIED", "w1"), ("DELETED", "w1")]
    assert seen[3:] and all(s == ("BOOKMARK", None) for s in seen[3:]), seen
    assert rvs[3] >= rvs[2] and int(w.resource_version) == rvs[-1] > int(start_rv)
    # With sendInitialEvents (any query passes through), a bookmark marks the end of the initial state.
    query = {"sendInitialEvents": True, "resourceVersionMatch": "NotOlderThan"}
    with api.watch(cms, timeout_seconds=3, query=query) as w:
        initial = next(ev for ev in w if ev.type == "BOOKMARK")  # after the ADDED of what exists
    assert initial.object["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_watch_from_a_compacted_version_is_410(api, cms):
    with pytest.raises(ApiError) as err, api.watch(cms, resource_version="1", timeout_seconds=5) as w:
        list(w)
    assert err.value.status == 410 and err.value.expired


def test_list_watch_relists_after_410_and_resumes(api, cms):
    lw = ListWatch(api, cms, timeout_seconds=30)
    got: list = []
    done = threading.Event()

    def run() -> None:
        try:
            while not lw.closed:
                for ev in lw.events():
                    got.append(ev)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()

    def wait(cond) -> bool:
        return bool(poll(cond, 10.0, 0.05))

    try:
        assert wait(lambda: lw.relists == 1 and got and got[0].type == SYNC)
        api.create(cms, configmap("lw1"))
        assert wait(lambda: any(e.type == "ADDED" and e.object["metadata"]["name"] == "lw1" for e in got))
        lw.restart(resource_version="1")  # long compacted: 410 -> relist
        assert wait(lambda: lw.relists == 2)
        syncs = [e for e in got if e.type == SYNC]
        assert "lw1" in {o["metadata"]["name"] for o in syncs[-1].object["items"]}
        lw.restart()  # an interrupted watch resumes without relisting
        api.create(cms, configmap("lw2"))
        assert wait(lambda: any(e.type == "ADDED" and e.object["metadata"]["name"] == "lw2" for e in got))
        assert lw.relists == 2
    finally:
        lw.close()
    assert done.wait(5), "close() did not end the watch"


# ----------------------------------------------------------------------------------- credentials
def test_inline_certificate_data(kubeconfig, tmp_path):
    """The same identity as the file-based kubeconfig, with the PEMs inline (base64 data fields)."""
    doc = yaml.safe_load(Path(kubeconfig).read_text())
    base = Path(kubeconfig).parent
    for section, keys in (("clusters", ("certificate-authority",)), ("users", ("client-certificate", "client-key"))):
        for item in doc[section]:
            body = item["cluster" if section == "clusters" else "user"]
            for key in keys:
                if key in body:
                    pem = (base / body.pop(key)).read_bytes()
                    body[f"{key}-data"] = base64.b64encode(pem).decode()
    inline = tmp_path / "kubeconfig"
    inline.write_text(yaml.safe_dump(doc))
    cfg = load_config(str(inline))
    assert cfg.cert_data and cfg.key_data and not cfg.cert_file
    assert "gitVersion" in Client(cfg).get("/version")
    assert "PRIVATE" not in repr(cfg)


def test_token_from_file_and_authz_errors(api, namespace, kubeconfig, tmp_path):
    sa = core_path("serviceaccounts", namespace)
    api.create(sa, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}})
    token = api.create(
        f"{sa}/reader/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600}},
    )["status"]["token"]
    token_file = tmp_path / "token"
    token_file.write_text("not-a-token\n")
    cfg = from_kubeconfig(kubeconfig)
    as_sa = Client(KubeConfig(server=cfg.server, ca_file=cfg.ca_file, ca_data=cfg.ca_data, token_file=str(token_file)))
    with pytest.raises(ApiError) as err:
        as_sa.get(core_path("secrets", namespace))
    assert err.value.status == 401
    time.sleep(0.01)
    token_file.write_text(token)  # rotated: read again because it changed
    with pytest.raises(ApiError) as err:
        as_sa.get(core_path("secrets", namespace))
    assert (err.value.status, err.value.reason) == (403, "Forbidden")
    assert "system:serviceaccount:" in err.value.message


def test_refused_kubeconfig_features(tmp_path):
    doc = {
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"exec": {"command": "x"}}}],
    }
    path = tmp_path / "kc"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="exec"):
        from_kubeconfig(str(path))
    doc["users"][0]["user"] = {"token": "t"}
    doc["contexts"][0]["context"]["namespace"] = "team"
    path.write_text(yaml.safe_dump(doc))
    cfg = from_kubeconfig(str(path))
    assert (cfg.server, cfg.token, cfg.namespace) == ("https://127.0.0.1:1", "t", "team")
    with pytest.raises(ConfigError, match="no context named 'other'"):
        from_kubeconfig(str(path), context="other")


# ----------------------------------------------------------------------------------- text, proxy
def test_text_answers_and_streams(api, namespace):
    assert "readyz check passed" in api.text("/readyz", query={"verbose": True})
    with api.stream("/readyz", query={"verbose": True}, accept="*/*") as s:
        lines = list(s.lines())
    assert lines[-1] == b"readyz check passed"
    # Logs of a pod no node runs: the API server's own error comes back as an ApiError.
    pods = core_path("pods", namespace)
    api.create(
        pods,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"p-{uuid.uuid4().hex[:6]}"},
            "spec": {"nodeName": "no-such-node", "containers": [{"name": "c", "image": "none"}]},
        },
    )
    name = api.list(pods)["items"][0]["metadata"]["name"]
    with pytest.raises(ApiError) as err:
        api.text(core_path("pods", namespace, name, "log"), query={"container": "c", "tailLines": 10})
    assert err.value.status in (400, 404, 500) and err.value.message
    # The node proxy (kubelet stats) path, for a node that does not exist.
    with pytest.raises(ApiError) as err:
        api.text(core_path("nodes", name="no-such-node", sub="proxy/stats/summary"))
    assert (err.value.status, err.value.reason) == (404, "NotFound")


def test_a_kept_alive_connection_the_server_dropped_is_replaced(kubeconfig, namespace):
    """The API server drops idle kept-alive connections; over TLS the next request on one fails with
    an EOF in the TLS layer. The client reconnects and retries once instead of answering 'unreachable'
    (before, the gateway's first request after an idle spell was a 503)."""
    c = Client(load_config(kubeconfig))
    assert c.get(core_path("namespaces", name=namespace))["metadata"]["name"] == namespace
    conn = c._local.conn
    raw = socket.socket(fileno=os.dup(conn.sock.fileno()))
    raw.shutdown(socket.SHUT_RDWR)  # the TCP connection is gone under the TLS session, as after a server close
    raw.close()
    assert c.get(core_path("namespaces", name=namespace))["metadata"]["name"] == namespace
    assert c._local.conn is not conn


def test_a_cluster_ca_is_the_only_trusted_one() -> None:
    """With a CA in the kubeconfig only it is trusted (as kubectl does), not the system's store too."""
    import ssl

    from k3svirt_common.kube.client import _ssl_context

    system = ssl.create_default_context().get_ca_certs(binary_form=True)
    if not system:
        pytest.skip("no system CA store to borrow a certificate from")
    pem = ssl.DER_cert_to_PEM_cert(system[0]).encode()
    assert len(_ssl_context(KubeConfig(server="https://k", ca_data=pem)).get_ca_certs()) == 1
    assert len(_ssl_context(KubeConfig(server="https://k")).get_ca_certs()) == len(system)
