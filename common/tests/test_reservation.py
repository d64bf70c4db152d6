"""Reservation pods, the pure part: sizes, the overhead formula, how a pod reads, what to do next."""

from __future__ import annotations

import copy

import pytest
from k3svirt_common import reservation as rsv

MI = 1024**2
UID = "0c7f4b52-1111-4222-8333-944455556666"


def spec(**over):
    s = {"cpu": {"sockets": 1, "cores": 2, "threads": 1}, "memory": {"size": "1Gi"}, "iothreads": 0}
    s.update(over)
    return s


def test_overhead_formula_kvm_and_emulation():
    base = rsv.QEMU_BASE + 2 * rsv.PER_VCPU + (1024 * MI) // 512 + rsv.PLATFORM
    assert rsv.memory_overhead(spec(), emulated=False) == base
    assert rsv.memory_overhead(spec(), emulated=True) == base + rsv.EMULATION
    graphics = spec(devices={"graphics": {"type": "vnc"}})
    assert rsv.memory_overhead(graphics, emulated=False) == base + rsv.GRAPHICS
    vfio = spec(hostDevices=[{"name": "nic", "pciPassthrough": "x"}])
    assert rsv.memory_overhead(vfio, emulated=False) == base + rsv.VFIO
    assert rsv.memory_overhead(spec(iothreads=2), emulated=False) == base + 2 * rsv.PER_IOTHREAD


def test_overhead_is_a_fraction_of_kubevirts():
    """KubeVirt charges ~220 MiB of platform processes per VM; ours is the reservation pod (16 MiB)."""
    small = spec(cpu={"cores": 1}, memory={"size": "128Mi"})
    assert rsv.memory_overhead(small, emulated=False) < 100 * MI
    assert rsv.PLATFORM <= 220 * MI // 10


def test_resources_default_one_cpu_per_vcpu_and_guest_plus_overhead():
    res = rsv.resources(spec(), emulated=False)
    assert res["cpu"] == "2"
    assert res["memory"] == f"{(1024 * MI + rsv.memory_overhead(spec(), emulated=False)) // MI}Mi"
    assert set(res) == {"cpu", "memory"}


@pytest.mark.parametrize(("given", "want"), [("500m", "500m"), ("1.5", "1500m"), ("2", "2"), ("0.0001", "1m")])
def test_cpu_request_canonical(given, want):
    assert rsv.resources(spec(cpu={"cores": 4, "request": given}), emulated=False)["cpu"] == want


def test_cpu_request_refused_when_not_a_quantity():
    with pytest.raises(rsv.ReservationError, match=r"spec\.cpu\.request"):
        rsv.resources(spec(cpu={"request": "lots"}), emulated=False)


def test_hugepages_are_requested_as_hugepages():
    res = rsv.resources(spec(memory={"size": "1Gi", "hugepages": {"pageSize": "2Mi"}}), emulated=False)
    assert res["hugepages-2Mi"] == "1024Mi"
    assert res["memory"] == f"{-(-rsv.memory_overhead(spec(), emulated=False) // MI)}Mi"


def test_pod_body_is_guaranteed_placed_by_the_scheduler_and_owned_by_the_vm():
    res = {"cpu": "1", "memory": "300Mi"}
    pod = rsv.pod_body("ns", "web", UID, "node1", res)
    c = pod["spec"]["containers"][0]
    assert c["resources"] == {"requests": res, "limits": res}  # Guaranteed QoS
    assert "nodeName" not in pod["spec"]  # the scheduler decides, and says why not
    term = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["node1"]
    owner = pod["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("VirtualMachine", "web", UID, True)
    assert pod["metadata"]["name"] == "k3svirt-vm-web"
    assert pod["metadata"]["labels"][rsv.LABEL_NODE] == "node1"
    assert pod["spec"]["priorityClassName"] == rsv.PRIORITY_CLASS
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert c["imagePullPolicy"] == "Never"


def test_priority_class_never_preempts():
    pc = rsv.priority_class_body()
    assert pc["preemptionPolicy"] == "Never" and 0 < pc["value"] < 2_000_000_000


def _placed(res, **status):
    pod = rsv.pod_body("ns", "web", UID, "node1", res)
    pod["metadata"]["uid"] = "pod-uid"
    pod["spec"]["nodeName"] = "node1"
    pod["status"] = {"phase": "Pending", **status}
    return pod


RES = {"cpu": "1", "memory": "300Mi"}


def test_read_states():
    read = lambda pod, want=RES: rsv.read(pod, uid=UID, node="node1", want=want)  # noqa: E731
    assert read(None).state == rsv.State.MISSING
    pending = rsv.pod_body("ns", "web", UID, "node1", RES)
    assert read(pending).state == rsv.State.PENDING
    unfit = copy.deepcopy(pending)
    msg = "0/1 nodes are available: 1 Insufficient cpu."
    unfit["status"] = {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                       "message": msg}]}  # fmt: skip
    assert read(unfit) == rsv.View(rsv.State.UNSCHEDULABLE, msg)
    assert read(_placed(RES)).state == rsv.State.BOUND
    assert read(_placed(RES, startTime="2026-01-01T00:00:00Z")).state == rsv.State.ADMITTED
    assert read(_placed(RES, phase="Running")).state == rsv.State.ADMITTED
    failed = read(_placed(RES, phase="Failed", reason="OutOfcpu", message="Node didn't have enough resource"))
    assert failed.state == rsv.State.FAILED and "OutOfcpu" in failed.message


