"""/pci-devices: inventory join, assign, unassign (NodePCIInventory written here as the operator would)."""

from __future__ import annotations

import uuid

import pytest
from k3svirt_gateway import contract as c
from k3svirt_gateway.routes.pci import inventory_path, pcip_path
from k3svirt_gateway.routes.vms import vm_path

ADDR = "0000:03:00.0"


@pytest.fixture()
def node(app):
    kube = app.extensions["k3svirt.kube"]
    name = f"node-{uuid.uuid4().hex[:8]}"
    kube.post(
        inventory_path(),
        {"apiVersion": c.API_VERSION, "kind": c.INVENTORY_KIND, "metadata": {"name": name}, "spec": {}},
    )
    kube.patch(
        inventory_path(name) + "/status",
        {
            "status": {
                "iommuEnabled": True,
                "devices": [
                    {"address": ADDR, "vendorId": "8086", "deviceId": "10fb"},
                    {"address": "0000:04:00.0", "vendorId": "10de", "deviceId": "1eb8"},
                ],
            }
        },
    )
    yield name
    for p in kube.get(pcip_path()).get("items", []):
        if p["spec"].get("nodeName") == name:
            kube.delete(pcip_path(p["metadata"]["name"]))
    kube.delete(inventory_path(name))


def test_list_assign_unassign(app, client, admin, namespace, node):
    kube = app.extensions["k3svirt.kube"]
    for vm in ("gpu-vm", "other"):
        r = client.post(
            f"/api/v1/vms?namespace={namespace}", headers=admin, json={"name": vm, "spec": {"memory": {"size": "64Mi"}}}
        )
        assert r.status_code == 201
    items = client.get(f"/api/v1/pci-devices?node={node}", headers=admin).json["items"]
    assert [(i["node"], i["address"]) for i in items] == [(node, ADDR), (node, "0000:04:00.0")]
    assert "passthrough" not in items[0]
    # What the scheduler counts each device as (k3svirt_common.pci_resources).
    assert [i["resourceName"] for i in items] == ["k3svirt.io/pci-8086-10fb", "k3svirt.io/pci-10de-1eb8"]

    r = client.post(
        f"/api/v1/pci-devices/{ADDR}/assign", headers=admin, json={"vm": "gpu-vm", "namespace": namespace, "node": node}
    )
    assert r.status_code == 200, r.json
    pname = r.json["passthrough"]
    p = kube.get(pcip_path(pname))
    assert p["spec"]["nodeName"] == node and p["spec"]["address"] == ADDR
    assert p["spec"]["assignTo"] == {"namespace": namespace, "name": "gpu-vm"}
    vm = kube.get(vm_path(namespace, "gpu-vm"))
    assert vm["spec"]["hostDevices"] == [{"name": "pci-0000-03-00-0", "pciPassthrough": pname}]
    # idempotent
    assert (
        client.post(
            f"/api/v1/pci-devices/{ADDR}/assign",
            headers=admin,
            json={"vm": "gpu-vm", "namespace": namespace, "node": node},
        ).status_code
        == 200
    )
    assert len(kube.get(vm_path(namespace, "gpu-vm"))["spec"]["hostDevices"]) == 1
    # taken
    r = client.post(
        f"/api/v1/pci-devices/{ADDR}/assign", headers=admin, json={"vm": "other", "namespace": namespace, "node": node}
    )
    assert r.status_code == 409
    items = client.get(f"/api/v1/pci-devices?node={node}", headers=admin).json["items"]
    assert items[0]["passthrough"]["name"] == pname
    assert items[0]["assignedTo"] == {"name": "gpu-vm", "namespace": namespace}
    assert "heldBy" not in items[0]  # reserved for gpu-vm, held by nobody until its operator claims it
    kube.patch(
        pcip_path(pname) + "/status",
        {"status": {"phase": "Assigned", "assignedTo": {"namespace": namespace, "name": "gpu-vm"}}},
    )
    held = client.get(f"/api/v1/pci-devices?node={node}", headers=admin).json["items"][0]
    assert held["heldBy"] == {"name": "gpu-vm", "namespace": namespace}

    r = client.post(f"/api/v1/pci-devices/{ADDR}/unassign", headers=admin, json={"node": node})
    assert r.status_code == 200, r.json
    assert "hostDevices" not in kube.get(vm_path(namespace, "gpu-vm"))["spec"]
    assert client.get(f"/api/v1/pci-devices?node={node}", headers=admin).json["items"][0].get("passthrough") is None


def test_assign_errors(client, admin, namespace, node):
    client.post(
        f"/api/v1/vms?namespace={namespace}", headers=admin, json={"name": "v", "spec": {"memory": {"size": "64Mi"}}}
    )
    body = {"vm": "v", "namespace": namespace, "node": node}
    assert client.post("/api/v1/pci-devices/0000:09:00.0/assign", headers=admin, json=body).status_code == 404
    assert client.post("/api/v1/pci-devices/zz/assign", headers=admin, json=body).status_code == 422
    assert (
        client.post(f"/api/v1/pci-devices/{ADDR}/assign", headers=admin, json={**body, "vm": "ghost"}).status_code
        == 404
    )
    assert (
        client.post(
            f"/api/v1/pci-devices/{ADDR}/assign", headers=admin, json={**body, "node": "no-such-node"}
        ).status_code
        == 404
    )
    assert client.post(f"/api/v1/pci-devices/{ADDR}/unassign", headers=admin, json={"node": node}).status_code == 404
    assert client.post(f"/api/v1/pci-devices/{ADDR}/assign", headers=admin, json={"vm": "v"}).status_code == 422
