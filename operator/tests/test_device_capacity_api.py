"""Publishing passthrough devices on the Node against the test bed's real API server: the merge patch
of nodes/status sets our extended resources, removes the ones no longer offered, and leaves every
other resource alone (tests/e2e/test_pci_capacity.py has the real kubelet and scheduler)."""

from __future__ import annotations

import uuid

import pytest
from k3svirt_common.kube import ApiError, Client, core_path, from_kubeconfig
from k3svirt_operator import device_capacity


@pytest.fixture(scope="module")
def api(kubeconfig: str) -> Client:
    return Client(from_kubeconfig(kubeconfig))


@pytest.fixture
def node(api: Client):
    """A Node object with ordinary capacity (as a kubelet would have registered it)."""
    name = f"t-devcap-{uuid.uuid4().hex[:8]}"
    api.create(core_path("nodes"), {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    res = {"cpu": "2", "memory": "8Gi", "pods": "110", "example.com/dongle": "4"}
    api.patch(core_path("nodes", name=name, sub="status"), {"status": {"capacity": res, "allocatable": res}})
    yield name
    api.delete(core_path("nodes", name=name))


def _pcip(name: str, node: str, phase: str = "Bound", device: str = "10fb") -> dict:
    return {
        "metadata": {"name": name},
        "spec": {"nodeName": node},
        "status": {"phase": phase, "vendorId": "8086", "deviceId": device},
    }


def _status(api: Client, node: str) -> dict:
    return api.get(core_path("nodes", name=node))["status"]


def test_capacity_follows_the_devices_and_touches_nothing_else(api, node):
    pcips = [_pcip("a", node), _pcip("b", node, "Assigned"), _pcip("c", node, device="1572"), _pcip("d", "other")]
    assert device_capacity.publish(api, node, pcips) == {"k3svirt.io/pci-8086-10fb": 2, "k3svirt.io/pci-8086-1572": 1}
    st = _status(api, node)
    for field in ("capacity", "allocatable"):
        assert st[field]["k3svirt.io/pci-8086-10fb"] == "2" and st[field]["k3svirt.io/pci-8086-1572"] == "1"
        assert st[field]["cpu"] == "2" and st[field]["example.com/dongle"] == "4"  # not ours: untouched

    # The 1572 goes (deleted), one 10fb fails: the books follow, the other kinds stay.
    assert device_capacity.publish(api, node, [_pcip("a", node), _pcip("b", node, "Failed")]) == {
        "k3svirt.io/pci-8086-10fb": 1
    }
    st = _status(api, node)
    for field in ("capacity", "allocatable"):
        assert st[field]["k3svirt.io/pci-8086-10fb"] == "1" and "k3svirt.io/pci-8086-1572" not in st[field]
        assert st[field]["memory"] == "8Gi" and st[field]["example.com/dongle"] == "4"

    before = api.get(core_path("nodes", name=node))["metadata"]["resourceVersion"]
    device_capacity.publish(api, node, [_pcip("a", node)])  # nothing changed: no write
    assert api.get(core_path("nodes", name=node))["metadata"]["resourceVersion"] == before

    device_capacity.publish(api, node, [])
    st = _status(api, node)
    assert not [k for k in st["capacity"] if k.startswith("k3svirt.io/")], st


def test_no_node_object_no_publication(api):
    assert device_capacity.publish(api, f"t-absent-{uuid.uuid4().hex[:6]}", [_pcip("a", "x")]) is None


def test_api_errors_other_than_404_are_raised(api, node, monkeypatch):
    def refuse(*_a, **_k):
        raise ApiError(503, "ServiceUnavailable", "the API server is shutting down")

    monkeypatch.setattr(api, "patch", refuse)
    with pytest.raises(ApiError):
        device_capacity.publish(api, node, [_pcip("a", node)])
