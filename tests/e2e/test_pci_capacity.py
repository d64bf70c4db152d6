"""Passthrough devices in the scheduler's books, on the test bed's real node (docs/pci-passthrough.md).

The operator runs against a fixture sysfs (operator/tests/fixtures/sysfs) whose two 82599 ports are
already on vfio-pci: their PCIPassthroughs become Bound without a real device, and the real
kube-scheduler and kubelet then count `k3svirt.io/pci-8086-10fb` like CPU. No domain with those
devices is started (there is no such device on this machine): the VM here waits for its reservation.
The fixture's X710 PF has two SR-IOV VFs already (no kernel creates more here: writing sriov_numvfs
changes a plain file), which is what a PCIVirtualFunctionPolicy for two finds and offers.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import pytest
from k3svirt_common import reservation as rsv

from .conftest import Operator, free_port, get_json, kubectl, tiny_vm, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "operator" / "tests"))
from fixtures.sysfs import pci_fakesys  # noqa: E402

RESOURCE = "k3svirt.io/pci-8086-10fb"
PORTS = ("0000:03:00.0", "0000:03:00.1")


@pytest.fixture()
def _node_runs():
    if os.environ.get("K3SVIRT_TESTBED_NODE") == "0":
        pytest.fail("needs the test bed's node (kubelet): unset K3SVIRT_TESTBED_NODE=0", pytrace=False)


@pytest.fixture(scope="module")
def pci_operator(testbed, tmp_path_factory):
    root = tmp_path_factory.mktemp("fakehost")
    host = pci_fakesys.build_n305(root)
    for address in PORTS:  # what a node admin's earlier bind left: both ports (group 2) on vfio-pci
        host.detach(address)
        host.attach(address, "vfio-pci")
    (root / "pci.ids").write_text(pci_fakesys.PCI_IDS_SNIPPET)
    env = {
        **os.environ,
        **testbed,
        "K3SVIRT_NODE_NAME": testbed["K3SVIRT_NODE_NAME"],
        "K3SVIRT_SYSFS_ROOT": str(host.sys),
        "K3SVIRT_PROC_ROOT": str(host.proc),
        "K3SVIRT_PCI_IDS": str(root / "pci.ids"),
        "K3SVIRT_PCI_INVENTORY_SECONDS": "5",
        "K3SVIRT_METRICS_PORT": str(free_port()),
        "PYTHONUNBUFFERED": "1",
    }
    if os.environ.get("K3SVIRT_TESTBED_NODE") == "0":
        env["K3SVIRT_RESERVATIONS"] = "off"  # no kubelet: the SR-IOV test runs, the capacity test fails
    op = Operator(env, tmp_path_factory.mktemp("pci-operator") / "operator.log")
    op.start()
    yield op
    op.stop()
    sys.stdout.write(f"\n--- operator log tail ---\n{op.tail()}\n")


def _node(kubeconfig: str) -> dict:
    return get_json(kubeconfig, "node", os.environ["K3SVIRT_NODE_NAME"])


def _units(kubeconfig: str) -> tuple[str | None, str | None]:
    status = _node(kubeconfig)["status"]
    return status.get("capacity", {}).get(RESOURCE), status.get("allocatable", {}).get(RESOURCE)


def _pcip(kubeconfig: str, name: str, address: str, ns: str) -> None:
    body = {
        "apiVersion": "k3svirt.io/v1alpha1",
        "kind": "PCIPassthrough",
        "metadata": {"name": name},
        "spec": {"nodeName": os.environ["K3SVIRT_NODE_NAME"], "address": address, "namespaces": [ns]},
    }
    kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(body))


def _pod(kubeconfig: str, ns: str, name: str, units: int) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
            "nodeSelector": {"kubernetes.io/hostname": os.environ["K3SVIRT_NODE_NAME"]},
            "containers": [
                {
                    "name": "c",
                    "image": rsv.PAUSE_IMAGE,
                    "imagePullPolicy": "Never",
                    "resources": {
                        "requests": {"cpu": "10m", "memory": "8Mi", RESOURCE: str(units)},
                        "limits": {RESOURCE: str(units)},
                    },
                }
            ],
        },
    }
    kubectl(kubeconfig, "apply", "-n", ns, "-f", "-", stdin=json.dumps(pod))


def _unschedulable(kubeconfig: str, ns: str, pod: str) -> str | None:
    got = kubectl(kubeconfig, "get", "pod", pod, "-n", ns, "-o", "json", check=False)
    if got.returncode != 0:  # not created yet (the operator makes a VM's reservation on its first pass)
        return None
    found = json.loads(got.stdout)
    cond = next((c for c in found["status"].get("conditions") or [] if c["type"] == "PodScheduled"), {})
    return cond.get("message") if cond.get("reason") == "Unschedulable" else None


def test_bound_devices_are_counted_by_the_scheduler_and_kubelet(
    _node_runs, kubeconfig, namespace, pci_operator, tiny_guest
):
    ns, tag = namespace, uuid.uuid4().hex[:6]
    names = [f"t-cap-{tag}-{i}" for i in range(len(PORTS))]
    try:
        for name, address in zip(names, PORTS, strict=True):
            _pcip(kubeconfig, name, address, ns)
        wait_until(
            lambda: all((get_json(kubeconfig, "pcip", n).get("status") or {}).get("phase") == "Bound" for n in names),
            90,
            f"PCIPassthroughs not Bound; {pci_operator.tail()}",
        )
        # The node offers both ports, in capacity and allocatable.
        wait_until(lambda: _units(kubeconfig) == ("2", "2"), 60, f"node shows {_units(kubeconfig)}")

        # Three units asked where two exist: the scheduler says so; one unit fits and the kubelet runs it.
        _pod(kubeconfig, ns, "wants-three", 3)
        msg = wait_until(lambda: _unschedulable(kubeconfig, ns, "wants-three"), 60, "not reported Unschedulable")
        assert f"Insufficient {RESOURCE}" in msg, msg
        _pod(kubeconfig, ns, "wants-one", 1)
        wait_until(
            lambda: get_json(kubeconfig, "pod", "wants-one", "-n", ns)["status"].get("phase") == "Running",
            90,
            "a pod asking for one free unit did not run",
        )

        # One unit is left: a VM needing both ports waits for its reservation with the scheduler's reason.
        vm = tiny_vm("router", tiny_guest, hostDevices=[{"name": f"p{i}", "pciPassthrough": n}
                                                        for i, n in enumerate(names)])  # fmt: skip
        kubectl(kubeconfig, "apply", "-n", ns, "-f", "-", stdin=json.dumps(vm))
        pod = rsv.pod_name("router")
        wait_until(
            lambda: _unschedulable(kubeconfig, ns, pod), 90, f"no unschedulable reservation; {pci_operator.tail()}"
        )
        requests = get_json(kubeconfig, "pod", pod, "-n", ns)["spec"]["containers"][0]["resources"]["requests"]
        assert requests[RESOURCE] == "2", requests

        def reserved_condition():
            conds = (get_json(kubeconfig, "vm", "router", "-n", ns).get("status") or {}).get("conditions") or []
            c = next((c for c in conds if c["type"] == "ResourcesReserved" and c["status"] == "False"), None)
            return c if c and c.get("reason") == "Unschedulable" else None

        cond = wait_until(reserved_condition, 60, "the VM does not say it is unschedulable")
        assert f"Insufficient {RESOURCE}" in cond["message"], cond
        kubectl(kubeconfig, "delete", "-n", ns, "vm/router", "--wait=true", "--timeout=120s")

        # A device going away is taken out of the books at once.
        kubectl(kubeconfig, "delete", "pcip", names[1], "--wait=true", "--timeout=60s")
        wait_until(lambda: _units(kubeconfig) == ("1", "1"), 60, f"node shows {_units(kubeconfig)}")

        # Two VMs asking for any device of the kind, at once, for the last one: exactly one gets it.
        for vm_name in ("k1", "k2"):
            vm = tiny_vm(vm_name, tiny_guest, hostDevices=[{"name": "nic", "resource": RESOURCE}])
            kubectl(kubeconfig, "apply", "-n", ns, "-f", "-", stdin=json.dumps(vm))

        def verdicts():
            holder = (get_json(kubeconfig, "pcip", names[0]).get("status") or {}).get("assignedTo") or {}
            refused = {}
            for vm_name in ("k1", "k2"):
                conds = (get_json(kubeconfig, "vm", vm_name, "-n", ns).get("status") or {}).get("conditions") or []
                c = next((c for c in conds if c["type"] == "HostDevicesReady" and c["status"] == "False"), None)
                if c:
                    refused[vm_name] = c
            return (holder.get("name"), refused) if holder.get("name") and refused else None

        winner, refused = wait_until(verdicts, 90, f"no verdict on the race; {pci_operator.tail()}")
        (loser,) = refused
        assert {winner, loser} == {"k1", "k2"}, (winner, refused)
        assert f"no free {RESOURCE} on node" in refused[loser]["message"], refused
        assert f"{names[0]} ({ns}/{winner})" in refused[loser]["message"], refused
        kubectl(kubeconfig, "delete", "-n", ns, "vm/k1", "vm/k2", "--wait=true", "--timeout=120s")
        wait_until(
            lambda: not (get_json(kubeconfig, "pcip", names[0]).get("status") or {}).get("assignedTo"),
            60,
            "the device was not released when its VM was deleted",
        )
    finally:
        kubectl(kubeconfig, "delete", "-n", ns, "pod", "wants-three", "wants-one", "--wait=false", check=False)
        for n in names:
            kubectl(kubeconfig, "delete", "pcip", n, "--wait=true", "--timeout=60s", check=False)
        wait_until(lambda: _units(kubeconfig)[0] in (None, "0"), 60, f"node still shows {_units(kubeconfig)}")


def test_a_vf_policy_offers_each_vf_as_its_own_passthrough(kubeconfig, pci_operator):
    policy = f"t-vf-{uuid.uuid4().hex[:6]}"
    body = {
        "apiVersion": "k3svirt.io/v1alpha1",
        "kind": "PCIVirtualFunctionPolicy",
        "metadata": {"name": policy},
        "spec": {"nodeName": os.environ["K3SVIRT_NODE_NAME"], "physicalFunction": "0000:05:00.0", "numVfs": 2,
                 "namespaces": ["lab"]},
    }  # fmt: skip
    try:
        kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(body))

        def ready():
            st = get_json(kubeconfig, "pcivf", policy).get("status") or {}
            return st if st.get("phase") == "Ready" else None

        st = wait_until(ready, 60, f"policy not Ready; {pci_operator.tail()}")
        assert st["totalVfs"] == 64 and st["numVfs"] == 2, st
        assert [v["address"] for v in st["virtualFunctions"]] == ["0000:05:02.0", "0000:05:02.1"], st
        uid = get_json(kubeconfig, "pcivf", policy)["metadata"]["uid"]
        for i, address in enumerate(("0000:05:02.0", "0000:05:02.1")):
            child = get_json(kubeconfig, "pcip", f"{policy}-vf{i}")
            assert child["spec"] == {**child["spec"], "address": address, "namespaces": ["lab"]}, child
            assert child["metadata"]["ownerReferences"][0]["uid"] == uid, child

        # More VFs than the PF has: its driver would re-create them; here none appear, and it says so.
        body["spec"]["numVfs"] = 3
        kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(body))

        def failed():
            st = get_json(kubeconfig, "pcivf", policy).get("status") or {}
            cond = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), {})
            return cond if st.get("phase") == "Failed" else None

        cond = wait_until(failed, 120, f"no failure reported; {pci_operator.tail()}")
        assert cond["reason"] == "VFsDidNotAppear" and "0000:05:00.0" in cond["message"], cond
        # A hostile spec is refused by the API server with the field named.
        bad = {**body, "spec": {**body["spec"], "physicalFunction": "../../0000:05:00.0"}}
        proc = kubectl(kubeconfig, "apply", "--dry-run=server", "-f", "-", stdin=json.dumps(bad), check=False)
        assert proc.returncode != 0 and "spec.physicalFunction" in proc.stderr, proc.stderr
    finally:
        kubectl(kubeconfig, "delete", "pcivf", policy, "--wait=true", "--timeout=90s", check=False)
    assert kubectl(kubeconfig, "get", "pcivf", policy, check=False).returncode != 0, "policy not deleted"
    assert kubectl(kubeconfig, "get", "pcip", f"{policy}-vf0", check=False).returncode != 0, "VF passthrough left"
