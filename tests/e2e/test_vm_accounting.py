"""VMs and pods share the node's books: each running VM's reservation pod is placed by the real
kube-scheduler and admitted by the real kubelet of the test bed (docs/accounting.md).

The test node has 2 CPUs: the tests size VMs and pods by CPU requests against what the node has
free when they start, so whatever else runs there (CoreDNS) is accounted for.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from decimal import Decimal

import pytest
from k3svirt_common import reservation as rsv
from k3svirt_common.quantity import quantity_value

from tests.polling import poll

from .conftest import get_json, kubectl, tiny_vm, virsh, wait_until

PAUSE = rsv.PAUSE_IMAGE


@pytest.fixture(autouse=True)
def _node_runs(kubeconfig):
    """These tests need the test bed's node: K3SVIRT_TESTBED_NODE=0 leaves it out (they fail, clearly)."""
    if os.environ.get("K3SVIRT_TESTBED_NODE") == "0":
        pytest.fail("needs the test bed's node (kubelet): unset K3SVIRT_TESTBED_NODE=0", pytrace=False)


def _node() -> str:
    return os.environ["K3SVIRT_NODE_NAME"]


def _free_millicpu(kubeconfig: str) -> int:
    """CPU (millicores) the node has left: allocatable minus the requests of its live pods."""
    node = get_json(kubeconfig, "node", _node())
    alloc = quantity_value(node["status"]["allocatable"]["cpu"]) * 1000
    pods = get_json(kubeconfig, "pods", "-A", "--field-selector", f"spec.nodeName={_node()}")["items"]
    used = Decimal(0)
    for p in pods:
        if p["status"].get("phase") in ("Succeeded", "Failed"):
            continue
        for c in p["spec"]["containers"]:
            used += quantity_value((c.get("resources", {}).get("requests") or {}).get("cpu", "0")) * 1000
    return int(alloc - used)


def _reservations(kubeconfig: str, ns: str | None = None) -> list[dict]:
    where = ["-n", ns] if ns else ["-A"]
    return get_json(kubeconfig, "pods", *where, "-l", f"{rsv.LABEL_NODE}={_node()}")["items"]


def _hog(kubeconfig: str, ns: str, name: str, millicpu: int, replicas: int = 1) -> None:
    """A Deployment of pause pods requesting `millicpu` each (the node's real pods), on the test's node
    (a cluster with more nodes, e.g. node instances, would place them elsewhere)."""
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "automountServiceAccountToken": False,
                    "nodeSelector": {"kubernetes.io/hostname": _node()},
                    "containers": [
                        {
                            "name": "hog",
                            "image": PAUSE,
                            "imagePullPolicy": "Never",
                            "resources": {"requests": {"cpu": f"{millicpu}m", "memory": "16Mi"}},
                        }
                    ],
                },
            },
        },
    }
    kubectl(kubeconfig, "apply", "-n", ns, "-f", "-", stdin=json.dumps(dep))


def _dep_pods(kubeconfig: str, ns: str, app: str) -> list[dict]:
    return get_json(kubeconfig, "pods", "-n", ns, "-l", f"app={app}")["items"]


def _vm(kubeconfig: str, ns: str, name: str) -> dict:
    return get_json(kubeconfig, "vm", name, "-n", ns)