def test_read_compares_quantities_not_strings():
    """The API server writes quantities canonically ("1024Mi" comes back as "1Gi")."""
    pod = _placed({"cpu": "1000m", "memory": "1Gi"}, phase="Running")
    assert rsv.read(pod, uid=UID, node="node1", want={"cpu": "1", "memory": "1024Mi"}).state == rsv.State.ADMITTED


def test_read_refuses_what_is_not_exactly_the_vms_reservation():
    read = lambda pod, want=RES: rsv.read(pod, uid=UID, node="node1", want=want)  # noqa: E731
    smaller = _placed({"cpu": "1", "memory": "100Mi"}, phase="Running")
    assert read(smaller).state == rsv.State.STALE  # a look-alike with a smaller share
    assert read(smaller, want=None).state == rsv.State.ADMITTED  # a running VM keeps what it started with
    other_vm = _placed(RES, phase="Running")
    other_vm["metadata"]["annotations"][rsv.ANNOTATION_VM_UID] = "another"
    assert read(other_vm).state == rsv.State.STALE
    foreign = _placed(RES, phase="Running")
    del foreign["metadata"]["labels"][rsv.LABEL_VM]
    assert read(foreign).state == rsv.State.FOREIGN
    going = _placed(RES, phase="Running")
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert read(going).state == rsv.State.DELETING
    two = _placed(RES, phase="Running")
    two["spec"]["containers"].append(copy.deepcopy(two["spec"]["containers"][0]))
    assert read(two).state == rsv.State.STALE


@pytest.mark.parametrize(
    ("state", "hold", "intent"),
    [
        (rsv.State.MISSING, True, rsv.Intent.CREATE),
        (rsv.State.MISSING, False, rsv.Intent.NOTHING),
        (rsv.State.ADMITTED, True, rsv.Intent.NOTHING),
        (rsv.State.ADMITTED, False, rsv.Intent.DELETE),
        (rsv.State.UNSCHEDULABLE, True, rsv.Intent.NOTHING),
        (rsv.State.UNSCHEDULABLE, False, rsv.Intent.DELETE),
        (rsv.State.STALE, True, rsv.Intent.DELETE),
        (rsv.State.FAILED, True, rsv.Intent.DELETE),
        (rsv.State.FOREIGN, True, rsv.Intent.NOTHING),
        (rsv.State.FOREIGN, False, rsv.Intent.NOTHING),
        (rsv.State.DELETING, True, rsv.Intent.NOTHING),
    ],
)
def test_plan(state, hold, intent):
    assert rsv.plan(rsv.View(state), hold=hold) == intent


def test_orphaned():
    pod = _placed(RES)
    vm = {"metadata": {"uid": UID}, "spec": {"nodeName": "node1"}, "status": {}}
    assert not rsv.orphaned(pod, vm, "node1")
    assert rsv.orphaned(pod, None, "node1")
    assert rsv.orphaned(pod, {**vm, "metadata": {"uid": "new"}}, "node1")
    assert rsv.orphaned(pod, {**vm, "spec": {"nodeName": "node2"}}, "node1")
    assert not rsv.orphaned(pod, {**vm, "spec": {}, "status": {}}, "node1")  # not claimed yet
