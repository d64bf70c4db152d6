"""Exclusive CPUs (spec.cpu.dedicatedCores) with the kubelet's static CPU manager, on a node instance
of this machine whose kubelet runs it as the product sets it (node.sh K3SVIRT_NODE_CPU_MANAGER=static:
reservedSystemCPUs = the housekeeping CPUs at the top of the last L2 cluster, cputopo.housekeeping;
strict-cpu-reservation as on the image):
the reservation pod is Guaranteed with whole CPUs, the kubelet gives it the lowest CPU outside the
housekeeping set (what cputopo.choose picks too), the VM's vCPUs are pinned to exactly that and its
emulator threads to the housekeeping CPU; a second VM that wants dedicated cores finds none left and
does not start. And the dedicated cores are exclusive against the other VMs too (cpupool.py): an
ordinary VM running before is moved off them live, one started after runs on the shared CPUs from
its definition, and both get every CPU back when the dedicated VM stops."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from k3svirt_common import names
from k3svirt_common import reservation as rsv
from k3svirt_operator import cpupin, cpupool, cputopo

from tests.e2e.conftest import Operator, get_json, kubectl, operator_env, tiny_vm, virsh
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
    kubelet_root = Path(testbed["KUBECONFIG"]).parent / f"node-{static_node.instance}/kubelet"  # $K3SVIRT_STATE
    op = instance_operator(testbed, static_node.name, tmp_path_factory.mktemp("op") / "operator.log",
                           K3SVIRT_RESERVATIONS="on", K3SVIRT_HOUSEKEEPING_CPUS=HOUSEKEEPING,
                           K3SVIRT_KUBELET_ROOT_DIR=str(kubelet_root))  # fmt: skip
    yield op
    op.stop()


@pytest.fixture(scope="module")
def operator(testbed, static_node, tmp_path_factory) -> Iterator[Operator]:
    """The test bed's operator (its node runs the ordinary VMs), reading the static node's kubelet
    checkpoint: on this machine both nodes are the same host, so its Guaranteed pods' CPUs are the
    ones the ordinary VMs must keep off; a short pool period for the test of that."""
    kubelet_root = Path(testbed["KUBECONFIG"]).parent / f"node-{static_node.instance}/kubelet"
    env = operator_env(testbed, K3SVIRT_KUBELET_ROOT_DIR=str(kubelet_root), K3SVIRT_CPU_POOL_SECONDS="2")
    op = Operator(env, tmp_path_factory.mktemp("bed-op") / "operator.log")
    op.start()
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


def _affinity(domain: str) -> tuple[set[int], set[int], set[int]]:
    """Where the domain really runs: its vCPU threads' affinity (virsh vcpuinfo, from the kernel),
    its emulator pinning as libvirt holds it, and the QEMU main thread's Cpus_allowed_list."""
    vcpus: set[int] = set()
    for line in virsh("vcpuinfo", domain).splitlines():
        if line.startswith("CPU Affinity:"):
            vcpus |= {i for i, c in enumerate(line.split(":", 1)[1].strip()) if c == "y"}
    emulator = cpupool.parse_list(virsh("emulatorpin", domain).split()[-1]) or set()
    pid = Path(f"/run/libvirt/qemu/{domain}.pid").read_text().strip()
    allowed = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Cpus_allowed_list"))
    return vcpus, emulator, cpupool.parse_list(allowed.split(":", 1)[1]) or set()


def _others_pinned(mine: set[str]) -> set[int]:
    """CPUs that running domains other than this test's pin their vCPUs to (other test beds share libvirtd)."""
    out: set[int] = set()
    for dom in virsh("list", "--name").split():
        if dom not in mine:
            out |= cpupool.pinned_cpus(virsh("dumpxml", "--inactive", dom, check=False) or "<domain/>")
    return out


def _ready(kubeconfig: str, ns: str, name: str) -> bool:
    return _conds(kubeconfig, ns, name).get("Ready", {}).get("status") == "True"