def _cond(vm: dict, ctype: str) -> dict:
    return next((c for c in (vm.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def _apply_vm(kubeconfig: str, ns: str, vm: dict) -> None:
    kubectl(kubeconfig, "apply", "-n", ns, "-f", "-", stdin=json.dumps(vm))


def _ready(kubeconfig: str, ns: str, name: str) -> bool:
    return _cond(_vm(kubeconfig, ns, name), "Ready").get("status") == "True"


def _running(domain: str) -> bool:
    return virsh("domstate", domain, check=False) == "running"


def test_vms_fill_the_node_and_a_deployment_stays_pending(kubeconfig, namespace, operator, tiny_guest):
    free = _free_millicpu(kubeconfig)
    assert free >= 1000, f"the test node has only {free}m CPU free"
    vm = tiny_vm("filler", tiny_guest)
    vm["spec"]["cpu"]["request"] = f"{free - 200}m"  # all but 200m of what is free
    _apply_vm(kubeconfig, namespace, vm)
    kubectl(kubeconfig, "wait", "-n", namespace, "--for=condition=Ready", "vm/filler", "--timeout=120s")

    # The share is a real pod, admitted by the kubelet, sized as docs/accounting.md says.
    (pod,) = _reservations(kubeconfig, namespace)
    assert pod["metadata"]["name"] == "k3svirt-vm-filler" and pod["spec"]["nodeName"] == _node()
    assert pod["status"]["phase"] == "Running", pod["status"]
    assert pod["status"]["qosClass"] == "Guaranteed"
    req = pod["spec"]["containers"][0]["resources"]["requests"]
    emulated = _vm(kubeconfig, namespace, "filler")["status"]["acceleration"] == "emulation"
    want = rsv.resources({**vm["spec"], "iothreads": 0}, emulated=emulated)
    assert quantity_value(req["cpu"]) == quantity_value(want["cpu"])
    assert quantity_value(req["memory"]) == quantity_value(want["memory"]) >= 128 * 1024**2
    assert _cond(_vm(kubeconfig, namespace, "filler"), "ResourcesReserved")["status"] == "True"

    # A Deployment whose pod does not fit beside the VM stays Pending, with the scheduler's reason.
    _hog(kubeconfig, namespace, "web", 500)

    def unschedulable() -> str | None:
        for p in _dep_pods(kubeconfig, namespace, "web"):
            sched = next((c for c in p["status"].get("conditions") or [] if c["type"] == "PodScheduled"), {})
            if sched.get("reason") == "Unschedulable":
                return sched["message"]
        return None

    msg = wait_until(unschedulable, 60, "the Deployment's pod was scheduled beside the VM")
    assert "Insufficient cpu" in msg, msg
    time.sleep(2)
    assert all(p["status"]["phase"] == "Pending" for p in _dep_pods(kubeconfig, namespace, "web"))

    # Stopping the VM returns its share at once: the pod is gone and the Deployment's pod runs.
    t0 = time.monotonic()
    kubectl(
        kubeconfig, "patch", "-n", namespace, "vm/filler", "--type=merge", "-p", '{"spec":{"runStrategy":"Halted"}}'
    )
    wait_until(lambda: not _reservations(kubeconfig, namespace), 60, "the stopped VM kept its reservation")
    wait_until(
        lambda: any(p["status"].get("phase") == "Running" for p in _dep_pods(kubeconfig, namespace, "web")),
        90,
        "the Deployment's pod did not run once the VM stopped",
    )
    print(f"VM stop -> pending pod running: {time.monotonic() - t0:.1f} s")
    assert _cond(_vm(kubeconfig, namespace, "filler"), "ResourcesReserved")["reason"] == "Released"
    kubectl(kubeconfig, "delete", "-n", namespace, "deployment/web", "vm/filler", "--timeout=60s")


def test_a_vm_that_does_not_fit_waits_unschedulable_and_starts_when_room_frees(
    kubeconfig, namespace, operator, tiny_guest
):
    free = _free_millicpu(kubeconfig)
    _hog(kubeconfig, namespace, "hog", free - 300)
    wait_until(
        lambda: any(p["status"].get("phase") == "Running" for p in _dep_pods(kubeconfig, namespace, "hog")),
        90,
        "the hog pod did not run",
    )
    vm = tiny_vm("late", tiny_guest)
    vm["spec"]["cpu"]["request"] = "600m"
    _apply_vm(kubeconfig, namespace, vm)
    domain = f"{namespace}_late"

    def unschedulable() -> dict | None:
        st = _vm(kubeconfig, namespace, "late").get("status") or {}
        ready = _cond({"status": st}, "Ready")
        return st if ready.get("reason") == "Unschedulable" else None

    st = wait_until(unschedulable, 60, "the VM that does not fit did not report Unschedulable")
    ready = _cond({"status": st}, "Ready")
    assert ready["status"] == "False" and "Insufficient cpu" in ready["message"], ready
    assert st["printableStatus"] == "ErrorUnschedulable"
    assert _cond({"status": st}, "ResourcesReserved")["reason"] == "Unschedulable"

    def warned() -> bool:  # kopf posts events in the background: a moment after the status
        events = get_json(kubeconfig, "events", "-n", namespace, "--field-selector", "involvedObject.name=late")
        return any(e["reason"] == "Unschedulable" and e["type"] == "Warning" for e in events["items"])

    wait_until(warned, 30, "no Warning Event Unschedulable for the VM")
    # Never started on an overcommitted node: the domain is defined but does not run.
    time.sleep(3)
    assert not _running(domain)
    (pod,) = _reservations(kubeconfig, namespace)
    assert not pod["spec"].get("nodeName")

    # Room frees: the VM starts by itself (the scheduler places the pending reservation).
    t0 = time.monotonic()
    kubectl(kubeconfig, "delete", "-n", namespace, "deployment/hog", "--timeout=60s")
    wait_until(lambda: _ready(kubeconfig, namespace, "late"), 120, "the VM did not start once room was freed")
    print(f"room freed -> waiting VM Ready: {time.monotonic() - t0:.1f} s")
    assert _running(domain)
    kubectl(kubeconfig, "delete", "-n", namespace, "vm/late", "--timeout=60s")
    assert not _reservations(kubeconfig, namespace), "the deleted VM's reservation is left"


def test_a_quota_limits_vms_and_pods_together(kubeconfig, namespace, operator, tiny_guest):
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "tenant"},
        "spec": {"hard": {"requests.cpu": "1", "count/virtualmachines.k3svirt.io": "2"}},
    }
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(quota))
    wait_until(
        lambda: get_json(kubeconfig, "resourcequota", "tenant", "-n", namespace).get("status", {}).get("hard"),
        30,
        "the quota controller did not pick the quota up",
    )
    _hog(kubeconfig, namespace, "app", 600)
    wait_until(
        lambda: any(p["status"].get("phase") == "Running" for p in _dep_pods(kubeconfig, namespace, "app")),
        90,
        "the app pod did not run",
    )
    vm = tiny_vm("over", tiny_guest)
    vm["spec"]["cpu"]["request"] = "500m"  # 600m + 500m > the quota's 1 CPU
    _apply_vm(kubeconfig, namespace, vm)

    def refused() -> dict | None:
        ready = _cond(_vm(kubeconfig, namespace, "over"), "Ready")
        return ready if ready.get("reason") == "QuotaExceeded" else None

    ready = wait_until(refused, 60, "the VM over quota did not report QuotaExceeded")
    assert ready["status"] == "False" and "exceeded quota: tenant" in ready["message"], ready
    assert "requests.cpu" in ready["message"]
    assert not _running(f"{namespace}_over")

    # The object count is limited by the API server itself, for VMs like for any kind.
    vm2, vm3 = tiny_vm("second", tiny_guest, runStrategy="Halted"), tiny_vm("third", tiny_guest, runStrategy="Halted")
    _apply_vm(kubeconfig, namespace, vm2)
    proc = kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(vm3), check=False)
    assert proc.returncode != 0 and "exceeded quota" in proc.stderr, proc.stderr

    # Room in the quota frees: the VM starts on the next retry (back-off of at most 60 s).
    kubectl(kubeconfig, "delete", "-n", namespace, "deployment/app", "--timeout=60s")
    wait_until(lambda: _ready(kubeconfig, namespace, "over"), 120, "the VM did not start once the quota had room")
    kubectl(kubeconfig, "delete", "-n", namespace, "vm/over", "vm/second", "--timeout=60s")


