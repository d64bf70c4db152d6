"""Placement: a VM matched by nodeSelector on two nodes is claimed and run by exactly one of them."""

from __future__ import annotations

import json
import time

from tests.polling import wait_until

from .conftest import Operator, free_port, get_json, kubectl, tiny_vm, virsh


def test_two_matching_nodes_one_claims_the_vm(kubeconfig, namespace, testbed, tiny_guest, tmp_path):
    import os

    operators = []
    for node in ("pool-a", "pool-b"):
        env = {
            **os.environ,
            **testbed,
            "K3SVIRT_NODE_NAME": node,
            "K3SVIRT_NODE_LABELS": "k3svirt.io/pool=e2e",
            "K3SVIRT_METRICS_PORT": str(free_port()),
            "K3SVIRT_STOP_GRACE_SECONDS": "2",
            # pool-a and pool-b are operators of nodes without a kubelet (no Node objects): nothing
            # could place their reservations. tests/e2e/test_vm_accounting.py covers reservations.
            "K3SVIRT_RESERVATIONS": "off",
        }
        op = Operator(env, tmp_path / f"{node}.log")
        op.start()
        operators.append(op)
    try:
        vm = tiny_vm("shared", tiny_guest)
        del vm["spec"]["nodeName"]
        vm["spec"]["nodeSelector"] = {"k3svirt.io/pool": "e2e"}
        kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(vm))
        kubectl(kubeconfig, "wait", "-n", namespace, "--for=condition=Ready", "vm/shared", "--timeout=120s")
        time.sleep(3)  # give the losing operator time to do something wrong
        status = get_json(kubeconfig, "vm", "shared", "-n", namespace)["status"]
        assert status["node"] in ("pool-a", "pool-b")
        domain = f"{namespace}_shared"
        assert virsh("list", "--all", "--name").split().count(domain) == 1
        finalizers = get_json(kubeconfig, "vm", "shared", "-n", namespace)["metadata"].get("finalizers", [])
        assert finalizers == [f"k3svirt.io/node-{status['node']}"], finalizers

        # A selector no node matches: nobody touches the VM.
        lonely = tiny_vm("lonely", tiny_guest)
        del lonely["spec"]["nodeName"]
        lonely["spec"]["nodeSelector"] = {"k3svirt.io/pool": "nowhere"}
        kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(lonely))
        time.sleep(3)
        assert not (get_json(kubeconfig, "vm", "lonely", "-n", namespace).get("status") or {}).get("node")
        assert f"{namespace}_lonely" not in virsh("list", "--all", "--name").split()
        kubectl(kubeconfig, "delete", "-n", namespace, "vm/lonely", "vm/shared", "--timeout=60s")
        wait_until(lambda: domain not in virsh("list", "--all", "--name").split(), 30, "domain left behind")
    finally:
        for op in operators:
            op.stop()
