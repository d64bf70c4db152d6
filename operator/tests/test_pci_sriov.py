"""SR-IOV virtual functions from a PCIVirtualFunctionPolicy, on a fixture sysfs whose fake kernel
creates and destroys VFs when sriov_numvfs is written the way Linux does (0 -> N, N -> 0, else EBUSY)."""

from __future__ import annotations

import pytest
from fixtures.sysfs.pci_fakesys import FakeHost, FakeKernel  # operator/tests is on sys.path
from k3svirt_common import pci_resources
from k3svirt_operator.pci import discovery, reconcile_passthrough, sriov

PF = "0000:07:00.0"


@pytest.fixture
def host(tmp_path):
    h = FakeHost(tmp_path)
    h.add_pci("0000:00:1c.6", "pci0000:00", "8086", "54be", "060400", driver="pcieport", group=20)
    h.add_pci(PF, "pci0000:00/0000:00:1c.6", "8086", "10c9", "020000", driver="igb", group=21)
    h.make_sriov_capable(PF, 7, "10ca", "igbvf")
    h.add_driver("vfio-pci")
    (h.proc / "cmdline").write_text("intel_iommu=on iommu=pt\n")
    (h.proc / "net/route").write_text("Iface\tDestination\tGateway\tFlags\n")
    return h


def _policy(n=2, namespaces=("lab",)):
    return {
        "metadata": {"name": "uplink", "uid": "u-1"},
        "spec": {"nodeName": "n1", "physicalFunction": PF, "numVfs": n, "namespaces": list(namespaces)},
    }


def _pf(host):
    return discovery.read_device(host.sys, PF)


def test_vfs_are_created_offered_and_counted(host):
    kernel = FakeKernel(host)
    policy = _policy()
    vf_plan = sriov.plan(policy["spec"], _pf(host))
    assert vf_plan == sriov.VFPlan([2], 7)
    vfs = sriov.apply(host.sys, PF, vf_plan, write=kernel.write)
    assert vfs == ["0000:07:10.0", "0000:07:10.1"]
    assert [v for p, v in kernel.writes if p.endswith("sriov_numvfs")] == ["2"]
    # No host driver probed them (autoprobe off before the VFs came): nothing can take them off vfio-pci.
    assert (host.dev_dir(PF) / "sriov_drivers_autoprobe").read_text().strip() == "0"
    assert [host.driver_of(vf) for vf in vfs] == [None, None]
    kids = sriov.children(policy, vfs)
    assert [k["metadata"]["name"] for k in kids] == ["uplink-vf0", "uplink-vf1"]
    assert kids[0]["spec"] == {"nodeName": "n1", "address": "0000:07:10.0", "namespaces": ["lab"]}
    assert kids[0]["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    st = sriov.status({}, 3, _pf(host), vfs, "uplink")
    assert st["phase"] == "Ready" and st["numVfs"] == 2 and st["totalVfs"] == 7
    assert st["virtualFunctions"][1] == {"index": 1, "address": "0000:07:10.1", "passthrough": "uplink-vf1"}

    # Each VF is an ordinary PCIPassthrough: bound to vfio-pci, then counted as its own kind.
    bound = reconcile_passthrough(kids[0]["spec"], {}, sys_root=host.sys, proc_root=host.proc, write=kernel.write)
    assert bound["phase"] == "Bound" and host.driver_of("0000:07:10.0") == "vfio-pci", bound
    objs = [{**kids[0], "status": bound}]
    assert pci_resources.node_capacity(objs, "n1") == {"k3svirt.io/pci-8086-10ca": 1}
    assert sriov.plan(policy["spec"], _pf(host)) == sriov.VFPlan([], 7)  # as wanted: nothing to write


def test_changing_the_count_recreates_vfs_unless_a_vm_holds_one(host):
    kernel = FakeKernel(host)
    sriov.apply(host.sys, PF, sriov.plan(_policy(2)["spec"], _pf(host)), write=kernel.write)
    refused = sriov.plan(_policy(4)["spec"], _pf(host), held=["uplink-vf1"])
    assert isinstance(refused, sriov.Refusal) and refused.reason == "VFsInUse"
    assert "uplink-vf1" in refused.message and "from 2 to 4" in refused.message
    vf_plan = sriov.plan(_policy(4)["spec"], _pf(host))
    assert vf_plan.writes == [0, 4]  # the kernel takes N -> 0 -> M only
    assert len(sriov.apply(host.sys, PF, vf_plan, write=kernel.write)) == 4
    assert sriov.apply(host.sys, PF, sriov.VFPlan([0], 7), write=kernel.write) == []
    assert not list(host.dev_dir(PF).glob("virtfn*"))


@pytest.mark.parametrize(
    "setup,spec,reason",
    [
        (lambda h: None, {"physicalFunction": "0000:09:00.0", "numVfs": 1}, "PhysicalFunctionNotFound"),
        (lambda h: None, {"physicalFunction": PF, "numVfs": 8}, "TooManyVFs"),
        (
            lambda h: (h.detach(PF), h.attach(PF, "vfio-pci")),
            {"physicalFunction": PF, "numVfs": 1},
            "PhysicalFunctionOnVFIO",
        ),
        (
            lambda h: (h.dev_dir(PF) / "sriov_totalvfs").unlink(),
            {"physicalFunction": PF, "numVfs": 1},
            "NotSRIOVCapable",
        ),
    ],
    ids=["absent", "too-many", "pf-on-vfio", "no-sriov"],
)
def test_refusals_name_the_pf_and_what_to_do(host, setup, spec, reason):
    setup(host)
    got = sriov.plan(spec, discovery.read_device(host.sys, spec["physicalFunction"]))
    assert isinstance(got, sriov.Refusal) and got.reason == reason, got
    assert spec["physicalFunction"] in got.message
    st = sriov.status({}, 1, None, got, "uplink")
    assert st["phase"] == "Failed" and st["conditions"][0]["reason"] == reason


def test_a_vf_of_another_pf_is_not_a_pf(host):
    kernel = FakeKernel(host)
    sriov.apply(host.sys, PF, sriov.VFPlan([1], 7), write=kernel.write)
    got = sriov.plan({"physicalFunction": "0000:07:10.0", "numVfs": 1}, discovery.read_device(host.sys, "0000:07:10.0"))
    assert isinstance(got, sriov.Refusal) and got.reason == "NotSRIOVCapable" and PF in got.message


def test_a_kernel_that_refuses_the_write_is_reported(host):
    def busy(path, value):
        raise OSError(16, "Device or resource busy")

    got = sriov.apply(host.sys, PF, sriov.VFPlan([2], 7), write=busy)
    assert isinstance(got, sriov.Refusal) and got.reason == "SetNumVFsFailed" and "sriov_numvfs" in got.message


def test_vfs_that_never_appear_are_reported(host):
    got = sriov.apply(host.sys, PF, sriov.VFPlan([2], 7), write=lambda p, v: None, timeout=0.3)
    assert isinstance(got, sriov.Refusal) and got.reason == "VFsDidNotAppear"


def test_autoprobe_is_back_on_once_the_vfs_are_gone(host):
    kernel = FakeKernel(host)
    vfs = sriov.apply(host.sys, PF, sriov.VFPlan([2], 7), write=kernel.write)
    assert len(vfs) == 2
    assert sriov.apply(host.sys, PF, sriov.VFPlan([0], 7), write=kernel.write) == []
    assert (host.dev_dir(PF) / "sriov_drivers_autoprobe").read_text().strip() == "1"
