"""The chart installed for real (issue #13 item 5): `helm install charts/k3svirt` onto a real kubelet node
with the locally built operator and gateway images, VMs run by the operator's DaemonSet pod, a VM created
through the gateway's Service, `helm upgrade` to a new image tag without restarting a guest, and
`helm uninstall` leaving the VMs running (docs/helm.md, "Upgrade and uninstall").

The node is a node instance of its own (tests/harness/node.sh, K3SVIRT_E2E_NODE_INSTANCE or the first
free one): its name is served by the chart's operator alone, so the e2e suite's operator fixture (the
test bed's node) and this DaemonSet can never claim the same VMs, whatever runs before or after. The
chart's operator and gateway are pinned to it by nodeSelector. Its pods reach the API server through the
instance's `kubernetes` Service rule (node.sh); an instance has no kube-proxy, so the gateway's Service
is reached through the API server's service proxy (the Service's endpoints), and also through its
ClusterIP from this machine when the test bed's own node runs kube-proxy here (CI).

The images come from tests/harness/images.sh (cached by a hash of their inputs: built once per change of
the operator/gateway sources) and are imported into the instance's containerd; the "new" tag of the
upgrade is the same image tagged again (the pods are replaced either way: that is what an upgrade does
to running VMs). Short by design (one VM flow, two tiny guests); K3SVIRT_CHART_LONG=1 adds a second
upgrade round (back to the first tag).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from k3svirt_common import names
from k3svirt_common import reservation as rsv

from tests.chart.conftest import CHART, REPO, run
from tests.e2e.conftest import get_json, kubectl, tiny_vm, virsh
from tests.e2e.node_instance import NodeInstance, needs_instances, start_instance
from tests.polling import wait_until

pytestmark = needs_instances

IMAGES_SH = REPO / "tests/harness/images.sh"
APP_VERSION = tomllib.loads((REPO / "operator/pyproject.toml").read_text())["project"]["version"]
UPGRADE_TAG = f"{APP_VERSION}-upgrade"
RELEASE = "k3svirt"
LONG = os.environ.get("K3SVIRT_CHART_LONG") == "1"


def _remove_killed_runs_releases(helm: str, kubeconfig: str) -> None:
    """Releases a killed run left behind: their DaemonSet, pinned to the node instance's name, would
    run a second operator on the instance this run starts again."""
    for ns in get_json(kubeconfig, "namespaces")["items"]:
        name = ns["metadata"]["name"]
        if name.startswith("k3svirt-chart-") and not ns["metadata"].get("deletionTimestamp"):
            run([helm, "--kubeconfig", kubeconfig, "-n", name, "uninstall", RELEASE, "--wait", "--timeout", "120s"],
                check=False)  # fmt: skip
            kubectl(kubeconfig, "delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def chart_node(testbed: dict[str, str], helm: str) -> Iterator[NodeInstance]:
    """A node instance holding the operator and gateway images, under the chart's tag and the upgrade's."""
    _remove_killed_runs_releases(helm, testbed["KUBECONFIG"])
    built = run(["bash", str(IMAGES_SH), "build", "operator", "gateway"], timeout=1800).stdout
    archives = {ref: path for ref, path in (line.split() for line in built.splitlines() if line.strip())}
    node = start_instance()
    try:
        sock = node.node_sh("socket").stdout.strip()
        for component in ("operator", "gateway"):
            ref = f"localhost/k3svirt/{component}:{APP_VERSION}"
            assert ref in archives, f"images.sh build printed no {ref}: {built}"
            imported = node.node_sh("import-image", archives[ref])
            assert imported.returncode == 0, imported.stderr
            run(["ctr", "-a", sock, "-n", "k8s.io", "images", "tag", "--force", ref,
                 f"localhost/k3svirt/{component}:{UPGRADE_TAG}"])  # fmt: skip
        yield node
    finally:
        node.node_sh("stop")
        _release_templates(testbed["KUBECONFIG"], node.name)


def _release_templates(kubeconfig: str, node: str) -> None:
    """The node's operator put its finalizer on every VMTemplate of the cluster (the deletion guard,
    one per node); with the node gone nobody else removes it (the vanished-node sweep covers VMs only),
    so a template deleted later would wait for ever: the test takes its node's finalizer off again."""
    fin = names.finalizer_for(node)
    for t in get_json(kubeconfig, "vmt", "-A")["items"]:
        meta = t["metadata"]
        if fin in (meta.get("finalizers") or []):
            kept = [f for f in meta["finalizers"] if f != fin]
            patch = {"metadata": {"finalizers": kept or None, "resourceVersion": meta["resourceVersion"]}}
            kubectl(kubeconfig, "patch", "vmt", meta["name"], "-n", meta["namespace"], "--type=merge",
                    "-p", json.dumps(patch), check=False)  # fmt: skip


