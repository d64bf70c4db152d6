"""The operator's reservation calls against the test bed's real API server, admission and scheduler
(no kubelet needed: these pods are never admitted; tests/e2e/test_vm_accounting.py has the node)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest
from k3svirt_common import names
from k3svirt_common import reservation as rsv
from k3svirt_common.kube import Client, core_path, from_kubeconfig, group_path
from k3svirt_common.kube import reservations as api_rsv
from k3svirt_operator.reservations import Refused, Reservations

NODE = "no-such-node"
SPEC = {"cpu": {"cores": 1, "request": "100m"}, "memory": {"size": "64Mi"}}


@pytest.fixture(scope="module")
def api(kubeconfig: str) -> Client:
    return Client(from_kubeconfig(kubeconfig))


@pytest.fixture
def res(api: Client) -> Reservations:
    r = Reservations(api, NODE, emulated=True)
    r.ensure_priority_class()
    r.ensure_priority_class()  # idempotent
    return r


def _vm(api: Client, ns: str, name: str) -> dict:
    body = {"apiVersion": names.API_VERSION, "kind": names.VM_KIND, "metadata": {"name": name},
            "spec": {**SPEC, "runStrategy": "Halted", "nodeName": NODE}}  # fmt: skip
    return api.create(group_path(names.GROUP, names.VERSION, names.VM_PLURAL, ns), body)


def _pod(api: Client, ns: str, vm: str) -> dict | None:
    return api_rsv.get(api, ns, rsv.pod_name(vm))


def _wait(pred, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_admit_creates_once_and_reports_the_schedulers_verdict(api, res, namespace):
    vm = _vm(api, namespace, "web")
    uid = vm["metadata"]["uid"]
    view = res.admit(namespace, "web", uid, SPEC, None)
    assert view.state in (rsv.State.PENDING, rsv.State.UNSCHEDULABLE)
    # The watch has not shown it yet (pod=None): a second create reads the existing pod (409).
    again = res.admit(namespace, "web", uid, SPEC, None)
    assert again.state in (rsv.State.PENDING, rsv.State.UNSCHEDULABLE)
    pods = api.get(core_path("pods", namespace))["items"]
    assert [p["metadata"]["name"] for p in pods] == ["k3svirt-vm-web"]
    # The real scheduler finds no such node: the verdict is its message, and the VM may not start.
    pod = _wait(lambda: (p := _pod(api, namespace, "web")) and (p.get("status") or {}).get("conditions") and p)
    view = res.admit(namespace, "web", uid, SPEC, pod)
    assert view.state == rsv.State.UNSCHEDULABLE and "node" in view.message, view
    assert pod["spec"]["priorityClassName"] == rsv.PRIORITY_CLASS and pod["spec"]["priority"] == rsv.PRIORITY_VALUE
    assert pod["status"]["qosClass"] == "Guaranteed"
    # A re-sized spec replaces it (delete now, the next pass creates it).
    bigger = {**SPEC, "memory": {"size": "128Mi"}}
    assert res.admit(namespace, "web", uid, bigger, pod).state == rsv.State.DELETING
    _wait(lambda: _pod(api, namespace, "web") is None)
    # Released: nothing left, and releasing again is no error.
    res.admit(namespace, "web", uid, bigger, None)
    res.release(namespace, "web")
    res.release(namespace, "web")
    assert _pod(api, namespace, "web") is None


def test_settle_releases_a_stopped_vms_share(api, res, namespace):
    vm = _vm(api, namespace, "idle")
    uid = vm["metadata"]["uid"]
    res.admit(namespace, "idle", uid, SPEC, None)
    pod = _pod(api, namespace, "idle")
    assert res.settle(namespace, "idle", uid, SPEC, pod, running=False).state == rsv.State.MISSING
    assert _pod(api, namespace, "idle") is None


def test_quota_refusal_carries_the_quota_message(api, res, namespace):
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "tenant"},
             "spec": {"hard": {"requests.cpu": "50m"}}}  # fmt: skip
    api.create(core_path("resourcequotas", namespace), quota)
    _wait(lambda: api.get(core_path("resourcequotas", namespace, "tenant")).get("status", {}).get("hard"))
    vm = _vm(api, namespace, "big")
    with pytest.raises(Refused) as err:
        res.admit(namespace, "big", vm["metadata"]["uid"], SPEC, None)
    assert err.value.reason == "QuotaExceeded"
    assert "exceeded quota: tenant" in err.value.message and "requests.cpu" in err.value.message


HUGE = {**SPEC, "memory": {"size": "64Mi", "hugepages": {"pageSize": "2Mi"}}}


@pytest.mark.parametrize(
    ("spec", "resource"),
    [(SPEC, "memory"), (HUGE, "hugepages-2Mi")],
    ids=["requests.memory", "requests.hugepages-2Mi"],
)
def test_a_memory_quota_counts_exactly_the_vms_reservation(api, res, namespace, spec, resource):
    """The quota counts the reservation's memory as the operator sizes it (guest RAM, or its
    hugepages, plus QEMU's overhead as ordinary memory): one MiB less refuses the VM with the quota's
    message naming the resource; exactly that much admits it."""
    want = rsv.resources(spec, emulated=True)[resource]
    mib = int(want.removesuffix("Mi"))
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "mem"},
             "spec": {"hard": {f"requests.{resource}": f"{mib - 1}Mi"}}}  # fmt: skip
    api.create(core_path("resourcequotas", namespace), quota)
    _wait(lambda: (api.get(core_path("resourcequotas", namespace, "mem")).get("status") or {}).get("used"))
    vm = _vm(api, namespace, "big")
    with pytest.raises(Refused) as err:
        res.admit(namespace, "big", vm["metadata"]["uid"], spec, None)
    assert err.value.reason == "QuotaExceeded"
    assert "exceeded quota: mem" in err.value.message and f"requests.{resource}" in err.value.message, err.value
    assert _pod(api, namespace, "big") is None  # refused: nothing half-created
    api.patch(core_path("resourcequotas", namespace, "mem"), {"spec": {"hard": {f"requests.{resource}": want}}})
    _wait(lambda: api.get(core_path("resourcequotas", namespace, "mem"))["status"]["hard"][f"requests.{resource}"]
          == want)  # fmt: skip
    view = _wait(lambda: _admitted_or_none(res, namespace, "big", vm["metadata"]["uid"], spec))
    assert view.state in (rsv.State.PENDING, rsv.State.UNSCHEDULABLE)  # created: the scheduler's turn
    assert _pod(api, namespace, "big")["spec"]["containers"][0]["resources"]["requests"][resource] == want


def _admitted_or_none(res: Reservations, ns: str, vm: str, uid: str, spec: dict) -> rsv.View | None:
    """admit, or None while the quota's new limit has not reached the API server's admission."""
    try:
        return res.admit(ns, vm, uid, spec, None)
    except Refused:
        return None


def test_a_pod_of_that_name_that_is_not_a_reservation_is_never_touched(api, res, namespace):
    vm = _vm(api, namespace, "clash")
    foreign = rsv.pod_body(namespace, "clash", "x", NODE, {"cpu": "10m", "memory": "8Mi"})
    del foreign["metadata"]["labels"][rsv.LABEL_VM]
    del foreign["metadata"]["ownerReferences"]
    api.create(core_path("pods", namespace), foreign)
    view = res.admit(namespace, "clash", vm["metadata"]["uid"], SPEC, None)
    assert view.state == rsv.State.FOREIGN
    assert res.settle(namespace, "clash", vm["metadata"]["uid"], SPEC, _pod(api, namespace, "clash"),
                      running=False).state == rsv.State.FOREIGN  # fmt: skip
    res.release(namespace, "clash")  # the VM's deletion
    assert _pod(api, namespace, "clash") is not None


def test_sweep_removes_reservations_whose_vm_is_gone_or_new(api, res, namespace):
    kept = _vm(api, namespace, "kept")
    res.admit(namespace, "kept", kept["metadata"]["uid"], SPEC, None)
    gone = rsv.pod_body(namespace, "gone", str(uuid.uuid4()), NODE, {"cpu": "10m", "memory": "8Mi"})
    del gone["metadata"]["ownerReferences"]  # only the sweep can know (no garbage collection)
    api.create(core_path("pods", namespace), gone)
    renamed = _vm(api, namespace, "reborn")
    stale = rsv.pod_body(namespace, "reborn", str(uuid.uuid4()), NODE, {"cpu": "10m", "memory": "8Mi"})
    del stale["metadata"]["ownerReferences"]
    api.create(core_path("pods", namespace), stale)
    assert renamed["metadata"]["uid"] != stale["metadata"]["annotations"][rsv.ANNOTATION_VM_UID]
    assert res.sweep() >= 2
    left = {p["metadata"]["name"] for p in api.get(core_path("pods", namespace))["items"]
            if not p["metadata"].get("deletionTimestamp")}  # fmt: skip
    assert left == {"k3svirt-vm-kept"}, left


def test_the_garbage_collector_removes_a_reservation_whose_vm_is_deleted(api, res, namespace, kubeconfig):
    vm = _vm(api, namespace, "owned")
    res.admit(namespace, "owned", vm["metadata"]["uid"], SPEC, None)
    subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "delete", "-n", namespace, "vm/owned", "--wait=true"],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    _wait(lambda: _pod(api, namespace, "owned") is None, 60)
    assert json.dumps(api.get(core_path("pods", namespace))["items"]) == "[]"


def test_prepare_creates_early_and_admit_reads_a_pending_reservation_fresh(api, res, namespace):
    """The start pass creates the reservation first (prepare) and judges it at the start from a fresh
    read, not from the pass's stale copy: the scheduler's verdict of meanwhile is what counts."""
    vm = _vm(api, namespace, "early")
    uid = vm["metadata"]["uid"]
    created = res.prepare(namespace, "early", uid, SPEC, None)
    assert created is not None and rsv.read(created, uid=uid, node=NODE, want=res.want(SPEC)).state == rsv.State.PENDING
    assert res.prepare(namespace, "early", uid, SPEC, created) is created  # there already: nothing asked
    _wait(lambda: ((_pod(api, namespace, "early") or {}).get("status") or {}).get("conditions"))
    view, fresh = res.admit_fresh(namespace, "early", uid, SPEC, created)  # `created` is still Pending
    assert view.state == rsv.State.UNSCHEDULABLE, view
    assert fresh is not None and fresh["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]
    assert [p["metadata"]["name"] for p in api.get(core_path("pods", namespace))["items"]] == ["k3svirt-vm-early"]


def test_prepare_leaves_a_refusal_to_admit(api, res, namespace):
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "tight"},
             "spec": {"hard": {"requests.cpu": "10m"}}}  # fmt: skip
    api.create(core_path("resourcequotas", namespace), quota)
    vm = _vm(api, namespace, "over")
    uid = vm["metadata"]["uid"]
    # The quota controller fills in status.used first; until then the API server refuses every pod.
    _wait(lambda: (api.get(core_path("resourcequotas", namespace, "tight")).get("status") or {}).get("used"))
    assert res.prepare(namespace, "over", uid, SPEC, None) is None  # asked, refused, nothing raised
    with pytest.raises(Refused) as refused:
        res.admit(namespace, "over", uid, SPEC, None)
    assert refused.value.reason == "QuotaExceeded"
