"""A VM asking for a passthrough device by kind (`hostDevices[].resource`): which device the node
picks, what it refuses, and that two VMs racing for the last one never both get it."""

from __future__ import annotations

import threading

import pytest
from k3svirt_common import pci_resources
from k3svirt_operator.pci import Claims, HostDeviceResolutionError, resolve_host_devices

NODE = "n305"
KIND = "k3svirt.io/pci-8086-10fb"


def _pcip(name, address, *, node=NODE, phase="Bound", holder=None, namespaces=("t",), device="10fb", group=None):
    status = {
        "phase": phase,
        "address": address,
        "vendorId": "8086",
        "deviceId": device,
        "iommuGroup": group if group is not None else int(address[5:7], 16),
        "groupMembers": [{"address": address, "driver": "vfio-pci"}],
    }
    if holder:
        status["assignedTo"] = {"namespace": holder.split("/")[0], "name": holder.split("/")[1]}
    return {"metadata": {"name": name}, "spec": {"nodeName": node, "namespaces": list(namespaces)}, "status": status}


def _spec(*entries):
    return {"hostDevices": list(entries)}


def test_the_first_free_device_of_the_kind_by_name():
    objs = [_pcip("p-b", "0000:04:00.0"), _pcip("p-a", "0000:03:00.0"), _pcip("x", "0000:05:00.0", device="1572")]
    (got,) = resolve_host_devices(_spec({"name": "wan", "resource": KIND}), objs, NODE, vm_namespace="t", vm_name="r")
    assert (got.name, got.passthrough, got.address) == ("wan", "p-a", "0000:03:00.0")


def test_a_device_the_vm_holds_already_is_kept():
    objs = [_pcip("p-a", "0000:03:00.0"), _pcip("p-b", "0000:04:00.0", phase="Assigned", holder="t/r")]
    (got,) = resolve_host_devices(_spec({"name": "wan", "resource": KIND}), objs, NODE, vm_namespace="t", vm_name="r")
    assert got.passthrough == "p-b"  # stable across passes: never swapped under a defined domain


def test_named_entries_are_served_first_and_never_shared():
    objs = [_pcip("p-a", "0000:03:00.0"), _pcip("p-b", "0000:04:00.0")]
    spec = _spec({"name": "any", "resource": KIND}, {"name": "wan", "pciPassthrough": "p-a"})
    got = resolve_host_devices(spec, objs, NODE, vm_namespace="t", vm_name="r")
    assert [(d.name, d.passthrough) for d in got] == [("any", "p-b"), ("wan", "p-a")]  # in the spec's order


@pytest.mark.parametrize(
    "objs,expect",
    [
        ([], "none here"),
        ([_pcip("p-a", "0000:03:00.0", phase="Assigned", holder="t/other")], "p-a (t/other)"),
        ([_pcip("p-a", "0000:03:00.0", namespaces=("elsewhere",))], "p-a (not usable by this VM)"),
        ([_pcip("p-a", "0000:03:00.0", phase="Failed")], "p-a (not usable by this VM)"),
        ([_pcip("p-a", "0000:03:00.0", node="edge2")], "none here"),
    ],
    ids=["none", "held", "not-open", "failed", "other-node"],
)
def test_no_free_device_of_the_kind_is_refused_with_what_there_is(objs, expect):
    with pytest.raises(HostDeviceResolutionError) as err:
        resolve_host_devices(_spec({"name": "wan", "resource": KIND}), objs, NODE, vm_namespace="t", vm_name="r")
    (e,) = err.value.errors
    assert e.reason == "NoFreeDevice" and e.name == "wan"
    assert f"no free {KIND} on node {NODE} for VM t/r" in e.message and expect in e.message, e.message


def test_the_reservation_asks_for_one_unit_per_kind_entry():
    objs = [_pcip("p-a", "0000:03:00.0")]
    spec = _spec(
        {"name": "a", "resource": KIND}, {"name": "b", "resource": KIND}, {"name": "c", "pciPassthrough": "p-a"}
    )
    assert pci_resources.device_requests(spec, objs) == {KIND: 3}


def test_two_vms_racing_for_the_last_device_never_both_get_it():
    """Both VMs' passes run at once (kopf's worker threads) against the same indexed objects; the
    claim of the first is laid over the index for the second until the watch shows it."""
    objs = [_pcip("p-a", "0000:03:00.0", phase="Assigned", holder="t/first"), _pcip("p-b", "0000:04:00.0")]
    for _ in range(50):
        claims = Claims()
        start = threading.Barrier(2)
        won: dict[str, object] = {}

        def race(vm: str, claims: Claims = claims, start: threading.Barrier = start, won: dict = won) -> None:
            start.wait()
            try:
                won[vm] = claims.assign(
                    objs, NODE, {"namespace": "t", "name": vm}, _spec({"name": "nic", "resource": KIND})
                )
            except HostDeviceResolutionError as exc:
                won[vm] = exc

        threads = [threading.Thread(target=race, args=(vm,)) for vm in ("r1", "r2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [vm for vm, got in won.items() if not isinstance(got, Exception)]
        assert len(winners) == 1, won
        loser = next(got for got in won.values() if isinstance(got, Exception))
        assert loser.errors[0].reason == "NoFreeDevice" and "p-b (t/" in loser.errors[0].message
        assert won[winners[0]].devices == {"nic": "0000:04:00.0"}
