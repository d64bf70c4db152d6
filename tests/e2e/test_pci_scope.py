"""PCI scoping through the real operator: a PCIPassthrough reserved for no VM is claimed by none.

The device address does not exist on this machine (0000:ff:1f.7), so the operator never touches a
real device: the PCIPassthrough fails to resolve, and what the VM is told shows which rule refused it
first (scope before phase)."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from .conftest import get_json, kubectl, tiny_vm, wait_until

ADDRESS = "0000:ff:1f.7"


def _pcip(kubeconfig: str, name: str, **spec: object) -> None:
    body = {
        "apiVersion": "k3svirt.io/v1alpha1",
        "kind": "PCIPassthrough",
        "metadata": {"name": name},
        "spec": {"nodeName": os.environ["K3SVIRT_NODE_NAME"], "address": ADDRESS, **spec},
    }
    kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(body))


def _host_devices_condition(kubeconfig: str, ns: str, name: str) -> dict | None:
    conds = (get_json(kubeconfig, "vm", name, "-n", ns).get("status") or {}).get("conditions") or []
    cond = next((c for c in conds if c.get("type") == "HostDevicesReady"), None)
    return cond if cond and cond.get("status") == "False" else None


@pytest.mark.parametrize(
    "grant,expect",
    [
        ({}, "is not open to namespace {ns}"),
        ({"assignTo": {"namespace": "{ns}", "name": "someone-else"}}, "is reserved for VM {ns}/someone-else"),
        ({"namespaces": ["{ns}"]}, "is not Bound"),  # the grant lets it through to the next rule
    ],
    ids=["no-grant", "reserved-for-another", "namespace-grant"],
)
def test_unscoped_device_is_refused_with_a_condition(kubeconfig, namespace, operator, tiny_guest, grant, expect):
    ns, pname = namespace, f"t-scope-{uuid.uuid4().hex[:8]}"
    _pcip(kubeconfig, pname, **json.loads(json.dumps(grant).replace("{ns}", ns)))
    try:
        vm = tiny_vm("gpu", tiny_guest, hostDevices=[{"name": "gpu", "pciPassthrough": pname}])
        kubectl(kubeconfig, "apply", "-n", ns, "-f", "-", stdin=json.dumps(vm))
        cond = wait_until(
            lambda: _host_devices_condition(kubeconfig, ns, "gpu"), 90, f"no HostDevicesReady=False; {operator.tail()}"
        )
        assert expect.format(ns=ns) in cond["message"], cond
        assert f"PCIPassthrough {pname}" in cond["message"], cond
        status = get_json(kubeconfig, "vm", "gpu", "-n", ns)["status"]
        assert status.get("printableStatus") != "Running", status
        pcip = get_json(kubeconfig, "pcip", pname)
        assert not (pcip.get("status") or {}).get("assignedTo"), pcip  # never claimed
        kubectl(kubeconfig, "delete", "-n", ns, "vm/gpu", "--wait=true", "--timeout=120s")
    finally:
        kubectl(kubeconfig, "delete", "pcip", pname, "--wait=true", "--timeout=60s", check=False)
