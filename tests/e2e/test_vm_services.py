"""Services that select VMs (docs/services.md), end to end on the test bed's node: the operator
publishes the EndpointSlice, kube-proxy routes a NodePort from the host and a ClusterIP (by DNS name)
from a pod to the tiny guest's TCP listener, the VM's stop and deletion take its endpoint and slice
away, and nothing but the Service's port is opened into the VM network.

Traffic goes only to loopback, the node address and pods/VMs of this machine's own networks."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys

import pytest
import requests

from tests.gateway_proc import gateway
from tests.node.test_node import busybox, busybox_pod, used_namespaces  # noqa: F401 (fixtures)

from .conftest import get_json, kubectl, tiny_vm, wait_until
from .test_kubectl_plugin import plugin

BANNER = "K3SVIRT-SVC-HELLO"
# The guest answers every connection to port 8080 with the banner, and 9090 with another one (a
# port no Service names: it must stay closed to pods).
LISTENERS = (
    f"while true; do echo {BANNER} | nc -l -p 8080; done &\n"
    "while true; do echo K3SVIRT-UNEXPOSED | nc -l -p 9090; done\n"
)
SELECTOR = "k3svirt.io/vm-selector"


def banner_from(host: str, port: int) -> str:
    """The first line the peer sends ('' when refused or silent)."""
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            s.settimeout(5)
            return s.recv(256).decode(errors="replace").strip()
    except OSError:
        return ""


def slices(kubeconfig: str, ns: str, svc: str) -> list[dict]:
    out = get_json(kubeconfig, "endpointslices", "-n", ns, "-l", f"kubernetes.io/service-name={svc}")
    return out["items"]


def service(name: str, selector: str, **spec: object) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "annotations": {SELECTOR: selector}},
        "spec": {"type": "NodePort", "ports": [{"name": "banner", "port": 80, "targetPort": 8080}], **spec},
    }


def test_service_reaches_vm_by_nodeport_and_from_a_pod(
    testbed,
    kubeconfig,
    namespace,
    operator,
    tiny_guest,
    busybox,  # noqa: F811
    used_namespaces,  # noqa: F811
):
    used_namespaces.append(namespace)
    ns, name = namespace, "svcvm"
    vm = tiny_vm(name, tiny_guest)
    vm["metadata"]["labels"] = {"app": "banner"}
    vm["spec"]["boot"]["kernel"]["cmdline"] += f" k3svirt.run={base64.b64encode(LISTENERS.encode()).decode()}"
    kubectl(kubeconfig, "apply", "-n", ns, "-f", "-", stdin=json.dumps(vm))
    kubectl(kubeconfig, "apply", "-n", ns, "-f", "-", stdin=json.dumps(service("banner", "app=banner")))
    kubectl(kubeconfig, "wait", "-n", ns, "--for=condition=Ready", f"vm/{name}", "--timeout=180s")

    def ready_endpoint() -> str | None:
        for sl in slices(kubeconfig, ns, "banner"):
            for ep in sl.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready"):
                    return ep["addresses"][0]
        return None

    ip = wait_until(ready_endpoint, 600, "no ready endpoint for the VM (the guest boots emulated)")
    got = get_json(kubeconfig, "vm", name, "-n", ns)
    assert got["status"]["interfaces"][0]["ipAddress"] == ip
    (sl,) = slices(kubeconfig, ns, "banner")
    assert sl["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "operator.k3svirt.io"
    svc = get_json(kubeconfig, "service", "banner", "-n", ns)
    assert sl["metadata"]["ownerReferences"][0]["uid"] == svc["metadata"]["uid"]
    assert sl["ports"] == [{"name": "banner", "port": 8080, "protocol": "TCP"}]
    assert sl["endpoints"][0]["targetRef"]["name"] == name

    # NodePort from the host: on loopback and on the node address.
    node_port = svc["spec"]["ports"][0]["nodePort"]
    for host in ("127.0.0.1", testbed["K3SVIRT_TESTBED_NODE_IP"]):
        assert wait_until(lambda h=host: banner_from(h, node_port) == BANNER, 60, f"NodePort on {host}")

    # From a pod: the Service's DNS name (CoreDNS), its NodePort on the node address, and - refused -
    # the VM's address directly and a port the Service does not name.
    def until_answer(label: str, host: str, port: int) -> str:  # kube-proxy's rules come asynchronously
        return (f"for i in 1 2 3 4 5 6 7 8 9 10; do out=$(nc -w 3 {host} {port} </dev/null 2>/dev/null); "
                f'[ -n "$out" ] && break; sleep 1; done; echo "{label}:$out"; ')  # fmt: skip

    script = (
        until_answer("dns", f"banner.{ns}.svc.cluster.local", 80)
        + until_answer("nodeport", testbed["K3SVIRT_TESTBED_NODE_IP"], node_port)
        + f'echo "direct:$(nc -w 3 {ip} 8080 </dev/null 2>/dev/null)"; '
        + f'echo "other:$(nc -w 3 {ip} 9090 </dev/null 2>/dev/null)"'
    )
    kubectl(kubeconfig, "apply", "-n", ns, "-f", "-", stdin=json.dumps(busybox_pod("client", busybox, script)))

    def finished() -> bool:
        phase = get_json(kubeconfig, "pod", "client", "-n", ns)["status"].get("phase")
        return phase in ("Succeeded", "Failed")

    wait_until(finished, 120, "the client pod did not finish")
    out = dict(line.split(":", 1) for line in kubectl(kubeconfig, "logs", "-n", ns, "client").stdout.splitlines())
    assert out == {"dns": BANNER, "nodeport": BANNER, "direct": "", "other": ""}, out

    # kubectl k3svirt expose: a second Service for exactly this VM (by its name), NodePort.
    out = plugin(kubeconfig, "-n", ns, "expose", name, "--port", "81", "--target-port", "8080", "--type", "NodePort",
                 "--name", "byname").stdout  # fmt: skip
    assert out.startswith("service/byname exposed (node port "), out
    by_name = get_json(kubeconfig, "service", "byname", "-n", ns)["spec"]["ports"][0]["nodePort"]
    assert wait_until(lambda: banner_from("127.0.0.1", by_name) == BANNER, 90, "the exposed VM's NodePort")

    # A second node (an object only, tainted so nothing lands there): the VM's NAT address is not
    # reachable from it, so the endpoint goes and a Warning says why; back once the node is gone.
    other = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"other-{ns}"},
             "spec": {"taints": [{"key": "k3svirt.io/test-only", "effect": "NoSchedule"}]}}  # fmt: skip
    kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(other))
    try:
        wait_until(lambda: ready_endpoint() is None, 90, "the node-local address stayed published")
        events = get_json(kubeconfig, "events", "-n", ns, "--field-selector", "involvedObject.name=banner")["items"]
        assert any(e["reason"] == "VMAddressNodeLocal" and name in e["message"] for e in events), events
    finally:
        kubectl(kubeconfig, "delete", "node", other["metadata"]["name"], "--wait=false")
    assert wait_until(ready_endpoint, 90, "the endpoint did not come back") == ip

    # Stopping the VM takes its endpoint away (the slice stays while the VM exists) ...
    kubectl(kubeconfig, "patch", "vm", name, "-n", ns, "--type=merge", "-p", '{"spec":{"runStrategy":"Halted"}}')
    wait_until(lambda: [s.get("endpoints") or [] for s in slices(kubeconfig, ns, "banner")] == [[]], 120,
               "the stopped VM kept its endpoint")  # fmt: skip
    assert banner_from("127.0.0.1", node_port) == ""
    # ... and deleting it, the slice.
    kubectl(kubeconfig, "delete", "vm", name, "-n", ns, "--wait=false")
    wait_until(lambda: not slices(kubeconfig, ns, "banner"), 120, "the deleted VM's slice stayed")


def test_a_service_posted_through_the_gateway_fronts_the_vm(kubeconfig, namespace, operator, tiny_guest, tmp_path):
    """POST /api/v1/services {vm, ports} (the gateway under gunicorn): the operator publishes the VM's
    endpoint for the Service it created, and that endpoint (what kube-proxy forwards the Service's
    ports to) answers with the guest's banner; with the test bed's node (kube-proxy) its NodePort
    does too. Without the node (K3SVIRT_TESTBED_NODE=0) the NodePort step is left out."""
    ns, name = namespace, "postvm"
    vm = tiny_vm(name, tiny_guest)
    vm["spec"]["boot"]["kernel"]["cmdline"] += f" k3svirt.run={base64.b64encode(LISTENERS.encode()).decode()}"
    kubectl(kubeconfig, "apply", "-n", ns, "-f", "-", stdin=json.dumps(vm))
    keys = tmp_path / "keys"
    key = subprocess.run([sys.executable, "-m", "k3svirt_gateway.keys", "add", "svc", "--role", "admin",
                          "--namespaces", ns, "--file", str(keys)],
                         check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    env = {"KUBECONFIG": kubeconfig, "K3SVIRT_API_KEYS_FILE": str(keys), "K3SVIRT_API_KEYS_SECRET": ""}
    body = {"name": "posted", "vm": name, "type": "NodePort", "ports": [{"port": 80, "targetPort": 8080}]}
    with gateway(env, tmp_path / "gateway.log") as (url, _proc):
        r = requests.post(f"{url}/api/v1/services", params={"namespace": ns}, json=body,
                          headers={"Authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip
        assert r.status_code == 201, r.text
    svc = get_json(kubeconfig, "service", "posted", "-n", ns)
    assert svc["metadata"]["annotations"][SELECTOR] == f"k3svirt.io/vm-name={name}"
    kubectl(kubeconfig, "wait", "-n", ns, "--for=condition=Ready", f"vm/{name}", "--timeout=180s")

    def ready_endpoint() -> str | None:
        for sl in slices(kubeconfig, ns, "posted"):
            for ep in sl.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready"):
                    return ep["addresses"][0]
        return None

    ip = wait_until(ready_endpoint, 600, "no ready endpoint for the VM (the guest boots emulated)")
    assert get_json(kubeconfig, "vm", name, "-n", ns)["status"]["interfaces"][0]["ipAddress"] == ip
    (sl,) = slices(kubeconfig, ns, "posted")
    assert [(p["port"], p["protocol"]) for p in sl["ports"]] == [(8080, "TCP")], sl["ports"]
    assert sl["endpoints"][0]["targetRef"]["name"] == name
    assert wait_until(lambda: banner_from(ip, 8080) == BANNER, 120, "the endpoint did not answer")
    if os.environ.get("K3SVIRT_TESTBED_NODE") != "0":  # kube-proxy runs on the node
        node_port = svc["spec"]["ports"][0]["nodePort"]
        assert wait_until(lambda: banner_from("127.0.0.1", node_port) == BANNER, 90, "the posted NodePort")
    kubectl(kubeconfig, "delete", "vm", name, "-n", ns, "--wait=false")
    wait_until(lambda: not slices(kubeconfig, ns, "posted"), 120, "the deleted VM's slice stayed")


@pytest.mark.parametrize(
    ("selector", "reason"),
    [
        ("", "InvalidVMSelector"),
        ("app in (a,b)", "InvalidVMSelector"),
        ("a" * 2000, "InvalidVMSelector"),
        ("bad key!=x", "InvalidVMSelector"),
        ("k3svirt.io/vm-name=nobody,,", "InvalidVMSelector"),
    ],
)
def test_bad_selector_is_an_event_and_no_slice(kubeconfig, namespace, operator, selector, reason):
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(service("bad", selector)))

    def warned() -> bool:
        events = get_json(kubeconfig, "events", "-n", namespace, "--field-selector", "involvedObject.name=bad")
        return any(e["reason"] == reason and e["type"] == "Warning" for e in events["items"])

    wait_until(warned, 60, f"no {reason} Event")
    assert not slices(kubeconfig, namespace, "bad")