class Release:
    """One helm release of the chart in its own namespace, installed for one node."""

    def __init__(self, helm: str, kubeconfig: str, namespace: str, values: Path, key: str) -> None:
        self.helm, self.kubeconfig, self.namespace, self.values = helm, kubeconfig, namespace, values
        self.key = key  # the plain admin API key whose hash the chart's key Secret holds

    def helm_cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run([self.helm, "--kubeconfig", self.kubeconfig, "-n", self.namespace, *args], check=check)

    def install(self) -> None:
        self.helm_cmd("install", RELEASE, str(CHART), "-f", str(self.values), "--wait", "--timeout", "4m")

    def upgrade(self, *sets: str) -> None:
        args = [a for s in sets for a in ("--set", s)]
        self.helm_cmd("upgrade", RELEASE, str(CHART), "--reuse-values", *args, "--wait", "--timeout", "4m")

    def uninstall(self, check: bool = True) -> None:
        self.helm_cmd("uninstall", RELEASE, "--wait", "--timeout", "2m", check=check)

    def pods(self, component: str) -> list[dict[str, Any]]:
        sel = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={component}"
        items = get_json(self.kubeconfig, "pods", "-n", self.namespace, "-l", sel)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def running_pod(self, component: str) -> dict[str, Any]:
        def one() -> dict[str, Any] | None:
            pods = self.pods(component)
            ok = [p for p in pods if p["status"].get("phase") == "Running"
                  and all(c.get("ready") for c in p["status"].get("containerStatuses") or [{}])]  # fmt: skip
            return ok[0] if len(pods) == 1 and ok else None

        return wait_until(one, 120, f"no single ready {component} pod in {self.namespace}")


@pytest.fixture
def vm_namespace(namespace: str, kubeconfig: str) -> Iterator[str]:
    """The test's VM namespace; whatever the test left in it (a failed run with the operator uninstalled)
    is removed by hand: finalizers dropped, the namespace's libvirt domains and disks removed."""
    yield namespace
    for vm in get_json(kubeconfig, "vm", "-n", namespace)["items"]:
        kubectl(kubeconfig, "patch", "-n", namespace, f"vm/{vm['metadata']['name']}", "--type=merge",
                "-p", '{"metadata":{"finalizers":null}}', check=False)  # fmt: skip
    for domain in virsh("list", "--all", "--name", check=False).split():
        if domain.startswith(f"{namespace}_"):
            virsh("destroy", domain, check=False)
            virsh("undefine", domain, "--nvram", check=False)
    run(["rm", "-rf", str(Path(os.environ["K3SVIRT_STORAGE_ROOT"]) / "vms" / namespace)], check=False)


