"""Exclusive CPUs (spec.cpu.dedicatedCores) with the kubelet's static CPU manager, on a node instance
of this machine whose kubelet runs cpuManagerPolicy static with CPU 0 reserved (housekeeping): the
reservation pod is Guaranteed with whole CPUs, the kubelet gives it the exclusive CPU(s), the VM's
vCPUs are pinned to exactly those and its emulator threads to the housekeeping CPU; a second VM that
wants dedicated cores finds none left and does not start."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
from k3svirt_common import names
from k3svirt_common import reservation as rsv
from k3svirt_operator import cpupin

from tests.e2e.conftest import Operator, get_json, kubectl, tiny_vm, virsh
from tests.e2e.node_instance import NodeInstance, instance_operator, needs_instances, start_instance
from tests.polling import wait_until

pytestmark = [needs_instances, pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs: 1 reserved")]

HOUSEKEEPING = "0"


@pytest.fixture(scope="module")
def static_node(testbed: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeInstance]:
    fragment = tmp_path_factory.mktemp("kubelet") / "static-cpu.yaml"
    fragment.write_text(f'cpuManagerPolicy: static\nreservedSystemCPUs: "{HOUSEKEEPING}"\n')
    node = start_instance(fragment)
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
    assert HOUSEKEEPING not in {str(c) for c in assignment.cpus}
    domain = names.domain_name(namespace, "pinned")
    pins = virsh("vcpupin", domain)
    assert f"0      {assignment.cpus[0]}" in " ".join(pins.split("\n")) or pins.split()[-1] == str(
        assignment.cpus[0]
    ), pins
    assert virsh("emulatorpin", domain).split()[-1] == HOUSEKEEPING
    events = get_json(kubeconfig, "events", "-n", namespace, "--field-selector", "involvedObject.name=pinned")
    assert any(e["reason"] == "DedicatedCores" for e in events["items"]), [e["reason"] for e in events["items"]]

    # No exclusive CPU is left: a second VM that wants one does not start, and says why.
    other = tiny_vm("second", tiny_guest, nodeName=static_node.name, cpu={"cores": 1, "dedicatedCores": 1})
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(other))
    ready = wait_until(lambda: _conds(kubeconfig, namespace, "second").get("Ready"), 120, "no Ready condition")
    wait_until(lambda: _conds(kubeconfig, namespace, "second")["Ready"]["reason"] == "Unschedulable", 120,
               f"the second VM is not Unschedulable: {ready}")  # fmt: skip
    assert virsh("domstate", names.domain_name(namespace, "second"), check=False) != "running"
    kubectl(kubeconfig, "delete", "-n", namespace, "vm/second", "vm/pinned", "--timeout=120s")
