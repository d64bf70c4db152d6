"""Fixtures of the robustness suites (hostile input, faults, load): the API server spoken to directly,
the real gateway (gunicorn) and real operators, all against the test bed.

Two forms: the short one runs in CI (scripts/test.sh); K3SVIRT_ROBUSTNESS=full runs the figures of
issue 14 (30 SIGKILL rounds, 20 VMs under a libvirtd restart, 100 VMs at 10/s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml

from tests import gateway_proc
from tests.e2e.conftest import Operator, free_port

REPO = Path(__file__).resolve().parents[2]
FULL = os.environ.get("K3SVIRT_ROBUSTNESS", "") == "full"
FULL_TIMEOUT = 3600 if FULL else 600  # pytest-timeout per test: the full forms run longer than 10 min
GROUP_PATH = "/apis/k3svirt.io/v1alpha1"

# Counted by the tests, printed at the end of the session (the issue asks for the case count).
COUNTS: dict[str, int] = {}
HOSTILE_KINDS = ("spec values", "raw bodies", "hostile URLs", "operator batch")


# cases.py's "shell-subst" value: no component may ever run it through a shell.
PWNED = Path("/tmp/k3svirt-pwned")


@pytest.fixture(autouse=True)
def _no_shell_ran_a_hostile_value() -> Iterator[None]:
    """Every robustness test: the hostile value `$(touch /tmp/k3svirt-pwned)` (sent to the API server,
    the gateway and the operators) never ran. A file from an earlier run is removed first."""
    PWNED.unlink(missing_ok=True)
    yield
    assert not PWNED.exists(), f"{PWNED} exists: a hostile value reached a shell"


def count(kind: str, n: int = 1) -> None:
    COUNTS[kind] = COUNTS.get(kind, 0) + n


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest hook
    if COUNTS:
        hostile = sum(n for kind, n in COUNTS.items() if kind.startswith(HOSTILE_KINDS))
        form = "full" if FULL else "short"
        terminalreporter.write_sep("-", f"robustness ({form} form): {hostile} hostile-input cases checked")
        for kind, n in sorted(COUNTS.items()):
            terminalreporter.write_line(f"  {kind}: {n}")


@dataclass
class ApiServer:
    """The API server over plain HTTPS with the test bed's admin certificate (raw bytes in and out)."""

    base: str
    session: requests.Session

    def request(self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json"):
        headers = {"Content-Type": ctype} if body is not None else {}
        # generous: on a machine shared by many test beds the API server can take tens of seconds
        return self.session.request(method, self.base + path, data=body, headers=headers, timeout=120)

    def vms(self, ns: str, name: str = "") -> str:
        return f"{GROUP_PATH}/namespaces/{ns}/virtualmachines" + (f"/{name}" if name else "")


@pytest.fixture(scope="session")
def apiserver(kubeconfig: str) -> ApiServer:
    cfg = yaml.safe_load(Path(kubeconfig).read_text())
    cluster, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
    s = requests.Session()
    s.trust_env = False  # REQUESTS_CA_BUNDLE and proxies from the environment would override these
    s.verify = cluster["certificate-authority"]
    s.cert = (user["client-certificate"], user["client-key"])
    return ApiServer(cluster["server"], s)


def make_namespace(api: ApiServer, prefix: str) -> str:
    ns = f"{prefix}-{uuid.uuid4().hex[:8]}"
    r = api.request("POST", "/api/v1/namespaces", json.dumps({"metadata": {"name": ns}}).encode())
    assert r.status_code == 201, r.text
    return ns


def namespace_domains(conn, ns: str) -> list:
    """The libvirt domains of a namespace's VMs (domain names are "<namespace>_<name>")."""
    return [d for d in conn.listAllDomains(0) if d.name().startswith(ns + "_")]


def remove_domains(conn, ns: str) -> None:
    """After a test: destroy and undefine what its operator left of the namespace's VMs."""
    for dom in namespace_domains(conn, ns):
        if dom.isActive():
            dom.destroy()
        dom.undefine()


def drop_namespace(api: ApiServer, ns: str, storage_root: Path | None = None) -> None:
    """Delete a namespace, first clearing finalizers of VMs no operator will finalize any more, and
    (after a failed test) what the operator left of them in `storage_root`."""
    if storage_root is not None:
        shutil.rmtree(storage_root / "vms" / ns, ignore_errors=True)
    r = api.request("GET", api.vms(ns))
    for vm in r.json().get("items", []) if r.ok else []:
        if vm["metadata"].get("finalizers"):
            api.request(
                "PATCH",
                api.vms(ns, vm["metadata"]["name"]),
                b'{"metadata":{"finalizers":null}}',
                "application/merge-patch+json",
            )
    api.request("DELETE", f"/api/v1/namespaces/{ns}")


@pytest.fixture(scope="module")
def robust_ns(apiserver: ApiServer) -> Iterator[str]:
    ns = make_namespace(apiserver, "rb")
    yield ns
    drop_namespace(apiserver, ns)


def _plain_session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # loopback only: no proxy from the environment
    return s


@dataclass
class Gateway:
    url: str
    headers: dict[str, str]
    log: Path
    session: requests.Session = field(default_factory=lambda: _plain_session())

    def request(self, method: str, path: str, **kw):
        kw.setdefault("timeout", 120)
        return self.session.request(method, self.url + path, headers={**self.headers, **kw.pop("headers", {})}, **kw)


@pytest.fixture(scope="session")
def gateway(testbed: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The production gateway (`k3svirt-gateway`, gunicorn) on 127.0.0.1 with an admin key."""
    d = tmp_path_factory.mktemp("gateway")
    keys = d / "api-keys"
    key = subprocess.run(
        [sys.executable, "-m", "k3svirt_gateway.keys", "add", "robust", "--role", "admin", "--file", str(keys)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    log = d / "gateway.log"
    env = {"K3SVIRT_API_KEYS_FILE": str(keys), "K3SVIRT_API_KEYS_SECRET": ""}
    with gateway_proc.gateway(env, log, args=("--threads", "16")) as (url, _proc):
        yield Gateway(url, {"Authorization": f"Bearer {key}"}, log)
    errors = [ln for ln in log.read_text(errors="replace").splitlines() if "Traceback" in ln or " 500 " in ln]
    assert not errors, f"the gateway logged errors: {errors[:5]}"


def operator_env(testbed: dict[str, str], node: str, **extra: str) -> dict[str, str]:
    """A private operator under a node name of its own (it never claims another suite's VMs). No
    kubelet registers that name, so it runs as an operator of a machine without a kubelet:
    reservations off (the accounting is tests/e2e/test_vm_accounting.py's, on the real node)."""
    return {
        **os.environ,
        **testbed,
        "K3SVIRT_NODE_NAME": node,
        "K3SVIRT_RESERVATIONS": "off",
        "K3SVIRT_STOP_GRACE_SECONDS": "2",
        "K3SVIRT_METRICS_PORT": str(free_port()),
        "K3SVIRT_STATS_INTERVAL": "5",
        "K3SVIRT_STATUS_SUMMARY_SECONDS": "30",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def start_operator(env: dict[str, str], log: Path) -> Operator:
    op = Operator(env, log)
    op.start()
    return op


def conditions(vm: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (vm.get("status") or {}).get("conditions") or []}


class LiveConnection:
    """A libvirt connection that opens itself again when the daemon was restarted under it (others
    restart the shared libvirtd; a suite must not fail on their restart)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn = None

    def _live(self):
        import libvirt

        if self._conn is None or not self._conn.isAlive():
            libvirt.registerErrorHandler(lambda *_: None, None)
            self._conn = libvirt.open(self.uri)
        return self._conn

    def __getattr__(self, name: str):
        import libvirt

        attr = getattr(self._live(), name)
        if not callable(attr):
            return attr

        def call(*args, **kw):
            try:
                return attr(*args, **kw)
            except libvirt.libvirtError:
                if self._conn is not None and self._conn.isAlive():
                    raise
                self._conn = None  # the daemon went away during the call: once more on a new connection
                return getattr(self._live(), name)(*args, **kw)

        return call


@pytest.fixture(scope="session")
def libvirt_conn(libvirt_uri: str) -> LiveConnection:
    return LiveConnection(libvirt_uri)
