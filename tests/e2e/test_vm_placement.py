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


def test_template_status_counts_vms_the_operator_does_not_watch(kubeconfig, namespace, testbed, tiny_guest, tmp_path):
    """The operator watches only its node's VMs (placement.py), yet a VMTemplate's usedBy counts every VM
    of the namespace using it (template_status.py reads them fresh), and the template's deletion is held
    while a VM of another node still uses it."""
    import os

    node = "usage-a"
    env = {**os.environ, **testbed, "K3SVIRT_NODE_NAME": node, "K3SVIRT_METRICS_PORT": str(free_port()),
           "K3SVIRT_STOP_GRACE_SECONDS": "2", "K3SVIRT_RESERVATIONS": "off"}  # fmt: skip
    op = Operator(env, tmp_path / "usage.log")
    op.start()
    try:
        version = {"version": "1.0.0", "vm": {"memory": {"size": "128Mi"}}}
        tmpl = {"apiVersion": "k3svirt.io/v1alpha1", "kind": "VMTemplate", "metadata": {"name": "shared"},
                "spec": {"kind": "Template", "versions": [version]}}  # fmt: skip
        kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(tmpl))
        ref = {"name": "shared"}
        mine = tiny_vm("mine", tiny_guest, nodeName=node, networks=[], runStrategy="Halted", template=ref)
        far = tiny_vm("far", tiny_guest, nodeName="usage-elsewhere", networks=[], runStrategy="Halted",
                      template={"name": "shared"})  # fmt: skip
        for vm in (far, mine):
            kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=json.dumps(vm))

        def used() -> list[str]:
            st = get_json(kubeconfig, "vmtemplate", "shared", "-n", namespace).get("status") or {}
            return sorted(v["name"] for v in (st.get("usedBy") or {}).get("vms") or [])

        wait_until(lambda: used() == ["far", "mine"], 60, f"usedBy {used()}; log:\n{op.tail(30)}")
        assert (get_json(kubeconfig, "vm", "mine", "-n", namespace).get("status") or {}).get("node") == node
        assert not (get_json(kubeconfig, "vm", "far", "-n", namespace).get("status") or {}).get("node")
        kubectl(kubeconfig, "delete", "-n", namespace, "vm/mine", "--timeout=60s")
        wait_until(lambda: used() == ["far"], 60, f"usedBy {used()}; log:\n{op.tail(30)}")
        kubectl(kubeconfig, "delete", "-n", namespace, "vmtemplate/shared", "--wait=false")
        time.sleep(3)  # held by the operator's finalizer while "far" uses it
        held = get_json(kubeconfig, "vmtemplate", "shared", "-n", namespace)
        assert held["metadata"].get("deletionTimestamp"), held["metadata"]
        kubectl(kubeconfig, "delete", "-n", namespace, "vm/far", "--timeout=60s")
        wait_until(lambda: kubectl(kubeconfig, "get", "-n", namespace, "vmtemplate/shared", check=False).returncode,
                   60, "the template's deletion stayed held")  # fmt: skip
    finally:
        op.stop()