def test_an_operator_restart_neither_duplicates_nor_loses_reservations(kubeconfig, namespace, operator, tiny_guest):
    _apply_vm(kubeconfig, namespace, tiny_vm("steady", tiny_guest))
    kubectl(kubeconfig, "wait", "-n", namespace, "--for=condition=Ready", "vm/steady", "--timeout=120s")
    (before,) = _reservations(kubeconfig, namespace)
    # A reservation whose VM is gone (as a crash between the two deletions would leave it; no owner
    # reference, so only the operator's sweep can know).
    orphan = rsv.pod_body(
        namespace, "gone", "00000000-0000-0000-0000-000000000000", _node(), {"cpu": "10m", "memory": "8Mi"}
    )
    del orphan["metadata"]["ownerReferences"]
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(orphan))
    operator.stop()
    operator.start()
    wait_until(
        lambda: [p["metadata"]["name"] for p in _reservations(kubeconfig, namespace)] == ["k3svirt-vm-steady"],
        60,
        "the orphaned reservation was not removed after the restart",
    )
    time.sleep(3)  # a few passes of the restarted operator
    (after,) = _reservations(kubeconfig, namespace)
    assert after["metadata"]["uid"] == before["metadata"]["uid"], "the reservation was replaced"
    assert _ready(kubeconfig, namespace, "steady")
    kubectl(kubeconfig, "delete", "-n", namespace, "vm/steady", "--timeout=60s")