@pytest.fixture
def release(helm: str, kubeconfig: str, chart_node: NodeInstance, domain_type: str, tmp_path: Path,
            storage_root: Path, vm_namespace: str) -> Iterator[Release]:  # fmt: skip
    """The chart's values for this node (not installed yet), in a fresh privileged namespace, and the
    admin API key of the chart-managed key Secret (release.key). Uninstalled before the VM namespace
    is cleaned up (vm_namespace is set up first, so torn down last)."""
    from k3svirt_gateway.auth import format_entry
    from k3svirt_gateway.keys import new_key

    ns = f"k3svirt-chart-{uuid.uuid4().hex[:8]}"
    kubectl(kubeconfig, "create", "namespace", ns)
    kubectl(kubeconfig, "label", "namespace", ns, "pod-security.kubernetes.io/enforce=privileged")
    key = new_key()
    pin = {"kubernetes.io/hostname": chart_node.name}
    values = {
        "image": {"tag": APP_VERSION},
        "operator": {
            "storageRoot": str(storage_root),
            "kernelDirs": [str(storage_root / "guest")],
            "volumeDirs": [str(storage_root / "chart-volumes")],
            "imageDirs": [str(storage_root / "chart-images")],
            # The test bed's probe result (tests/harness/testbed.sh): no second probe in the pod.
            "accel": "kvm" if domain_type == "kvm" else "qemu",
            "stopGraceSeconds": 3,
            "resyncSeconds": 5,
            "nodeSelector": pin,
        },
        "gateway": {"nodeSelector": pin, "apiKeys": {"hashed": [format_entry("e2e", "admin", key)]}},
    }
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    rel = Release(helm, kubeconfig, ns, path, key)
    yield rel
    if rel.pods("operator"):  # a failed run: the templates go while their guard can still release them
        kubectl(kubeconfig, "delete", "vmt", "--all", "-n", ns, "--timeout=60s", check=False)
    # What the operator said (shown with a failure's captured output).
    for pod in rel.pods("operator"):
        logs = kubectl(kubeconfig, "logs", "-n", ns, pod["metadata"]["name"], "--tail=60", check=False)
        print(f"--- {pod['metadata']['name']} log tail ---\n{logs.stdout}{logs.stderr}")
    rel.uninstall(check=False)
    kubectl(kubeconfig, "delete", "namespace", ns, "--wait=false", check=False)


# ------------------------------------------------------------------------------------------ helpers
def _vm(kubeconfig: str, ns: str, name: str) -> dict[str, Any]:
    return get_json(kubeconfig, "vm", name, "-n", ns)


def _wait_ready(kubeconfig: str, ns: str, name: str, timeout: str = "120s") -> dict[str, Any]:
    waited = kubectl(kubeconfig, "wait", "-n", ns, "--for=condition=Ready", f"vm/{name}", f"--timeout={timeout}",
                     check=False)  # fmt: skip
    vm = _vm(kubeconfig, ns, name)
    assert waited.returncode == 0, f"{ns}/{name} not Ready: {json.dumps(vm.get('status'), indent=1)[-3000:]}"
    return vm


def _qemu(domain: str) -> tuple[str, str]:
    """(libvirt domain id, QEMU pid): both change when the guest is restarted."""
    pid = Path(f"/run/libvirt/qemu/{domain}.pid").read_text().strip()
    return virsh("domid", domain), pid


def _run_strategy(kubeconfig: str, ns: str, name: str, strategy: str) -> None:
    kubectl(kubeconfig, "patch", "-n", ns, f"vm/{name}", "--type=merge",
            "-p", json.dumps({"spec": {"runStrategy": strategy}}))  # fmt: skip


class Gateway:
    """The gateway's Service: through the API server's service proxy (it picks one of the Service's
    ready endpoints), or at its ClusterIP (kube-proxy) where this machine has the test bed's kube-proxy."""

    def __init__(self, kubeconfig: str, namespace: str, key: str) -> None:
        from k3svirt_common.kube import from_kubeconfig

        self.cfg = from_kubeconfig(kubeconfig)
        self.ctx = ssl.create_default_context(cafile=self.cfg.ca_file)
        self.ctx.load_cert_chain(self.cfg.cert_file, self.cfg.key_file)
        svc = get_json(kubeconfig, "service", f"{RELEASE}-gateway", "-n", namespace)
        self.cluster_ip, self.port = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["port"]
        self.proxy = f"{self.cfg.server}/api/v1/namespaces/{namespace}/services/http:{RELEASE}-gateway:http/proxy"
        self.key = key

    def call(self, method: str, path: str, body: Any = None, via: str = "proxy") -> tuple[int, Any]:
        base = self.proxy if via == "proxy" else f"http://{self.cluster_ip}:{self.port}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(base + path, data=data, method=method)
        # X-API-Key, not Authorization: the API server's proxy would take a bearer token for its own.
        req.add_header("X-API-Key", self.key)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        ctx = self.ctx if via == "proxy" else None
        try:
            with urllib.request.urlopen(req, timeout=30, context=ctx) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")


def _testbed_kube_proxy_here() -> bool:
    """The test bed's own primary node (with kube-proxy in this machine's network namespace) runs."""
    return os.environ.get("K3SVIRT_TESTBED_NODE", "1") != "0" and os.environ.get(
        "K3SVIRT_TESTBED_NODE_INSTANCE", "0"
    ) in ("", "0")


