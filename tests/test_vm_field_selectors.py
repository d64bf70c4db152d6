"""The VM field selectors the operators' watches rest on (k3svirt_operator.placement), against the real API
server: spec.nodeName and status.node are selectable, a missing field selects as "", an object that stops
matching leaves a watch with a DELETED event; and the operator's paged scan (Runtime.scan) sees every VM."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from k3svirt_common import names
from k3svirt_common.kube import ApiError, Client, ListWatch, group_path, load_config
from k3svirt_operator import placement

from tests.polling import wait_until


def vm(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{names.GROUP}/{names.VERSION}", "kind": "VirtualMachine", "metadata": {"name": name},
            "spec": {"memory": {"size": "64Mi"}, "runStrategy": "Halted", **spec}}  # fmt: skip


@pytest.fixture
def api(kubeconfig: str) -> Client:
    return Client(load_config(kubeconfig), timeout=30.0)


def selected(api: Client, namespace: str, selector: str) -> set[str]:
    path = group_path(names.GROUP, names.VERSION, names.VM_PLURAL, namespace)
    return {o["metadata"]["name"] for o in api.list(path, field_selector=selector)["items"]}


def test_the_selectors_pick_exactly_the_vms_of_their_node(api, namespace):
    path = group_path(names.GROUP, names.VERSION, names.VM_PLURAL, namespace)
    for body in (vm("pinned-n1", nodeName="fs-n1"), vm("pinned-n2", nodeName="fs-n2"),
                 vm("free", nodeSelector={"pool": "a"}), vm("claimed-n1", nodeSelector={"pool": "a"})):  # fmt: skip
        api.create(path, body)
    api.patch(group_path(names.GROUP, names.VERSION, names.VM_PLURAL, namespace, "claimed-n1", "status"),
              {"status": {"node": "fs-n1"}})  # fmt: skip
    pinned, free = placement.claim_selectors("fs-n1")
    assert selected(api, namespace, pinned) == {"pinned-n1"}
    assert selected(api, namespace, free) == {"free"}
    assert selected(api, namespace, placement.watch_selector("fs-n1")) == {"claimed-n1"}
    assert selected(api, namespace, placement.claim_selectors("fs-n2")[0]) == {"pinned-n2"}
    with pytest.raises(ApiError) as err:  # a field the CRD does not declare selectable: refused, not ignored
        selected(api, namespace, "spec.runStrategy=Halted")
    assert err.value.status == 400


def test_a_claimed_vm_leaves_the_unclaimed_watch_and_enters_the_nodes_watch(api, namespace):
    path = group_path(names.GROUP, names.VERSION, names.VM_PLURAL, namespace)
    seen: dict[str, list[tuple[str, str]]] = {"unclaimed": [], "node": []}
    watches = {"unclaimed": ListWatch(api, path, query={"fieldSelector": placement.claim_selectors("fs-w1")[0]}),
               "node": ListWatch(api, path, query={"fieldSelector": placement.watch_selector("fs-w1")})}  # fmt: skip

    def follow(which: str) -> None:
        lw = watches[which]
        while not lw.closed:
            for ev in lw.events():
                if ev.type not in ("SYNC", "BOOKMARK"):
                    seen[which].append((ev.type, ev.object["metadata"]["name"]))

    threads = [threading.Thread(target=follow, args=(w,), daemon=True) for w in watches]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: all(lw.resource_version for lw in watches.values()), 20, "watches did not start")
        created = api.create(path, vm("moving", nodeName="fs-w1"))
        wait_until(lambda: ("ADDED", "moving") in seen["unclaimed"], 20, f"not seen unclaimed: {seen}")
        # The claim, as Runtime.claim_vm writes it.
        status = group_path(names.GROUP, names.VERSION, names.VM_PLURAL, namespace, "moving", "status")
        api.patch(status, {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]},
                           "status": {"node": "fs-w1"}})  # fmt: skip
        wait_until(lambda: ("DELETED", "moving") in seen["unclaimed"], 20, f"did not leave: {seen}")
        wait_until(lambda: ("ADDED", "moving") in seen["node"], 20, f"did not arrive: {seen}")
    finally:
        for lw in watches.values():
            lw.close()


def test_the_paged_scan_keeps_only_what_it_is_asked_to(api, namespace):
    from k3svirt_operator.runtime import Runtime

    path = group_path(names.GROUP, names.VERSION, names.VM_PLURAL, namespace)
    for i in range(7):
        extra = {"template": {"name": "t"}} if i % 2 else {}
        api.create(path, vm(f"s{i}", nodeName="fs-none", **extra))
    rt = Runtime.__new__(Runtime)
    rt.api = api
    usage = rt.scan(names.VM_PLURAL, namespace, lambda o: o["metadata"]["name"], page=3)  # three pages
    assert sorted(usage) == [f"s{i}" for i in range(7)]
    users = rt.template_usage(namespace)
    assert sorted(u["metadata"]["name"] for u in users if (u["spec"].get("template") or {}).get("name")) == [
        "s1", "s3", "s5"]  # fmt: skip