CYCLES = int(os.environ.get("K3SVIRT_ACCOUNTING_CYCLES", "3"))


def _running_tasks() -> int | None:
    """Running containers (pause processes) in the node's containerd; None when it cannot be asked."""
    sock = os.environ.get("K3SVIRT_CONTAINERD_ADDRESS", "")
    if not os.path.exists(sock):
        return None
    ls = ["ctr", "-a", sock, "-n", "k8s.io", "tasks", "ls"]
    proc = subprocess.run(ls, capture_output=True, text=True, timeout=60)
    return sum(1 for line in proc.stdout.splitlines()[1:] if "RUNNING" in line) if proc.returncode == 0 else None


@pytest.mark.parametrize("cycles", [CYCLES])
def test_create_delete_cycles_leave_no_reservation(kubeconfig, namespace, operator, tiny_guest, storage_root, cycles):
    """CI runs 3 cycles; the full count: K3SVIRT_ACCOUNTING_CYCLES=100 (docs/accounting.md). Leaks
    counted after the last one: reservation pods, any pod, libvirt domains, VM storage directories of
    the namespace, and running containers on the node beyond those before the first cycle."""
    t0 = time.monotonic()
    tasks_before = _running_tasks()
    for i in range(cycles):
        name = f"cyc{i}"
        _apply_vm(kubeconfig, namespace, tiny_vm(name, tiny_guest))
        kubectl(kubeconfig, "wait", "-n", namespace, "--for=condition=Ready", f"vm/{name}", "--timeout=120s")
        assert len(_reservations(kubeconfig, namespace)) == 1
        kubectl(kubeconfig, "delete", "-n", namespace, f"vm/{name}", "--timeout=90s")
        if (i + 1) % 10 == 0:
            print(f"cycle {i + 1}/{cycles} done at {time.monotonic() - t0:.0f} s", flush=True)

    def leaks() -> dict[str, int]:
        domains = [d for d in virsh("list", "--all", "--name").split() if d.startswith(f"{namespace}_")]
        vm_dir = storage_root / "vms" / namespace
        tasks = _running_tasks()
        return {
            "reservations": len(_reservations(kubeconfig, namespace)),
            "pods": len(get_json(kubeconfig, "pods", "-n", namespace)["items"]),
            "domains": len(domains),
            "storage_dirs": len(list(vm_dir.iterdir())) if vm_dir.exists() else 0,
            "containers": max(0, tasks - tasks_before) if tasks is not None and tasks_before is not None else 0,
        }

    # The kubelet stops a deleted pod's containers on its next sync: give it that long.
    poll(lambda: not any(leaks().values()), 60, interval=2)
    left = leaks()
    print(f"{cycles} create/delete cycles in {time.monotonic() - t0:.0f} s; left: {left}")
    assert not any(left.values()), left
