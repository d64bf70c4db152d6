"""A VM whose reservation cannot be created because the API server is away (docs/accounting.md,
"The flow"): the operator's real reconciler, in this process, against the test bed's real
kube-apiserver (stopped and started with tests/harness/controlplane.sh api-stop / api-start, as the
outage tests do), real libvirt and a real kubelet node (the test bed's, else a node instance).

The VM is created while the API server answers; its first passes run while it is away: the domain
is defined but never started, the pass reports `ResourcesReserved=False` / `Ready=False` with reason
`ReservationRefused` ("the API server did not answer") and asks to be retried after 5, 10, 20 s
(the back-off). Once the API server is back the next pass creates the reservation, the kubelet
admits it and only then the domain starts. Cheap: one tiny guest, an outage of a few seconds.

In-process rather than the operator as a subprocess: with the API server away a subprocess could
write no status, so the condition and the back-off would be invisible until it returned."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
from k3svirt_common import names
from k3svirt_common import reservation as rsv
from k3svirt_common.kube import Client, from_kubeconfig
from k3svirt_common.kube import reservations as api_rsv
from k3svirt_operator import accel, vmstate
from k3svirt_operator.config import Settings
from k3svirt_operator.libvirt_conn import LibvirtConnection
from k3svirt_operator.lifecycle import Power
from k3svirt_operator.reservations import Reservations
from k3svirt_operator.vm_reconciler import VMReconciler

from tests.e2e.conftest import get_json, kubectl, operator_env, tiny_vm, virsh
from tests.e2e.node_instance import needs_instances, start_instance
from tests.e2e.test_api_outage import controlplane
from tests.polling import wait_until

pytestmark = needs_instances


@pytest.fixture(scope="module")
def kubelet_node(testbed: dict[str, str]) -> Iterator[str]:
    """A node whose kubelet admits reservation pods, and that no operator process serves."""
    if os.environ.get("K3SVIRT_TESTBED_NODE") != "0":
        yield testbed["K3SVIRT_NODE_NAME"]  # no module of this file starts the e2e operator
        return
    node = start_instance()
    yield node.name
    node.node_sh("stop")


def _cond(status: dict, kind: str) -> dict:
    return next(c for c in status.get("conditions") or [] if c["type"] == kind)


def test_a_vm_whose_reservation_cannot_be_created_waits_for_the_api_server(kubeconfig, namespace, tiny_guest,
                                                                           testbed, kubelet_node):  # fmt: skip
    settings = Settings.from_env(operator_env(testbed, K3SVIRT_NODE_NAME=kubelet_node))
    conn = LibvirtConnection(settings.libvirt_uri, events=False)
    acc = accel.detect(conn.wait_connected(30.0), settings.storage_root, forced=settings.accel)
    api = Client(from_kubeconfig(kubeconfig), timeout=10.0)
    reservations = Reservations(api, kubelet_node, emulated=acc.domain_type != "kvm", image=settings.reservation_image)
    reservations.ensure_priority_class()
    reconciler = VMReconciler(settings, conn, acc, lambda _ns, _n: None, None, reservations)
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-",
            stdin=json.dumps(tiny_vm("waits", tiny_guest, nodeName=kubelet_node)))  # fmt: skip
    body = get_json(kubeconfig, "vm", "waits", "-n", namespace)
    domain = names.domain_name(namespace, "waits")
    state = vmstate.VMState()
    try:
        controlplane("api-stop")
        try:
            delays, events = [], []
            for _ in range(3):
                result = reconciler.reconcile(body, state, (), None)
                events.append([(e.type, e.reason) for e in result.events])
                body["status"] = result.status  # what the daemon would write once it can
                delays.append(result.requeue)
                reserved, ready = (
                    _cond(result.status, names.COND_RESOURCES_RESERVED),
                    _cond(result.status, names.COND_READY),
                )
                assert reserved["status"] == ready["status"] == "False", result.status
                assert reserved["reason"] == ready["reason"] == "ReservationRefused", reserved
                assert "the API server did not answer" in reserved["message"], reserved
                assert "retried with back-off" in reserved["message"], reserved
                # Never half-way: the domain is defined (disks, XML) but not started.
                assert virsh("domstate", domain) == "shut off"
            assert delays == [5.0, 10.0, 20.0], delays
            # One Warning Event for the refusal, not one per retry.
            assert [e.count(("Warning", "ReservationRefused")) for e in events] == [1, 0, 0], events
        finally:
            controlplane("api-start")
        wait_until(lambda: kubectl(kubeconfig, "get", "--raw", "/readyz", check=False).returncode == 0, 120,
                   "the API server did not come back")  # fmt: skip

        def start() -> bool:
            pod = api_rsv.get(api, namespace, rsv.pod_name("waits"))  # what the watch would show
            result = reconciler.reconcile(body, state, (), pod)
            body["status"] = result.status
            if virsh("domstate", domain) == "running":
                return True
            # Until the kubelet admits the reservation the pass waits for it, and starts nothing.
            assert _cond(result.status, names.COND_RESOURCES_RESERVED)["status"] == "False", result.status
            return False

        wait_until(start, 180, f"the VM did not start after the API server returned: {body.get('status')}")
        pod = api_rsv.get(api, namespace, rsv.pod_name("waits"))
        assert pod is not None and pod["spec"]["nodeName"] == kubelet_node
        assert rsv.read(pod, uid=body["metadata"]["uid"], node=kubelet_node, want=None).state == rsv.State.ADMITTED
        assert state.reserve_failures == 0  # the back-off starts again from 5 s at the next refusal
        assert reconciler._observe(conn.get(), namespace, "waits", body["metadata"]["uid"]).power == Power.RUNNING
    finally:
        reconciler.delete(body)  # destroys, undefines and releases the reservation, as the finalizer does
        conn.close()
    assert virsh("domstate", domain, check=False) == ""
    assert api_rsv.get(api, namespace, rsv.pod_name("waits")) is None
