"""The test bed's node really runs containers: kubelet on containerd, kube-proxy Services, CoreDNS.

Everything is real (tests/harness/node.sh): pods run in network namespaces the test bed creates, and
the only traffic these tests send goes to loopback, the node IP (an address of this machine) or to
pods, through Services as kube-proxy routes them. Images come from tests/harness/images.sh.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.polling import wait_until

HARNESS = Path(__file__).resolve().parents[1] / "harness"
PAUSE = "localhost/k3svirt/pause:3.10"


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def apply(ns: str, manifest: dict) -> None:
    kubectl("-n", ns, "apply", "-f", "-", stdin=json.dumps(manifest))


def pod(ns: str, name: str) -> dict:
    return json.loads(kubectl("-n", ns, "get", "pod", name, "-o", "json").stdout)


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=3) as r:  # loopback, the node IP or a ClusterIP only
        return r.read().decode()


def try_http_get(url: str) -> str | None:
    try:
        return http_get(url)
    except OSError:
        return None


@pytest.fixture(scope="module")
def used_namespaces() -> list[str]:
    return []


@pytest.fixture
def ns(namespace: str, used_namespaces: list[str]) -> str:
    """A fresh namespace (deleted after the test), remembered so the module can wait for its pods."""
    used_namespaces.append(namespace)
    return namespace


@pytest.fixture(scope="module")
def busybox(
    testbed: dict[str, str], used_namespaces: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The busybox image, imported for this module and removed after it, once the pods are gone."""
    built = subprocess.run(
        ["bash", str(HARNESS / "images.sh"), "build", "busybox"], capture_output=True, text=True, check=True
    ).stdout.split()
    image, tar = built[-2], Path(built[-1])
    subprocess.run(["bash", str(HARNESS / "node.sh"), "import-image", str(tar)], check=True)
    yield image

    def pods_left() -> list[str]:
        pods = json.loads(kubectl("get", "pods", "-A", "-o", "json").stdout)["items"]
        return [p["metadata"]["name"] for p in pods if p["metadata"]["namespace"] in used_namespaces]

    wait_until(lambda: not pods_left(), 180, "waiting for the test pods to be gone", 1)
    ctr = ["ctr", "-a", testbed["K3SVIRT_CONTAINERD_ADDRESS"], "-n", "k8s.io"]
    # kubelet's CRI also names the image by its ID (the config digest): remove both names.
    refs = [image, config_digest(tar)]
    subprocess.run([*ctr, "images", "rm", *refs], check=True, capture_output=True)
    left = subprocess.run([*ctr, "images", "ls", "-q"], capture_output=True, text=True, check=True).stdout.split()
    assert not set(refs) & set(left), left


def config_digest(oci_tar: Path) -> str:
    with tarfile.open(oci_tar) as tar:

        def blob(digest: str) -> dict:
            return json.load(tar.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}"))

        index = json.load(tar.extractfile("index.json"))
        return blob(index["manifests"][0]["digest"])["config"]["digest"]


def busybox_pod(name: str, image: str, script: str, restart: str = "Never", **spec: object) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "main", "image": image, "imagePullPolicy": "Never", "command": ["sh", "-c", script]}
            ],
            **spec,
        },
    }


def run_to_end(ns: str, name: str, image: str, script: str) -> tuple[str, str]:
    """Runs SCRIPT in a one-shot pod; returns its final phase and its log."""
    apply(ns, busybox_pod(name, image, script))
    phase = wait_until(
        lambda: pod(ns, name)["status"].get("phase") in ("Succeeded", "Failed") and pod(ns, name)["status"]["phase"],
        120,
        f"waiting for pod {name} to finish",
        0.5,
    )
    return phase, kubectl("-n", ns, "logs", name).stdout


def test_node_is_ready_with_its_own_ip(testbed: dict[str, str], kubeconfig: str) -> None:
    node = json.loads(kubectl("get", "node", testbed["K3SVIRT_NODE_NAME"], "-o", "json").stdout)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == testbed["K3SVIRT_TESTBED_NODE_IP"]
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.36.3" and info["containerRuntimeVersion"].startswith("containerd://")


def test_nothing_in_the_cluster_is_stuck(kubeconfig: str) -> None:
    pods = json.loads(kubectl("get", "pods", "-A", "-o", "json").stdout)["items"]
    system = [p for p in pods if p["metadata"]["namespace"] == "kube-system"]
    assert system, "CoreDNS should run in kube-system"
    for p in system:
        assert p["status"]["phase"] == "Running", p["metadata"]["name"]


def test_pause_pod_runs_and_the_node_proxy_reports_it(testbed: dict[str, str], ns: str) -> None:
    apply(
        ns,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "sleeper"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "pause", "image": PAUSE, "imagePullPolicy": "Never"}],
            },
        },
    )
    wait_until(
        lambda: pod(ns, "sleeper")["status"].get("phase") == "Running", 120, "waiting for the pause pod to run", 0.5
    )
    ip = pod(ns, "sleeper")["status"]["podIP"]
    assert ip.startswith("10.42.0."), ip
    # The API server reaches kubelet's own API (its client certificate, kubelet's webhook authz).
    path = f"/api/v1/nodes/{testbed['K3SVIRT_NODE_NAME']}/proxy/stats/summary"

    def summary_lists_pod() -> bool:
        summary = json.loads(kubectl("get", "--raw", path).stdout)
        return any(
            p["podRef"] == {"name": "sleeper", "namespace": ns, "uid": p["podRef"]["uid"]}
            for p in summary.get("pods", [])
        )

    wait_until(summary_lists_pod, 60, "waiting for kubelet's stats summary to list the pod", 2)


