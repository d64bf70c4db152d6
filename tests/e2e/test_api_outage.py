"""The API server stopped for 60 s under a running gateway (gunicorn) and operator (kopf + libvirt):
every gateway route answers 503 problem+json with Retry-After (never 500, never a hang, never a 404
that claims something does not exist), a write attempted meanwhile is refused and not half-done, and
both processes recover by themselves when the API server returns, with nothing lost or duplicated.

Stops only this test bed's kube-apiserver (tests/harness/controlplane.sh api-stop; kine and the
controllers keep running)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from tests.gateway_proc import gateway

from .conftest import REPO, get_json, kubectl, tiny_vm, virsh, wait_until

OUTAGE_SECONDS = 60
PATH_ARGS = {"name": "outage-probe", "address": "0000:ff:1f.7", "snap": "outage-snap"}


def controlplane(action: str) -> None:
    proc = subprocess.run(
        ["bash", str(REPO / "tests/harness/controlplane.sh"), action], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"controlplane.sh {action}: {proc.stderr[-2000:]}"


def _key(path: Path, name: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "k3svirt_gateway.keys", "add", name, "--role", "admin", "--file", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _domains(ns: str) -> dict[str, str]:
    """{domain name: UUID} of this namespace's domains."""
    rows = (line.split() for line in virsh("list", "--all", "--uuid", "--name").splitlines())
    return {row[1]: row[0] for row in rows if len(row) == 2 and row[1].startswith(f"{ns}_")}  # one call: no race


def _sweep(url: str, doc: dict, headers: dict[str, str], ns: str) -> dict[str, int]:
    """Every operation of the served OpenAPI document, once; {"METHOD path": status}."""
    seen: dict[str, int] = {}
    for path, ops in doc["paths"].items():
        for method in ops:
            concrete = re.sub(r"\{([a-zA-Z_]+)\}", lambda m: PATH_ARGS[m.group(1)], path)
            t = time.monotonic()
            r = requests.request(
                method.upper(), f"{url}{concrete}", params={"namespace": ns}, headers=headers, timeout=30
            )
            took = time.monotonic() - t
            where = f"{method.upper()} {concrete}: {r.status_code} {r.text[:300]}"
            assert took < 15, f"{where} took {took:.1f} s (a hang on the missing API server)"
            if path in ("/healthz", "/openapi.json", "/docs", "/api/v1"):
                # the gateway itself is alive; the API index is the gateway's own (feature detection)
                assert r.status_code == 200, where
            elif r.status_code == 503:
                assert r.headers.get("Content-Type", "").startswith("application/problem+json"), where
                assert int(r.headers["Retry-After"]) > 0, where
            else:
                # Refusals decided without the API server (no body, wrong media type, a WebSocket route
                # asked without the upgrade) are fine; a 404, 401, 2xx or another 5xx would be an answer
                # the gateway cannot know.
                websocket = "101" in (ops[method].get("responses") or {})
                assert r.status_code in ((400, 415, 422, 426) if websocket else (400, 415, 422)), where
            seen[f"{method.upper()} {path}"] = r.status_code
    return seen