# ------------------------------------------------------------------------------------------ the test
def test_helm_install_runs_vms_upgrade_keeps_them_uninstall_leaves_them(
    kubeconfig, vm_namespace, release, chart_node, tiny_guest, storage_root
):
    ns, node = vm_namespace, chart_node.name
    release.install()

    # The operator is the DaemonSet's pod on the node, privileged, with the host's libvirt socket, /sys
    # and the storage dir; the gateway the Deployment's pod behind its Service.
    op_pod = release.running_pod("operator")
    assert op_pod["spec"]["nodeName"] == node
    assert op_pod["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet"
    container = op_pod["spec"]["containers"][0]
    assert container["image"] == f"localhost/k3svirt/operator:{APP_VERSION}"
    assert container["securityContext"]["privileged"] is True
    host_paths = {v["hostPath"]["path"] for v in op_pod["spec"]["volumes"] if "hostPath" in v}
    assert {"/var/run/libvirt", "/sys", str(storage_root)} <= host_paths, host_paths
    gw_pod = release.running_pod("gateway")
    assert gw_pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert gw_pod["spec"]["containers"][0]["image"] == f"localhost/k3svirt/gateway:{APP_VERSION}"
    slices = get_json(kubeconfig, "endpointslices", "-n", release.namespace,
                      "-l", f"kubernetes.io/service-name={RELEASE}-gateway")["items"]  # fmt: skip
    addresses = {a for s in slices for e in s.get("endpoints") or [] for a in e["addresses"]}
    assert addresses == {gw_pod["status"]["podIP"]}, addresses

    # The VM lifecycle against the helm-installed operator: apply -> Ready -> the guest's console marker.
    name, domain = "chart-vm", names.domain_name(ns, "chart-vm")
    kubectl(kubeconfig, "apply", "-n", ns, "-f", "-", stdin=json.dumps(tiny_vm(name, tiny_guest, nodeName=node)))
    vm = _wait_ready(kubeconfig, ns, name)
    assert vm["status"]["node"] == node
    assert vm["metadata"]["finalizers"] == [names.finalizer_for(node)]
    assert virsh("domstate", domain) == "running"
    console = Path(vm["status"]["consoleLog"])
    wait_until(lambda: console.exists() and tiny_guest.marker in console.read_text(errors="replace"), 90,
               f"no {tiny_guest.marker} in {console}")  # fmt: skip
    # Its reservation pod (docs/accounting.md) is on the node too, and the operator that wrote all this
    # is the pod's: its log (through the kubelet) says it started for this node.
    assert get_json(kubeconfig, "pod", rsv.pod_name(name), "-n", ns)["spec"]["nodeName"] == node
    logs = kubectl(kubeconfig, "logs", "-n", release.namespace, op_pod["metadata"]["name"]).stdout
    assert "operator starting" in logs and node in logs, logs[-2000:]

    # A VM created through the gateway's Service with the key of the chart's Secret.
    secret = get_json(kubeconfig, "secret", f"{RELEASE}-gateway-api-keys", "-n", release.namespace)
    assert "e2e:admin:sha256:" in base64.b64decode(secret["data"]["keys"]).decode()
    gw = Gateway(kubeconfig, release.namespace, release.key)
    body = {"name": "via-gateway", "spec": tiny_vm("via-gateway", tiny_guest, nodeName=node)["spec"]}
    status, out = gw.call("POST", f"/api/v1/vms?namespace={ns}", body)
    assert status == 201, out
    if _testbed_kube_proxy_here():
        status, out = gw.call("GET", f"/api/v1/vms?namespace={ns}", via="cluster-ip")
        assert status == 200 and "via-gateway" in json.dumps(out), out
    assert gw.call("GET", f"/api/v1/vms?namespace={ns}", body=None)[0] == 200
    status, _ = Gateway(kubeconfig, release.namespace, "k3sv_not-a-key").call("GET", f"/api/v1/vms?namespace={ns}")
    assert status == 401
    gdomain = names.domain_name(ns, "via-gateway")
    _wait_ready(kubeconfig, ns, "via-gateway")

    # helm upgrade to a new image tag: both pods are replaced, no guest restarts (same domain id and QEMU pid).
    before = {d: _qemu(d) for d in (domain, gdomain)}
    old_op, old_gw = op_pod["metadata"]["uid"], gw_pod["metadata"]["uid"]
    rounds = 2 if LONG else 1
    for i in range(rounds):
        tag = UPGRADE_TAG if i % 2 == 0 else APP_VERSION
        release.upgrade(f"image.tag={tag}")
        op_pod, gw_pod = release.running_pod("operator"), release.running_pod("gateway")
        assert op_pod["metadata"]["uid"] != old_op and gw_pod["metadata"]["uid"] != old_gw
        assert op_pod["spec"]["containers"][0]["image"] == f"localhost/k3svirt/operator:{tag}"
        assert gw_pod["spec"]["containers"][0]["image"] == f"localhost/k3svirt/gateway:{tag}"
        old_op, old_gw = op_pod["metadata"]["uid"], gw_pod["metadata"]["uid"]
        assert {d: _qemu(d) for d in before} == before, "a guest was restarted by the upgrade"
        # The new operator adopted them: status still Ready, written by it (a fresh observation).
        assert _wait_ready(kubeconfig, ns, name)["status"]["printableStatus"] == "Running"

    # Stop and start, now by the upgraded operator (ACPI shutdown honoured by the guest).
    _run_strategy(kubeconfig, ns, name, "Halted")
    wait_until(lambda: virsh("domstate", domain, check=False) == "shut off", 60, "the domain did not stop")
    assert "K3SVIRT-GUEST-POWEROFF" in console.read_text(errors="replace")
    wait_until(lambda: _vm(kubeconfig, ns, name)["status"]["printableStatus"] == "Stopped", 30, "not Stopped")
    _run_strategy(kubeconfig, ns, name, "Always")
    _wait_ready(kubeconfig, ns, name, "90s")
    wait_until(lambda: console.read_text(errors="replace").count(tiny_guest.marker) >= 2, 90,
               "the restarted guest did not boot")  # fmt: skip
    before = {d: _qemu(d) for d in (domain, gdomain)}

    # helm uninstall (documented: VMs are retained and keep running, unmanaged): the operator and the
    # gateway are gone, the VM objects, their finalizers and reservations stay, no guest is stopped.
    release.uninstall()
    wait_until(lambda: not release.pods("operator") and not release.pods("gateway"), 90, "pods left after uninstall")
    assert {d: _qemu(d) for d in before} == before, "helm uninstall stopped or restarted a guest"
    for vm_name in (name, "via-gateway"):
        left = _vm(kubeconfig, ns, vm_name)
        assert left["metadata"]["finalizers"] == [names.finalizer_for(node)]
        assert not left["metadata"].get("deletionTimestamp")
    assert get_json(kubeconfig, "pod", rsv.pod_name(name), "-n", ns)["spec"]["nodeName"] == node
    # The CRDs stay (helm never deletes crds/): the VMs are still objects of the API; so do the
    # chart's VMTemplates (vmTemplates.keep, the default), which retained VMs may reference.
    kubectl(kubeconfig, "get", "crd", f"{names.VM_PLURAL}.{names.GROUP}")
    templates = get_json(kubeconfig, "vmt", "-n", release.namespace)["items"]
    assert templates and not any(t["metadata"].get("deletionTimestamp") for t in templates)

    # Installed again, the operator adopts the running guests (no restart), and a delete now goes all
    # the way: domain undefined, disks gone.
    release.install()
    release.running_pod("operator")
    for vm_name in (name, "via-gateway"):
        _wait_ready(kubeconfig, ns, vm_name)
    assert {d: _qemu(d) for d in before} == before, "the reinstalled operator restarted a guest"
    vm_dir = console.parent
    kubectl(kubeconfig, "delete", "-n", ns, f"vm/{name}", "vm/via-gateway", "--timeout=90s")
    listed = virsh("list", "--all", "--name").split()
    assert domain not in listed and gdomain not in listed
    assert not vm_dir.exists()
    # Removing everything, the documented way: VMs first (done), then the templates while the operator
    # runs (its deletion guard releases them), then the uninstall, which then leaves nothing behind.
    kubectl(kubeconfig, "delete", "vmt", "--all", "-n", release.namespace, "--timeout=60s")
    release.uninstall()
    assert not get_json(kubeconfig, "vmt", "-n", release.namespace)["items"]