def test_logs_and_exec_reach_the_container(ns: str, busybox: str) -> None:
    apply(ns, busybox_pod("talker", busybox, "echo k3svirt-log-marker; exec sleep 3600", restart="Always"))
    wait_until(lambda: pod(ns, "talker")["status"].get("phase") == "Running", 120, "waiting for the pod to run", 0.5)
    wait_until(
        lambda: "k3svirt-log-marker" in kubectl("-n", ns, "logs", "talker").stdout, 120, "waiting for its log line", 0.5
    )
    out = kubectl("-n", ns, "exec", "talker", "--", "sh", "-c", "echo $((6 * 7)) $(hostname)").stdout
    assert out.split() == ["42", "talker"]


def web_app(image: str) -> list[dict]:
    """A Deployment of 2 busybox httpd pods that answer with their own name, and its Services."""
    script = 'mkdir /www && echo "hello from $HOSTNAME" > /www/index.html && exec httpd -f -p 8080 -h /www'
    container = busybox_pod("web", image, script)["spec"]["containers"][0] | {
        "ports": [{"containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [container]},
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    nodeport = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web-np"},
        "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    return [deployment, service, nodeport]


def test_deployment_serves_through_clusterip_and_nodeport(testbed: dict[str, str], ns: str, busybox: str):
    for obj in web_app(busybox):
        apply(ns, obj)
    kubectl("-n", ns, "rollout", "status", "deploy/web", "--timeout=120s")
    pods = json.loads(kubectl("-n", ns, "get", "pods", "-l", "app=web", "-o", "json").stdout)["items"]
    names = {p["metadata"]["name"] for p in pods if p["status"]["phase"] == "Running"}
    assert len(names) == 2

    cluster_ip = kubectl("-n", ns, "get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}").stdout
    node_port = kubectl("-n", ns, "get", "svc", "web-np", "-o", "jsonpath={.spec.ports[0].nodePort}").stdout
    assert cluster_ip.startswith("10.43.") and node_port
    for url in (
        f"http://{cluster_ip}/",
        f"http://127.0.0.1:{node_port}/",
        f"http://{testbed['K3SVIRT_TESTBED_NODE_IP']}:{node_port}/",
    ):
        body = wait_until(lambda u=url: try_http_get(u), 60, f"waiting for {url} to answer", 0.5)
        assert body.strip() in {f"hello from {n}" for n in names}, (url, body)
    # The Service spreads requests over both replicas (once kube-proxy has both endpoints).
    seen: set[str] = set()

    def both_replicas_answered() -> bool:
        seen.update(http_get(f"http://{cluster_ip}/").strip() for _ in range(10))
        return seen == {f"hello from {n}" for n in names}

    wait_until(both_replicas_answered, 30, "waiting for both replicas to answer through the Service", 0.5)


def test_cluster_dns_resolves_services_and_nothing_else(ns: str, busybox: str) -> None:
    for obj in web_app(busybox)[:2]:
        apply(ns, obj)
    kubectl("-n", ns, "rollout", "status", "deploy/web", "--timeout=120s")
    phase, log = run_to_end(
        ns,
        "asker",
        busybox,
        "\n".join(
            [
                "nslookup kubernetes.default.svc.cluster.local",
                # pod -> Service -> pod, by name (busybox's static wget crashes without NSS: nslookup and nc)
                f"ip=$(nslookup web.{ns}.svc.cluster.local | sed -n 's/^Address: //p' | tail -n1)",
                'echo "web is $ip"',
                'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 5 "$ip" 80',
                "if nslookup example.org; then echo UPSTREAM-ANSWERED; fi",  # no upstream: must fail
            ]
        ),
    )
    assert phase == "Succeeded", log
    assert "Address: 10.43.0.1" in log and "web is 10.43." in log and "hello from web-" in log, log
    assert "UPSTREAM-ANSWERED" not in log, log


def test_pod_dns_config_points_at_cluster_dns_only(ns: str, busybox: str) -> None:
    phase, log = run_to_end(ns, "resolv", busybox, "cat /etc/resolv.conf")
    assert phase == "Succeeded", log
    servers = [line.split()[1] for line in log.splitlines() if line.startswith("nameserver")]
    assert servers == ["10.43.0.10"], log
    assert f"search {ns}.svc.cluster.local svc.cluster.local cluster.local" in log, log


@pytest.mark.skipif(os.geteuid() != 0, reason="reads the node's iptables rules")
def test_pods_cannot_be_forwarded_off_this_machine(testbed: dict[str, str]) -> None:
    def rules(chain: str) -> list[str]:
        cmd = ["iptables", "-w", "-t", "mangle", "-S", chain]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()

    # mangle's FORWARD runs before every filter rule (kube-proxy's, libvirt's accepts included).
    assert rules("FORWARD")[1] == "-A FORWARD -j K3SVIRT-NODE-FWD"
    assert rules("K3SVIRT-NODE-FWD")[1:] == [
        "-A K3SVIRT-NODE-FWD -i cni0 -o cni0 -j RETURN",
        # Services in front of VMs (docs/services.md): only connections kube-proxy redirected to a VM
        # endpoint, and their replies, pass between the pods and the VM network on this machine.
        "-A K3SVIRT-NODE-FWD -i cni0 -o virbr0 -m conntrack --ctstate DNAT -j RETURN",
        "-A K3SVIRT-NODE-FWD -i virbr0 -o cni0 -m conntrack --ctstate DNAT -j RETURN",
        "-A K3SVIRT-NODE-FWD -i cni0 -j DROP",
        "-A K3SVIRT-NODE-FWD -o cni0 -j DROP",
    ]
