"""Exclusive CPUs (spec.cpu.dedicatedCores) with the kubelet's static CPU manager, on a node instance
of this machine whose kubelet runs it as the product sets it (node.sh K3SVIRT_NODE_CPU_MANAGER=static:
reservedSystemCPUs = the housekeeping CPUs at the top of the last L2 cluster, cputopo.housekeeping;
strict-cpu-reservation as on the image):
the reservation pod is Guaranteed with whole CPUs, the kubelet gives it the lowest CPU outside the
housekeeping set (what cputopo.choose picks too), the VM's vCPUs are pinned to exactly that and its
emulator threads to the housekeeping CPU; a second VM that wants dedicated cores finds none left and
does not start."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from k3svirt_common import names
from k3svirt_common import reservation as rsv
from k3svirt_operator import cpupin, cputopo

from tests.e2e.conftest import Operator, get_json, kubectl, tiny_vm, virsh
from tests.e2e.node_instance import NodeInstance, instance_operator, needs_instances, start_instance
from tests.polling import wait_until

pytestmark = [needs_instances, pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs: 1 reserved")]

TOPOLOGY = cputopo.read()
HOUSEKEEPING = cputopo.fmt(cputopo.housekeeping(TOPOLOGY))  # this machine (2 CPUs, an L2 each): "1"
OPTIONS = "strict-cpu-reservation=true"


@pytest.fixture(scope="module")
def static_node(testbed: dict[str, str]) -> Iterator[NodeInstance]:
    # The image's options too: strict-cpu-reservation keeps every pod off the housekeeping CPU.
    node = start_instance(K3SVIRT_NODE_CPU_MANAGER="static", K3SVIRT_NODE_CPU_MANAGER_OPTIONS=OPTIONS)
    yield node
    node.node_sh("stop")


@pytest.fixture(scope="module")
def static_operator(testbed, static_node, tmp_path_factory) -> Iterator[Operator]:
    op = instance_operator(testbed, static_node.name, tmp_path_factory.mktemp("op") / "operator.log",
                           K3SVIRT_RESERVATIONS="on", K3SVIRT_HOUSEKEEPING_CPUS=HOUSEKEEPING)  # fmt: skip
    yield op
    op.stop()


def _conds(kubeconfig: str, ns: str, name: str) -> dict[str, dict]:
    vm = get_json(kubeconfig, "vm", name, "-n", ns)
    return {c["type"]: c for c in (vm.get("status") or {}).get("conditions") or []}


def test_dedicated_cores_are_the_kubelets_exclusive_cpus(kubeconfig, namespace, tiny_guest, static_node,
                                                          static_operator):  # fmt: skip
    exclusive = 1  # this machine: 2 CPUs, CPU 0 housekeeping
    body = tiny_vm("pinned", tiny_guest, nodeName=static_node.name, cpu={"cores": 1, "dedicatedCores": exclusive})
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(body))
    wait_until(lambda: _conds(kubeconfig, namespace, "pinned").get("Ready", {}).get("status") == "True", 240,
               f"the VM with dedicated cores is not Ready; log:\n{static_operator.tail()}")  # fmt: skip
    pod = get_json(kubeconfig, "pod", rsv.pod_name("pinned"), "-n", namespace)
    res = pod["spec"]["containers"][0]["resources"]
    assert res["requests"]["cpu"] == res["limits"]["cpu"] == str(exclusive)
    assert pod["status"]["qosClass"] == "Guaranteed"
    # What the kubelet's CPU manager gave the container (its cpuset cgroup) is what the vCPUs run on.
    assignment = cpupin.read_assignment(pod)
    assert assignment is not None and len(assignment.cpus) == exclusive
    # node.sh gave the kubelet the housekeeping layout; its pick is the reference choice.
    kubelet_yaml = (Path(kubeconfig).parent / f"node-{static_node.instance}/kubelet.yaml").read_text()  # $K3SVIRT_STATE
    assert f'reservedSystemCPUs: "{HOUSEKEEPING}"' in kubelet_yaml and "cpuManagerPolicy: static" in kubelet_yaml
    assert '  strict-cpu-reservation: "true"' in kubelet_yaml
    pool = {c.id for c in TOPOLOGY} - set(cpupin.parse_cpuset(HOUSEKEEPING))
    assert assignment.cpus == cputopo.choose(TOPOLOGY, pool, exclusive) == [min(pool)]
    domain = names.domain_name(namespace, "pinned")
    pins = virsh("vcpupin", domain)
    assert f"0      {assignment.cpus[0]}" in " ".join(pins.split("\n")) or pins.split()[-1] == str(
        assignment.cpus[0]
    ), pins
    assert virsh("emulatorpin", domain).split()[-1] == HOUSEKEEPING
    events = get_json(kubeconfig, "events", "-n", namespace, "--field-selector", "involvedObject.name=pinned")
    dedicated = [e for e in events["items"] if e["reason"] == "DedicatedCores"]
    assert dedicated, [e["reason"] for e in events["items"]]
    assert (
        "one whole L2 cluster" in dedicated[0]["message"]
        and f"emulator threads to {HOUSEKEEPING}" in dedicated[0]["message"]
    )
    assert not [e for e in events["items"] if e["reason"] == "DedicatedCoresSplitL2"]

    # No exclusive CPU is left: a second VM that wants one does not start, and says why.
    other = tiny_vm("second", tiny_guest, nodeName=static_node.name, cpu={"cores": 1, "dedicatedCores": 1})
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(other))
    ready = wait_until(lambda: _conds(kubeconfig, namespace, "second").get("Ready"), 120, "no Ready condition")
    wait_until(lambda: _conds(kubeconfig, namespace, "second")["Ready"]["reason"] == "Unschedulable", 120,
               f"the second VM is not Unschedulable: {ready}")  # fmt: skip
    assert virsh("domstate", names.domain_name(namespace, "second"), check=False) != "running"
    kubectl(kubeconfig, "delete", "-n", namespace, "vm/second", "vm/pinned", "--timeout=120s")