@pytest.mark.timeout(900)
def test_api_server_away_60s(kubeconfig, namespace, operator, tiny_guest, tmp_path):
    ns = namespace
    keyfile = tmp_path / "keys"
    admin = {"X-API-Key": _key(keyfile, "admin")}
    # A second key lives in a Secret: the key store's own outage behaviour under the real gateway.
    tenant_key = "k3sv_outage-tenant-key"
    from k3svirt_gateway.auth import format_entry

    entry = format_entry("tenant", "read", tenant_key, ns) + "\n"
    kubectl(kubeconfig, "create", "secret", "generic", "gw-keys", "-n", ns, f"--from-literal=keys={entry}")
    tenant = {"X-API-Key": tenant_key}
    env = {
        "KUBECONFIG": kubeconfig,
        "K3SVIRT_API_KEYS_FILE": str(keyfile),
        "K3SVIRT_API_KEYS_SECRET": f"{ns}/gw-keys",
        "K3SVIRT_API_KEYS_SECRET_TTL": "5",
        "K3SVIRT_API_KEYS_SECRET_MAX_STALE": "10",
        "K3SVIRT_LIST_CACHE_MAX_STALE": "5",
    }
    log = tmp_path / "gateway.log"
    with gateway(env, log, args=("--threads", "8")) as (url, gw_proc):
        api = f"{url}/api/v1"
        doc = requests.get(f"{url}/openapi.json", timeout=10).json()
        before = tiny_vm("before", tiny_guest)
        r = requests.post(f"{api}/vms?namespace={ns}", json={"name": "before", "spec": before["spec"]}, headers=admin)
        assert r.status_code == 201, r.text
        kubectl(kubeconfig, "wait", "-n", ns, "--for=condition=Ready", "vm/before", "--timeout=240s")
        assert requests.get(f"{api}/vms?namespace={ns}", headers=tenant, timeout=10).status_code == 200
        uuid_before = _domains(ns)[f"{ns}_before"]
        assert (
            requests.get(f"{api}/vms?namespace={ns}", headers=admin, timeout=10).json()["items"][0]["name"] == "before"
        )

        controlplane("api-stop")
        stopped = time.monotonic()
        try:
            time.sleep(16)  # past the list cache's 5 s and the key Secret's 5 + 10 s
            r = requests.get(f"{url}/readyz", timeout=10)
            assert r.status_code == 503 and "Retry-After" in r.headers, r.text
            # Writes meanwhile: refused clearly, and (checked after) not half-done.
            during = tiny_vm("during", tiny_guest)
            r = requests.post(
                f"{api}/vms?namespace={ns}", json={"name": "during", "spec": during["spec"]}, headers=admin
            )
            assert r.status_code == 503 and "Retry-After" in r.headers, r.text
            r = requests.delete(f"{api}/vms/before?namespace={ns}", headers=admin, timeout=30)
            assert r.status_code == 503, r.text
            r = requests.post(f"{api}/vms/before/stop?namespace={ns}", headers=admin, timeout=30)
            assert r.status_code == 503, r.text
            r = requests.get(f"{api}/vms?namespace={ns}", headers=tenant, timeout=30)  # key copy expired
            assert r.status_code == 503 and "API keys unavailable" in r.json()["detail"], r.text
            seen = _sweep(url, doc, admin, ns)
            # every read of cluster state (the index is the gateway's own and answers 200)
            gets = [k for k, v in seen.items()
                    if k.startswith("GET /api/") and k != "GET /api/v1" and not k.endswith("/console")]  # fmt: skip
            assert gets and all(seen[k] == 503 for k in gets), seen
            assert len(seen) >= 35, seen
            assert gw_proc.poll() is None and operator.proc.poll() is None
            # The guest does not need the API server: its domain keeps running.
            assert virsh("domstate", f"{ns}_before") == "running"
            time.sleep(max(0.0, stopped + OUTAGE_SECONDS - time.monotonic()))
        finally:
            controlplane("api-start")
        back, back_wall = time.monotonic(), datetime.now(UTC)

        # Recovery without restarting anything.
        wait_until(lambda: requests.get(f"{url}/readyz", timeout=10).status_code == 200, 60, "gateway not ready again")
        wait_until(
            lambda: requests.get(f"{api}/vms?namespace={ns}", headers=tenant, timeout=10).status_code == 200,
            30,
            "the Secret key did not come back",
        )

        def status_fresh() -> bool:  # the operator writes the running VM's status again
            updated = (get_json(kubeconfig, "vm", "before", "-n", ns)["status"].get("monitoring") or {}).get(
                "updatedAt"
            )
            return bool(updated) and datetime.fromisoformat(updated.replace("Z", "+00:00")) > back_wall

        wait_until(status_fresh, 25, "the operator did not update the running VM's status within 25 s of the return")
        status_after = time.monotonic() - back
        assert requests.get(f"{api}/vms/during?namespace={ns}", headers=admin, timeout=10).status_code == 404
        items = requests.get(f"{api}/vms?namespace={ns}", headers=admin, timeout=10).json()["items"]
        assert [i["name"] for i in items] == ["before"], items
        vm = get_json(kubeconfig, "vm", "before", "-n", ns)
        assert vm["spec"]["runStrategy"] == "Always" and not vm["metadata"].get("deletionTimestamp")
        after = tiny_vm("after", tiny_guest)
        r = requests.post(f"{api}/vms?namespace={ns}", json={"name": "after", "spec": after["spec"]}, headers=admin)
        assert r.status_code == 201, r.text
        kubectl(kubeconfig, "wait", "-n", ns, "--for=condition=Ready", "vm/after", "--timeout=240s")
        recovered = time.monotonic() - back
        domains = _domains(ns)
        assert set(domains) == {f"{ns}_before", f"{ns}_after"}, domains  # nothing lost, nothing extra
        assert domains[f"{ns}_before"] == uuid_before  # the same domain, not a re-created one
        assert domains[f"{ns}_after"] == get_json(kubeconfig, "vm", "after", "-n", ns)["metadata"]["uid"]
        assert get_json(kubeconfig, "vm", "before", "-n", ns)["status"]["printableStatus"] == "Running"
        for name in ("before", "after"):
            assert requests.delete(f"{api}/vms/{name}?namespace={ns}", headers=admin, timeout=10).status_code == 202
        wait_until(lambda: not _domains(ns), 120, f"domains left after delete: {_domains(ns)}")
        assert gw_proc.poll() is None and operator.proc.poll() is None
    text = log.read_text()
    assert "Traceback" not in text and " 500 " not in text, text[-3000:]
    sys.stdout.write(
        f"\nAPI server away {OUTAGE_SECONDS} s; after it returned: running VM's status written again in "
        f"{status_after:.0f} s, a new VM Ready in {recovered:.0f} s\n"
    )


