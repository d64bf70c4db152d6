"""A second kubelet node on this machine (tests/harness/node.sh node instance: own netns, name, pod
range, containerd, cgroupRoot) with its own operator: a VM selected for it runs only there, a pod
pinned to it runs there, and the node leaving the cluster releases what it held (the finalizer of its
VM being deleted, its NodePCIInventory). Needs root (network namespaces): CI runs as root."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from k3svirt_common import names
from k3svirt_common import reservation as rsv

from tests.e2e.conftest import Operator, get_json, kubectl, tiny_vm, virsh
from tests.e2e.node_instance import NodeInstance, instance_operator, needs_instances, start_instance
from tests.polling import wait_until

pytestmark = needs_instances


@pytest.fixture(scope="module")
def second_node(testbed: dict[str, str]) -> Iterator[NodeInstance]:
    node = start_instance()
    yield node
    node.node_sh("stop")  # idempotent: the removal test stops it already


@pytest.fixture(scope="module")
def operators(testbed: dict[str, str], second_node: NodeInstance,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Operator]]:  # fmt: skip
    logs = tmp_path_factory.mktemp("operators")
    # The test bed's node's operator (reservations off when the test bed has no kubelet) and node 2's.
    first_extra = {"K3SVIRT_RESERVATIONS": "off"} if os.environ.get("K3SVIRT_TESTBED_NODE") == "0" else {}
    ops = {"first": instance_operator(testbed, testbed["K3SVIRT_NODE_NAME"], logs / "first.log", **first_extra)}
    ops["second"] = instance_operator(testbed, second_node.name, logs / "second.log", K3SVIRT_RESERVATIONS="on")
    yield ops
    for op in ops.values():
        op.stop()


@pytest.fixture(scope="module")
def module_namespace(k8s_api_client) -> Iterator[str]:
    from kubernetes import client

    core = client.CoreV1Api(k8s_api_client)
    name = f"t-node2-{os.getpid()}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def _ready(kubeconfig: str, ns: str, name: str) -> dict | None:
    vm = get_json(kubeconfig, "vm", name, "-n", ns)
    conds = {c["type"]: c for c in (vm.get("status") or {}).get("conditions") or []}
    return vm if conds.get("Ready", {}).get("status") == "True" else None


def _gone(kubeconfig: str, *args: str) -> bool:
    proc = kubectl(kubeconfig, "get", *args, check=False)
    return proc.returncode != 0 and "NotFound" in proc.stderr


def test_a_vm_selected_for_node_2_and_a_pinned_pod_run_there(kubeconfig, module_namespace, tiny_guest, second_node,
                                                             operators):  # fmt: skip
    namespace, node2 = module_namespace, second_node.name
    body = tiny_vm("sel", tiny_guest, nodeSelector={"kubernetes.io/hostname": node2})
    del body["spec"]["nodeName"]
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(body))
    vm = wait_until(lambda: _ready(kubeconfig, namespace, "sel"), 240,
                    f"VM sel not Ready on {node2}; log:\n{operators['second'].tail()}")  # fmt: skip
    # Claimed and run by node 2's operator alone: its claim, its finalizer, its reservation.
    assert vm["status"]["node"] == node2
    assert vm["metadata"]["finalizers"] == [names.finalizer_for(node2)]
    pod = get_json(kubeconfig, "pod", rsv.pod_name("sel"), "-n", namespace)
    assert pod["spec"]["nodeName"] == node2 and pod["metadata"]["labels"][rsv.LABEL_NODE] == node2
    assert virsh("domstate", names.domain_name(namespace, "sel")) == "running"

    # A pod pinned to node 2 runs there, in node 2's pod range, and answers from its network namespace.
    pinned = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "echo"},
              "spec": {"nodeSelector": {"kubernetes.io/hostname": node2},
                       "containers": [{"name": "echo", "image": "localhost/k3svirt/http-echo:1.0",
                                       "imagePullPolicy": "Never"}]}}  # fmt: skip
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(pinned))
    kubectl(kubeconfig, "wait", "-n", namespace, "--for=condition=Ready", "pod/echo", "--timeout=120s")
    echo = get_json(kubeconfig, "pod", "echo", "-n", namespace)
    assert echo["spec"]["nodeName"] == node2
    assert ipaddress.ip_address(echo["status"]["podIP"]) in second_node.pod_range
    with urllib.request.urlopen(f"http://{echo['status']['podIP']}:8080/", timeout=10) as answer:
        assert "http-echo host=echo" in answer.read().decode()

    # Node 2 publishes its inventory, owned by its Node (so it goes when the node goes).
    node = get_json(kubeconfig, "node", node2)
    assert node["spec"]["podCIDR"] == str(second_node.pod_range)
    inventory = wait_until(lambda: get_json(kubeconfig, "nodepciinventories", node2), 60, "no NodePCIInventory")
    assert inventory["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]


def test_a_node_that_leaves_releases_its_vm_and_inventory(kubeconfig, module_namespace, second_node, operators,
                                                          storage_root):  # fmt: skip
    ns, node2 = module_namespace, second_node.name
    # The machine goes: its operator, its guests and disks with it; the VM is deleted meanwhile.
    operators["second"].stop()
    domain = names.domain_name(ns, "sel")
    virsh("destroy", domain, check=False)
    virsh("undefine", domain, "--nvram", check=False)
    shutil.rmtree(storage_root / "vms" / ns / "sel", ignore_errors=True)
    kubectl(kubeconfig, "delete", "vm", "sel", "-n", ns, "--wait=false")
    assert get_json(kubeconfig, "vm", "sel", "-n", ns)["metadata"]["finalizers"] == [names.finalizer_for(node2)]
    stopped = second_node.node_sh("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert _gone(kubeconfig, "node", node2)
    # The garbage collector removes the inventory (owned by the Node); the first node's operator then
    # sees node 2 vanished and releases the VM's finalizer; the pod GC removes node 2's pods.
    wait_until(
        lambda: _gone(kubeconfig, "nodepciinventories", node2), 90, "the NodePCIInventory of the removed node stays"
    )
    wait_until(lambda: _gone(kubeconfig, "vm", "sel", "-n", ns), 90,
               f"the VM of the removed node keeps its finalizer; log:\n{operators['first'].tail()}")  # fmt: skip
    bound = ("pods", "-n", ns, "--field-selector", f"spec.nodeName={node2}")
    wait_until(lambda: not get_json(kubeconfig, *bound)["items"], 180, "pods bound to the removed node stay")
    assert not Path(f"/run/netns/k3svirt-n{second_node.instance}").exists()
