"""Passthrough devices as extended resources: names, what a node offers, the Node status patch, and
what a VM's reservation requests."""

from __future__ import annotations

import pytest
from k3svirt_common import pci_resources as pr
from k3svirt_common import reservation as rsv


def _pcip(name, node="n1", phase="Bound", vendor="8086", device="10fb", deleting=False, holder=None):
    meta = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    status = {"phase": phase, "vendorId": vendor, "deviceId": device, "address": f"0000:0{name[-1]}:00.0"}
    if holder:
        status["assignedTo"] = {"namespace": "t", "name": holder}
    return {"metadata": meta, "spec": {"nodeName": node}, "status": status}


@pytest.mark.parametrize(
    "vendor,device,want",
    [
        ("8086", "10fb", "k3svirt.io/pci-8086-10fb"),
        ("0x8086", "0x10FB", "k3svirt.io/pci-8086-10fb"),  # sysfs' own spelling
        ("808", "10fb", None),
        ("8086", None, None),
        ("8086", "10fb\n", None),
        ("80861", "10fb", None),
        ("../x", "10fb", None),
    ],
)
def test_resource_name_only_from_four_hex_digits(vendor, device, want):
    assert pr.resource_name(vendor, device) == want


def test_node_offers_its_bound_and_assigned_devices_per_kind():
    pcips = [
        _pcip("a1"),
        _pcip("a2", phase="Assigned", holder="vm1"),
        _pcip("a3", phase="Pending"),  # not bound yet: not offered
        _pcip("a4", phase="Failed"),
        _pcip("a5", deleting=True),  # going back to its host driver
        _pcip("a6", node="n2"),  # another node's
        _pcip("a7", vendor="15b3", device="1017"),
        _pcip("a8", vendor=None),  # unresolved: nothing to name it by
    ]
    assert pr.node_capacity(pcips, "n1") == {"k3svirt.io/pci-8086-10fb": 2, "k3svirt.io/pci-15b3-1017": 1}
    assert pr.node_capacity(pcips, "n2") == {"k3svirt.io/pci-8086-10fb": 1}
    assert pr.node_capacity(pcips, "n3") == {}


def test_capacity_patch_sets_ours_removes_stale_and_leaves_the_rest():
    status = {
        "capacity": {"cpu": "2", "memory": "8Gi", "k3svirt.io/pci-8086-10fb": "2", "k3svirt.io/pci-15b3-1017": "1"},
        "allocatable": {"cpu": "2", "k3svirt.io/pci-8086-10fb": "2", "k3svirt.io/pci-15b3-1017": "1"},
    }
    patch = pr.capacity_patch(status, {"k3svirt.io/pci-8086-10fb": 3})
    want = {"k3svirt.io/pci-8086-10fb": "3", "k3svirt.io/pci-15b3-1017": None}
    assert patch == {"status": {"capacity": want, "allocatable": want}}
    # Nothing to do once they agree; a node without any of ours and nothing offered needs nothing.
    done = {"capacity": {"cpu": "2", "k3svirt.io/pci-8086-10fb": "3"}, "allocatable": {"k3svirt.io/pci-8086-10fb": 3}}
    assert pr.capacity_patch(done, {"k3svirt.io/pci-8086-10fb": 3}) is None
    assert pr.capacity_patch({"capacity": {"cpu": "2"}}, {}) is None


def test_capacity_patch_repairs_a_kubelet_that_zeroed_them():
    status = {"capacity": {"k3svirt.io/pci-8086-10fb": "0"}, "allocatable": {"k3svirt.io/pci-8086-10fb": "0"}}
    want = {"k3svirt.io/pci-8086-10fb": "2"}
    assert pr.capacity_patch(status, {"k3svirt.io/pci-8086-10fb": 2}) == {
        "status": {"capacity": want, "allocatable": want}
    }


def test_a_vm_requests_one_unit_per_named_device():
    pcips = [_pcip("a1"), _pcip("a2"), _pcip("b1", vendor="15b3", device="1017"), _pcip("c1", vendor=None)]
    spec = {
        "hostDevices": [
            {"name": "wan", "pciPassthrough": "a1"},
            {"name": "lan", "pciPassthrough": "a2"},
            {"name": "ib", "pciPassthrough": "b1"},
            {"name": "x", "pciPassthrough": "c1"},  # unresolved: its claim refuses it
            {"name": "y", "pciPassthrough": "missing"},
        ]
    }
    assert pr.device_requests(spec, pcips) == {"k3svirt.io/pci-8086-10fb": 2, "k3svirt.io/pci-15b3-1017": 1}
    assert pr.device_requests({}, pcips) == {}


def test_reservation_requests_and_limits_carry_the_devices():
    spec = {"memory": {"size": "1Gi"}, "cpu": {"cores": 2}, "hostDevices": [{"name": "wan", "pciPassthrough": "a1"}]}
    res = rsv.resources(spec, emulated=False, devices={"k3svirt.io/pci-8086-10fb": 1})
    assert res["k3svirt.io/pci-8086-10fb"] == "1" and res["cpu"] == "2"
    pod = rsv.pod_body("t", "vpp", "uid-1", "n1", res)
    limits = pod["spec"]["containers"][0]["resources"]
    assert limits["requests"] == limits["limits"] == res  # extended resources: requests must equal limits
    assert rsv.holds(pod, res) and not rsv.holds(pod, rsv.resources(spec, emulated=False))