def test_api_server_hung_20s(kubeconfig, namespace, tiny_guest, tmp_path):
    """A frozen API server (SIGSTOP: connections accepted, never answered) is the nastier outage:
    the gateway still answers 503 + Retry-After within its timeouts, and a create whose request the
    API server may still carry out after it thaws is never doubled by the client's retry."""
    import os
    import signal

    pidfile = Path(os.environ["K3SVIRT_STATE"]) / "controlplane/kube-apiserver.pid"
    pid = int(pidfile.read_text())
    keyfile = tmp_path / "keys"
    admin = {"X-API-Key": _key(keyfile, "admin")}
    env = {
        "KUBECONFIG": kubeconfig,
        "K3SVIRT_API_KEYS_FILE": str(keyfile),
        "K3SVIRT_KUBE_TIMEOUT": "4",
        "K3SVIRT_KUBE_CONNECT_TIMEOUT": "2",
        "K3SVIRT_LIST_CACHE": "off",
    }
    spec = tiny_vm("hung", tiny_guest)["spec"] | {"runStrategy": "Halted"}
    with gateway(env, tmp_path / "gateway.log", args=("--threads", "8")) as (url, gw_proc):
        api = f"{url}/api/v1"
        os.kill(pid, signal.SIGSTOP)
        try:
            for method, path, body in (
                ("GET", f"/vms?namespace={namespace}", None),
                ("GET", f"/deployments/x?namespace={namespace}", None),
                ("GET", "/nodes", None),
                ("POST", f"/vms?namespace={namespace}", {"name": "hung", "spec": spec}),
            ):
                t = time.monotonic()
                r = requests.request(method, api + path, json=body, headers=admin, timeout=30)
                took = time.monotonic() - t
                assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0, (path, r.status_code, r.text)
                assert took < 12, f"{method} {path} took {took:.1f} s with the API server frozen"
            assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda: requests.get(f"{url}/readyz", timeout=10).status_code == 200, 60, "not ready after thaw")

        def retried_create() -> int | None:
            r = requests.post(f"{api}/vms?namespace={namespace}", json={"name": "hung", "spec": spec}, headers=admin)
            return None if r.status_code == 503 else r.status_code

        assert wait_until(retried_create, 60, "create still 503 after thaw") in (201, 409)
        items = requests.get(f"{api}/vms?namespace={namespace}", headers=admin, timeout=10).json()["items"]
        assert [i["name"] for i in items] == ["hung"], items  # exactly one, whichever request made it
        assert gw_proc.poll() is None