def test_ordinary_vms_run_off_the_dedicated_cores_and_get_them_back(kubeconfig, namespace, tiny_guest, operator,
                                                                    static_node, static_operator):  # fmt: skip
    """The test bed's operator runs the ordinary VMs, the static node's the dedicated one, on the same
    host: the pool counts every domain pinned on it, whoever runs it."""
    online = cpupool.parse_list(Path("/sys/devices/system/cpu/online").read_text()) or set()
    doms = {n: names.domain_name(namespace, n) for n in ("before", "pinned", "after")}
    baseline = cpupool.shared_pool(online, _others_pinned(set(doms.values()))) or online
    try:
        kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(tiny_vm("before", tiny_guest)))
        wait_until(
            lambda: _ready(kubeconfig, namespace, "before"), 240, f"VM before not Ready; log:\n{operator.tail()}"
        )
        # (Waited for, not read once: the previous test's reservation pod may still hold its CPU in the
        # kubelet's checkpoint for a few seconds; its start and the periodic pass re-pin it.)
        wait_until(lambda: _affinity(doms["before"]) == (baseline, baseline, baseline), 30,
                   f"VM before on {_affinity(doms['before'])}, not {baseline}; log:\n{operator.tail()}")  # fmt: skip

        body = tiny_vm("pinned", tiny_guest, nodeName=static_node.name, cpu={"cores": 1, "dedicatedCores": 1})
        kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(body))
        wait_until(lambda: _ready(kubeconfig, namespace, "pinned"), 240,
                   f"the VM with dedicated cores is not Ready; log:\n{static_operator.tail()}")  # fmt: skip
        assignment = cpupin.read_assignment(get_json(kubeconfig, "pod", rsv.pod_name("pinned"), "-n", namespace))
        assert assignment is not None
        exclusive = set(assignment.cpus)
        # The kubelet's own checkpoint names them, as cpupool reads it (the format is the kubelet's).
        state = (Path(kubeconfig).parent / f"node-{static_node.instance}/kubelet/cpu_manager_state").read_text()
        assert cpupool.kubelet_exclusive(state) == exclusive, state
        pool = baseline - exclusive
        assert pool, f"no CPU left beside {exclusive}"
        # The ordinary VM that ran before is moved off the dedicated CPU live (no restart).
        wait_until(lambda: _affinity(doms["before"]) == (pool, pool, pool), 60,
                   f"VM before runs on {_affinity(doms['before'])}, not {pool}; log:\n{operator.tail()}")  # fmt: skip
        assert _conds(kubeconfig, namespace, "before")["RestartRequired"]["status"] == "False"

        # One started now runs on the shared CPUs from its definition.
        kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(tiny_vm("after", tiny_guest)))
        wait_until(lambda: _ready(kubeconfig, namespace, "after"), 240, f"VM after not Ready; log:\n{operator.tail()}")
        assert cpupool.vcpu_cpuset(virsh("dumpxml", "--inactive", doms["after"])) == pool
        wait_until(lambda: _affinity(doms["after"]) == (pool, pool, pool), 30,
                   f"VM after runs on {_affinity(doms['after'])}, not {pool}; log:\n{operator.tail()}")  # fmt: skip

        # The dedicated VM stops: every CPU is shared again, live and in the definitions.
        kubectl(kubeconfig, "delete", "-n", namespace, "vm/pinned", "--timeout=120s")
        want = None if baseline == online else baseline
        for vm in ("before", "after"):
            wait_until(lambda vm=vm: _affinity(doms[vm]) == (baseline, baseline, baseline), 60,
                       f"VM {vm} not back on every CPU: {_affinity(doms[vm])}; log:\n{operator.tail()}")  # fmt: skip
            wait_until(lambda vm=vm: cpupool.vcpu_cpuset(virsh("dumpxml", "--inactive", doms[vm])) == want, 60,
                       f"VM {vm}'s definition keeps its old CPU pool")  # fmt: skip
    finally:  # deleted while both operators run (the namespace's deletion would outlive them)
        kubectl(kubeconfig, "delete", "-n", namespace, "vm/before", "vm/pinned", "vm/after", "--ignore-not-found",
                "--timeout=120s", check=False)  # fmt: skip


def test_a_guaranteed_pods_exclusive_cpu_is_kept_off_too(kubeconfig, namespace, tiny_guest, operator, static_node):
    """A Guaranteed pod with a whole CPU (no VM of ours): the kubelet's checkpoint is the only source,
    read on the pool's periodic pass. An ordinary VM is moved off the pod's CPU and back when it goes."""
    online = cpupool.parse_list(Path("/sys/devices/system/cpu/online").read_text()) or set()
    domain = names.domain_name(namespace, "guest")
    baseline = cpupool.shared_pool(online, _others_pinned({domain})) or online
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "exclusive"},
        "spec": {
            "nodeName": static_node.name,
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "app",
                    "image": rsv.PAUSE_IMAGE,
                    "imagePullPolicy": "Never",
                    "resources": {"requests": {"cpu": "1", "memory": "16Mi"}, "limits": {"cpu": "1", "memory": "16Mi"}},
                }
            ],  # fmt: skip
        },
    }
    try:
        kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(tiny_vm("guest", tiny_guest)))
        wait_until(lambda: _ready(kubeconfig, namespace, "guest"), 240, f"VM not Ready; log:\n{operator.tail()}")
        kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(pod))
        kubectl(kubeconfig, "wait", "-n", namespace, "--for=condition=Ready", "pod/exclusive", "--timeout=120s")
        state = Path(kubeconfig).parent / f"node-{static_node.instance}/kubelet/cpu_manager_state"
        held = wait_until(lambda: cpupool.kubelet_exclusive(state.read_text()), 30, "the kubelet assigned no CPU")
        assert len(held) == 1, state.read_text()
        pool = baseline - held
        wait_until(lambda: _affinity(domain) == (pool, pool, pool), 60,
                   f"VM runs on {_affinity(domain)}, not {pool}; log:\n{operator.tail()}")  # fmt: skip
        kubectl(kubeconfig, "delete", "-n", namespace, "pod/exclusive", "--timeout=60s")
        wait_until(lambda: _affinity(domain) == (baseline, baseline, baseline), 90,
                   f"VM not back on every CPU: {_affinity(domain)}; checkpoint: {state.read_text()}")  # fmt: skip
    finally:
        kubectl(kubeconfig, "delete", "-n", namespace, "vm/guest", "pod/exclusive", "--ignore-not-found",
                "--timeout=120s", check=False)  # fmt: skip
