"""PCI passthrough: discovery, host safety, VFIO binding and assignment over a sysfs-shaped fixture."""

from __future__ import annotations

import pytest
from fixtures.sysfs import pci_fakesys as fakesys  # operator/tests is on sys.path
from k3svirt_operator import pci
from k3svirt_operator.config import Settings
from k3svirt_operator.pci import binding, discovery, pciids, safety

X520_0, X520_1, ROOT_PORT = "0000:03:00.0", "0000:03:00.1", "0000:00:1c.0"
GPU, NVME, HOST_NIC, PF, VF0, IDLE_NIC = (
    "0000:00:02.0",
    "0000:04:00.0",
    "0000:01:00.0",
    "0000:05:00.0",
    "0000:05:02.0",
    "0000:06:00.0",
)


@pytest.fixture
def host(tmp_path, monkeypatch):
    h = fakesys.build_n305(tmp_path)
    monkeypatch.setenv("K3SVIRT_PCI_IDS", str(tmp_path / "pci.ids"))
    monkeypatch.delenv(safety.DENYLIST_ENV, raising=False)
    monkeypatch.delenv(safety.DENYLIST_FILE_ENV, raising=False)
    return h


def _inv(h):
    """The inventory with the pci.ids the operator's settings name (read from the environment)."""
    return discovery.inventory(h.sys, pciids.load_pci_ids(Settings.from_env().pci.ids_file))


def _by(h):
    return {d["address"]: d for d in _inv(h)}


def _plan(h, address, **kw):
    inv = _inv(h)
    dev = next(d for d in inv if d["address"] == address)
    return binding.plan_bind(dev, inv, safety.gather_host_facts(h.sys, h.proc), kw.pop("denylist", ()), **kw)


# Discovery -------------------------------------------------------------------------------------


def test_inventory_reads_ids_names_groups_and_drivers(host):
    devs = _by(host)
    x = devs[X520_0]
    assert x["vendorId"] == "8086" and x["deviceId"] == "10fb"
    assert x["subsystemVendorId"] == "8086" and x["subsystemDeviceId"] == "000c"
    assert x["vendorName"] == "Intel Corporation"
    assert x["deviceName"] == "82599ES 10-Gigabit SFI/SFP+ Network Connection"
    assert x["subsystemName"] == "Ethernet Server Adapter X520-2"
    assert x["classId"] == "020000" and x["className"] == "Ethernet controller"
    assert x["driver"] == "ixgbe" and x["driverOverride"] is None
    assert x["iommuGroup"] == 2
    assert x["iommuGroupMembers"] == [ROOT_PORT, X520_0, X520_1]
    assert x["numaNode"] == 0 and x["isBridge"] is False and x["parent"] == ROOT_PORT
    assert x["netInterfaces"] == ["enp3s0f0"] and x["resetSupported"] is True
    assert devs[ROOT_PORT]["isBridge"] is True and devs[ROOT_PORT]["className"] == "PCI bridge"
    assert devs["0000:00:00.0"]["driver"] is None and devs["0000:00:00.0"]["className"] == "Host bridge"
    assert devs[GPU]["driver"] == "i915" and devs[GPU]["numaNode"] is None
    assert devs[NVME]["className"] == "Non-Volatile memory controller"
    assert devs[PF]["sriov"] == {"totalVFs": 64, "numVFs": 2, "virtfns": [VF0, "0000:05:02.1"]}
    assert devs[VF0]["physfn"] == PF and devs[VF0]["sriov"] is None
    assert [d["address"] for d in _inv(host)] == sorted(devs)


def test_inventory_without_pci_ids_keeps_builtin_class_names(host, monkeypatch):
    monkeypatch.setenv("K3SVIRT_PCI_IDS", str(host.root / "missing.ids"))
    monkeypatch.setattr(pciids, "DEFAULT_PATHS", ())
    x = _by(host)[X520_0]
    assert x["deviceName"] is None and x["className"] == "Ethernet controller"


def test_sysfs_root_comes_from_the_environment(host, monkeypatch):
    monkeypatch.setenv("K3SVIRT_SYSFS_ROOT", str(host.sys))
    assert X520_1 in [d["address"] for d in pci.inventory(Settings.from_env().pci.sys_root)]


def test_pci_ids_parser_handles_classes_and_subsystems():
    ids = pciids.parse_pci_ids(fakesys.PCI_IDS_SNIPPET)
    assert ids.device_name("8086", "125c") == "Ethernet Controller I226-V"
    assert ids.class_name("060400") == "PCI bridge" and ids.class_name("0c0330") == "USB controller"
    assert ids.class_name("ff0000") == "Unassigned class"


def test_indexed_pci_ids_answer_as_the_whole_parse(tmp_path):
    """The operator reads pci.ids per vendor block (IndexedPciIds): same names as parsing it all."""
    path = tmp_path / "pci.ids"
    path.write_text(fakesys.PCI_IDS_SNIPPET + "\nffff  Illegal Vendor ID\n")
    whole, lazy = pciids.parse_pci_ids(path.read_text()), pciids.IndexedPciIds(str(path))
    assert whole.devices and whole.subsystems and whole.classes
    for v, name in whole.vendors.items():
        assert lazy.vendor_name(v.upper()) == name
    for (v, d), name in whole.devices.items():
        assert lazy.device_name(v, d) == name
    for (v, d, sv, sd), name in whole.subsystems.items():
        assert lazy.subsystem_name(v, d, sv, sd) == name
    assert lazy.classes == whole.classes and lazy.class_name("060400") == "PCI bridge"
    assert lazy.device_name("0bad", "0001") is None and lazy.vendor_name(None) is None
    assert pciids.load_pci_ids(str(path)).device_name("8086", "125c") == "Ethernet Controller I226-V"


def test_address_helpers():
    assert pci.normalize_address("03:00.1") == "0000:03:00.1"
    assert pci.address_parts("0000:03:00.1") == {"domain": "0x0000", "bus": "0x03", "slot": "0x00", "function": "0x1"}
    with pytest.raises(ValueError):
        pci.normalize_address("03:00")


def test_node_inventory_status(host):
    st = pci.node_inventory_status(host.sys, host.proc, denylist=(), now="2025-01-01T00:00:00Z")
    assert st["iommuEnabled"] is True and st["iommuGroupCount"] == 14 and st["vfioPciLoaded"] is True
    assert st["cpuVendor"] == "GenuineIntel" and st["updatedAt"] == "2025-01-01T00:00:00Z"
    assert st["kernelCmdline"] == {
        "flags": ["intel_iommu=on", "iommu=pt", "hugepages=512", "isolcpus=2-7"],
        "intelIommuOn": True,
        "iommuPassthrough": True,
    }
    assert st["conditions"][0]["type"] == "IOMMUReady" and st["conditions"][0]["status"] == "True"
    use = {d["address"]: d["hostUse"] for d in st["devices"]}
    assert "default route" in use[HOST_NIC][0] and "br0" in use[HOST_NIC][0]
    assert "root filesystem" in use[NVME][0]
    assert use[X520_0] == [] and use[GPU] == []


# Host facts ------------------------------------------------------------------------------------


def test_host_facts_find_default_route_nic_through_bridge_and_root_disk(host):
    f = safety.gather_host_facts(host.sys, host.proc)
    assert safety.default_route_interfaces(host.proc) == ["br0"]
    assert set(f.critical) == {HOST_NIC, NVME}
    assert f.iommu_enabled and f.is_intel and f.intel_iommu_on
    assert "vfio-pci" in f.drivers


def test_other_mounts_swap_and_bridge_members_are_busy(host):
    fakesys._link(host.sys / "class/net/enp6s0/master", host.sys / "devices/virtual/net/br0")
    f = safety.gather_host_facts(host.sys, host.proc)
    assert "enslaved to br0" in f.busy[IDLE_NIC]
    assert NVME not in f.busy  # critical wins over busy


def test_denylist_parsing_and_matching(monkeypatch, tmp_path):
    (tmp_path / "deny").write_text("# comment\n8086:46d0\nclass:0c03  # usb\n")
    env = {safety.DENYLIST_ENV: "03:00.1, 0000:00:1f.0", safety.DENYLIST_FILE_ENV: str(tmp_path / "deny")}
    deny = safety.load_denylist(env)
    assert deny == ("0000:03:00.1", "0000:00:1f.0", "8086:46d0", "class:0c03")
    assert safety.denylist_match({"address": "0000:00:02.0", "vendorId": "8086", "deviceId": "46d0"}, deny)
    assert safety.denylist_match({"address": "0000:00:14.0", "classId": "0c0330"}, deny) == "class:0c03"
    assert safety.denylist_match({"address": "0000:03:00.0", "vendorId": "8086", "deviceId": "10fb"}, deny) is None


# Planning and refusals -------------------------------------------------------------------------


def test_plan_binds_the_whole_group_except_the_bridge(host):
    plan = _plan(host, X520_0, claimed={X520_1: "x520-p1"})
    assert plan.ok and plan.iommu_group == 2 and plan.original_driver == "ixgbe"
    assert [t.address for t in plan.targets] == [X520_0, X520_1]
    assert plan.endpoint_addresses == [X520_0, X520_1]
    assert [m.exempt for m in plan.group_members] == [True, False, False]


def test_partial_group_is_refused_under_strict_policy(host):
    r = _plan(host, X520_0)
    assert not r.ok and r.reason == "PartialGroup" and X520_1 in r.message and "ixgbe" in r.message
    assert _plan(host, X520_0, group_policy="BindGroup").ok


def test_host_nic_carrying_default_route_is_host_critical(host):
    r = _plan(host, HOST_NIC)
    assert r.reason == "HostCritical" and "default route" in r.message and "br0" in r.message


def test_root_disk_controller_is_host_critical(host):
    r = _plan(host, NVME)
    assert r.reason == "HostCritical" and "root filesystem" in r.message


def test_group_sharing_a_host_critical_device_is_refused_even_with_bindgroup(host):
    # A board without ACS: the host NIC shares the 82599's group.
    grp = host.sys / "kernel/iommu_groups/2/devices"
    fakesys._link(grp / HOST_NIC, host.dev_dir(HOST_NIC))
    fakesys._link(host.dev_dir(HOST_NIC) / "iommu_group", host.sys / "kernel/iommu_groups/2")
    r = _plan(host, X520_0, group_policy="BindGroup")
    assert r.reason == "HostCritical" and HOST_NIC in r.message and "shares IOMMU group 2" in r.message


def test_denylisted_device_is_host_critical(host):
    r = _plan(host, GPU, denylist=("8086:46d0",))
    assert r.reason == "HostCritical" and "denylisted" in r.message


def test_iommu_disabled_and_intel_iommu_missing_from_cmdline(tmp_path):
    h = fakesys.build_n305(tmp_path / "a", iommu=False, cmdline="root=/dev/nvme0n1p2 quiet")
    r = _plan(h, GPU)
    assert r.reason == "IntelIOMMUMissingFromCmdline" and "intel_iommu=on" in r.message
    h2 = fakesys.build_n305(tmp_path / "b", iommu=False)  # flag present, VT-d off in firmware
    r2 = _plan(h2, GPU)
    assert r2.reason == "IOMMUDisabled" and "firmware" in r2.message
    h3 = fakesys.build_n305(tmp_path / "c", iommu=False, cpu_vendor="AuthenticAMD", cmdline="quiet")
    assert _plan(h3, GPU).reason == "IOMMUDisabled"
    st = pci.node_inventory_status(h.sys, h.proc, denylist=())
    assert st["iommuEnabled"] is False and st["conditions"][0]["reason"] == "IntelIOMMUMissingFromCmdline"
    assert all(d["iommuGroup"] is None for d in st["devices"])


def test_sriov_pf_with_vfs_enabled_is_busy_but_a_vf_is_fine(host):
    r = _plan(host, PF)
    assert r.reason == "DeviceBusy" and "sriov_numvfs" in r.message
    plan = _plan(host, VF0)
    assert plan.ok and [t.address for t in plan.targets] == [VF0]


def test_bridges_claimed_devices_and_missing_driver_are_refused(host, tmp_path):
    assert _plan(host, ROOT_PORT).reason == "UnsupportedDevice"
    assert _plan(host, GPU, claimed={GPU: "other"}).reason == "DeviceBusy"
    h = fakesys.build_n305(tmp_path / "novfio", vfio_loaded=False)
    r = _plan(h, GPU)
    assert r.reason == "DriverNotLoaded" and "modprobe vfio-pci" in r.message


def test_select_device_by_address_and_selector(host):
    inv = _inv(host)
    assert binding.select_device({"address": "03:00.1"}, inv)["address"] == X520_1
    assert binding.select_device({"selector": {"vendor": "8086", "device": "10fb"}}, inv)["address"] == X520_0
    assert (
        binding.select_device({"selector": {"vendor": "0x8086", "device": "10FB", "index": 1}}, inv)["address"]
        == X520_1
    )
    assert (
        binding.select_device({"selector": {"vendor": "8086", "device": "10fb", "index": 2}}, inv).reason
        == "DeviceNotFound"
    )
    assert binding.select_device({"address": "0000:09:00.0"}, inv).reason == "DeviceNotFound"
    assert binding.select_device({}, inv).reason == "InvalidSpec"


# Executor (through the fake kernel shim) -------------------------------------------------------


def test_bind_writes_the_sysfs_protocol_in_order_and_restore_undoes_it(host):
    k = fakesys.FakeKernel(host)
    plan = _plan(host, GPU)
    originals = binding.bind(plan, host.sys, write=k.write)
    assert originals == {GPU: "i915"}
    assert k.writes == [
        (f"bus/pci/devices/{GPU}/driver_override", "vfio-pci"),
        ("bus/pci/drivers/i915/unbind", GPU),
        ("bus/pci/drivers_probe", GPU),
    ]
    assert host.driver_of(GPU) == "vfio-pci" and host.override_of(GPU) == "vfio-pci"
    assert _by(host)[GPU]["driverOverride"] == "vfio-pci"
    k.writes.clear()
    assert binding.restore(originals, host.sys, write=k.write) == {GPU: "i915"}
    assert k.writes == [
        (f"bus/pci/devices/{GPU}/driver_override", "\n"),
        ("bus/pci/drivers/vfio-pci/unbind", GPU),
        ("bus/pci/drivers_probe", GPU),
    ]
    assert host.driver_of(GPU) == "i915" and host.override_of(GPU) == "(null)"


def test_bind_falls_back_to_explicit_bind_and_restore_to_original_driver(host):
    class NoProbe(fakesys.FakeKernel):
        def write(self, path, value):
            if path.name == "drivers_probe":  # e.g. an old kernel / autoprobe off: nothing happens
                self.writes.append(("bus/pci/drivers_probe", value))
                return
            super().write(path, value)

    k = NoProbe(host)
    binding.bind(_plan(host, GPU), host.sys, write=k.write)
    assert k.writes[-1] == ("bus/pci/drivers/vfio-pci/bind", GPU) and host.driver_of(GPU) == "vfio-pci"
    k.writes.clear()
    binding.restore({GPU: "i915"}, host.sys, write=k.write)
    assert k.writes[-1] == ("bus/pci/drivers/i915/bind", GPU) and host.driver_of(GPU) == "i915"


def test_bind_failure_rolls_back_the_group(host):
    k = fakesys.FakeKernel(host, refuse_probe={X520_1})
    plan = _plan(host, X520_0, group_policy="BindGroup")
    with pytest.raises(binding.BindError) as e:
        binding.bind(plan, host.sys, write=k.write)
    assert e.value.reason == "BindFailed" and X520_1 in e.value.message
    assert host.driver_of(X520_0) == "ixgbe" and host.override_of(X520_0) == "(null)"
    assert host.override_of(X520_1) == "(null)"


def test_bind_failure_message_says_where_the_devices_are_now(host):
    class VfioRefuses(fakesys.FakeKernel):
        """vfio-pci will not take X520_1 (e.g. a reset quirk); ixgbe still does."""

        def write(self, path, value):
            if (
                value.strip() == X520_1
                and self.host.override_of(X520_1) == "vfio-pci"
                and (path.name == "drivers_probe" or path.parent.name == "vfio-pci")
            ):
                self.writes.append((path.name, value))
                return
            super().write(path, value)

    k = VfioRefuses(host)
    with pytest.raises(binding.BindError) as e:
        binding.bind(_plan(host, X520_0, group_policy="BindGroup"), host.sys, write=k.write)
    assert f"{X520_1} is on no driver after binding to vfio-pci" in e.value.message
    assert f"rolled back: {X520_0} is on ixgbe, {X520_1} is on ixgbe" in e.value.message
    assert host.driver_of(X520_0) == host.driver_of(X520_1) == "ixgbe"
    # a device no driver takes any more cannot be given back: the message says so and where to look
    k = fakesys.FakeKernel(host, refuse_probe={X520_1})
    with pytest.raises(binding.BindError) as e:
        binding.bind(_plan(host, X520_0, group_policy="BindGroup"), host.sys, write=k.write)
    assert f"rollback failed ({X520_1}" in e.value.message and "expected ixgbe" in e.value.message


@pytest.mark.parametrize("killed_after", ["driver_override", "unbind"])
def test_recover_interrupted_gives_a_half_bound_device_back(host, killed_after):
    """An operator killed mid-bind: the kernel's driver_override is the record of the bind in flight."""

    class Killed(Exception):
        pass

    k = fakesys.FakeKernel(host)

    def write(path, value):
        k.write(path, value)
        if path.name == killed_after:
            raise Killed

    with pytest.raises(Killed):
        binding.bind(_plan(host, GPU), host.sys, write=write)
    assert host.override_of(GPU) == "vfio-pci"
    assert host.driver_of(GPU) == (None if killed_after == "unbind" else "i915")
    assert binding.recover_interrupted(host.sys, write=k.write) == {GPU: "i915"}
    assert host.driver_of(GPU) == "i915" and host.override_of(GPU) == "(null)"
    # a finished bind is not touched
    binding.bind(_plan(host, GPU), host.sys, write=k.write)
    assert binding.recover_interrupted(host.sys, write=k.write) == {} and host.driver_of(GPU) == "vfio-pci"


def test_reconcile_first_recovers_an_interrupted_bind(host):
    k = fakesys.FakeKernel(host)
    k.write(host.dev_dir(GPU) / "driver_override", "vfio-pci")
    k.write(host.sys / "bus/pci/drivers/i915/unbind", GPU)
    assert host.driver_of(GPU) is None
    st = pci.reconcile_passthrough({"nodeName": "n305", "address": X520_0}, sys_root=host.sys, proc_root=host.proc,
                                   write=k.write)  # fmt: skip
    assert st["phase"] in ("Bound", "Failed") and host.driver_of(GPU) == "i915"


def test_bind_is_idempotent(host):
    k = fakesys.FakeKernel(host)
    binding.bind(_plan(host, GPU), host.sys, write=k.write)
    k.writes.clear()
    plan = _plan(host, GPU)
    assert plan.ok and plan.targets == ()
    assert binding.bind(plan, host.sys, write=k.write) == {} and k.writes == []


# Reconcile / release (what the handlers call) --------------------------------------------------


def _reconcile(h, k, spec, status=None, claimed=None):
    return pci.reconcile_passthrough(
        {"nodeName": "n305", **spec},
        status,
        generation=1,
        sys_root=h.sys,
        proc_root=h.proc,
        denylist=(),
        claimed=claimed,
        write=k.write,
        now="2025-01-01T00:00:00Z",
    )


def test_reconcile_two_ports_then_release_one_after_the_other(host):
    k = fakesys.FakeKernel(host)
    p0 = _reconcile(host, k, {"address": X520_0}, claimed={})
    assert p0["phase"] == "Failed" and p0["conditions"][0]["reason"] == "PartialGroup"
    # The second port's object exists too: claimed addresses make the group complete.
    p1 = _reconcile(
        host, k, {"selector": {"vendor": "8086", "device": "10fb", "index": 1}}, claimed={X520_0: "x520-p0"}
    )
    assert p1["phase"] == "Bound", p1["conditions"]
    assert host.driver_of(X520_0) == host.driver_of(X520_1) == "vfio-pci"
    assert host.driver_of(ROOT_PORT) == "pcieport"
    assert p1["address"] == X520_1 and p1["iommuGroup"] == 2 and p1["originalDriver"] == "ixgbe"
    assert p1["observedGeneration"] == 1 and p1["printableStatus"] == "Bound"
    assert {m["address"]: m["originalDriver"] for m in p1["groupMembers"]} == {
        ROOT_PORT: None,
        X520_0: "ixgbe",
        X520_1: "ixgbe",
    }
    p0 = _reconcile(host, k, {"address": X520_0}, p0, claimed={X520_1: "x520-p1"})
    assert p0["phase"] == "Bound" and p0["conditions"][0]["status"] == "True"
    assert p0["originalDriver"] is None  # already on vfio-pci when p0 got it: drivers_probe decides
    # Deleting p0 while p1 still exists gives back only 03:00.0 ...
    out = pci.release_passthrough(p0, sys_root=host.sys, claimed={X520_1: "x520-p1"}, write=k.write)
    assert out["phase"] == "Available" and host.driver_of(X520_0) == "ixgbe"
    assert host.driver_of(X520_1) == "vfio-pci"
    # ... which leaves p1's group incomplete ...
    p1 = _reconcile(host, k, {"address": X520_1}, p1, claimed={})
    assert p1["phase"] == "Failed" and p1["conditions"][0]["reason"] == "PartialGroup"
    # ... and deleting p1 restores the rest.
    pci.release_passthrough(p1, sys_root=host.sys, claimed={}, write=k.write)
    assert host.driver_of(X520_1) == "ixgbe" and host.override_of(X520_1) == "(null)"


def test_reconcile_refusal_publishes_condition(host):
    k = fakesys.FakeKernel(host)
    st = _reconcile(host, k, {"address": HOST_NIC})
    assert st["phase"] == "Failed" and st["address"] == HOST_NIC
    c = st["conditions"][0]
    assert (c["type"], c["status"], c["reason"]) == ("Ready", "False", "HostCritical")
    assert k.writes == [] and host.driver_of(HOST_NIC) == "igc"


def test_reconcile_moves_to_a_new_address_and_assignment_blocks_release(host):
    k = fakesys.FakeKernel(host)
    st = _reconcile(host, k, {"address": GPU})
    assert st["phase"] == "Bound"
    st = pci.assigned_status(st, "net", "vpp", "uid-1")
    assert st["phase"] == "Assigned" and st["assignedTo"] == {"namespace": "net", "name": "vpp", "uid": "uid-1"}
    assert _reconcile(host, k, {"address": GPU}, st)["phase"] == "Assigned"
    moved = _reconcile(host, k, {"address": VF0}, st)
    assert moved["phase"] == "Failed" and "stop the VM" in moved["conditions"][0]["message"]
    with pytest.raises(binding.BindError) as e:
        pci.release_passthrough(st, sys_root=host.sys, write=k.write)
    assert e.value.reason == "StillAssigned"
    st = pci.unassigned_status(st)
    assert st["phase"] == "Bound" and st["assignedTo"] is None
    moved = _reconcile(host, k, {"address": VF0}, st)
    assert moved["phase"] == "Bound" and moved["address"] == VF0
    assert host.driver_of(GPU) == "i915" and host.driver_of(VF0) == "vfio-pci"


# Assignment ------------------------------------------------------------------------------------


def _pcip(
    name, node="n305", phase="Bound", address=X520_0, assigned=None, assign_to=None, members=None, open_to=("net",)
):
    spec = {"nodeName": node, "address": address, **({"assignTo": assign_to} if assign_to else {})}
    if open_to:
        spec["namespaces"] = list(open_to)
    return {
        "metadata": {"name": name, "generation": 1},
        "spec": spec,
        "status": {
            "phase": phase,
            "address": address,
            "iommuGroup": 2,
            "observedGeneration": 1,
            "assignedTo": assigned,
            "groupMembers": members
            if members is not None
            else [
                {"address": ROOT_PORT, "driver": "pcieport", "isBridge": True},
                {"address": X520_0, "driver": "vfio-pci", "isBridge": False},
                {"address": X520_1, "driver": "vfio-pci", "isBridge": False},
            ],
        },
    }


def test_resolve_host_devices_happy_path():
    spec = {"hostDevices": [{"name": "wan", "pciPassthrough": "p0"}, {"name": "lan", "pciPassthrough": "p1"}]}
    objs = [_pcip("p0"), _pcip("p1", address=X520_1, phase="Assigned", assigned={"namespace": "net", "name": "vpp"})]
    out = pci.resolve_host_devices(spec, objs, "n305", vm_namespace="net", vm_name="vpp")
    assert [(d.name, d.passthrough, d.address) for d in out] == [("wan", "p0", X520_0), ("lan", "p1", X520_1)]
    assert out[0].group_members == (ROOT_PORT, X520_0, X520_1)
    assert out[1].source_address == {"domain": "0x0000", "bus": "0x03", "slot": "0x00", "function": "0x1"}


@pytest.mark.parametrize(
    "obj,expect",
    [
        (_pcip("p0", phase="Available"), "PCIPassthrough p0 is not Bound (phase Available)"),
        (_pcip("p0", phase="Failed"), "is not Bound (phase Failed)"),
        (
            _pcip("p0", phase="Assigned", assigned={"namespace": "lab", "name": "other"}),
            "PCIPassthrough p0 is assigned to other VM lab/other",
        ),
        (_pcip("p0", node="edge2"), "PCIPassthrough p0 is on node edge2, VM is on node n305"),
        (_pcip("p0", assign_to={"namespace": "lab", "name": "other"}), "reserved for VM lab/other"),
        (
            _pcip("p0", members=[{"address": X520_0, "driver": "vfio-pci"}, {"address": X520_1, "driver": "ixgbe"}]),
            "not viable: 0000:03:00.1 (ixgbe)",
        ),
    ],
)
def test_resolve_host_devices_errors(obj, expect):
    spec = {"hostDevices": [{"name": "wan", "pciPassthrough": "p0"}]}
    with pytest.raises(pci.HostDeviceResolutionError) as e:
        pci.resolve_host_devices(spec, [obj], "n305", vm_namespace="net", vm_name="vpp")
    assert expect in str(e.value)


def test_a_device_reserved_for_no_vm_is_claimed_by_none():
    """Bound, free, on the right node, but neither assignTo nor namespaces open it: refused, with why."""
    spec = {"hostDevices": [{"name": "wan", "pciPassthrough": "p0"}]}
    for obj, ns in ((_pcip("p0", open_to=()), "net"), (_pcip("p0", open_to=("lab",)), "net")):
        with pytest.raises(pci.HostDeviceResolutionError) as e:
            pci.resolve_host_devices(spec, [obj], "n305", vm_namespace=ns, vm_name="vpp")
        assert [err.reason for err in e.value.errors] == ["NotAssignable"]
        assert "not open to namespace net" in str(e.value) and "spec.assignTo" in str(e.value)
    reserved = _pcip("p0", open_to=(), assign_to={"namespace": "net", "name": "vpp"})
    out = pci.resolve_host_devices(spec, [reserved], "n305", vm_namespace="net", vm_name="vpp")
    assert [d.address for d in out] == [X520_0]
    with pytest.raises(pci.HostDeviceResolutionError, match="reserved for VM net/vpp"):
        pci.resolve_host_devices(spec, [reserved], "n305", vm_namespace="net", vm_name="other")


def test_resolve_host_devices_missing_object_and_split_group():
    spec = {"hostDevices": [{"name": "wan", "pciPassthrough": "p0"}, {"name": "x", "pciPassthrough": "nope"}]}
    other = _pcip("p1", address=X520_1, phase="Assigned", assigned={"namespace": "lab", "name": "other"})
    with pytest.raises(pci.HostDeviceResolutionError) as e:
        pci.resolve_host_devices(spec, [_pcip("p0"), other], "n305", vm_namespace="net", vm_name="vpp")
    reasons = sorted(err.reason for err in e.value.errors)
    assert reasons == ["GroupInOtherVM", "PCIPassthroughNotFound"]
    assert "a group can only belong to one VM" in str(e.value)


class _FakeIndex:
    """kopf's index of PCIPassthroughs as the handler sees it: statuses come back after a write."""

    def __init__(self, objs):
        self.objs = {o["metadata"]["name"]: {**o, "metadata": {**o["metadata"], "resourceVersion": "1"}} for o in objs}
        self.patches = []

    def write(self, patches):
        for name, status in patches:
            self.patches.append((name, status.get("phase"), status.get("assignedTo")))
            rv = str(int(self.objs[name]["metadata"]["resourceVersion"]) + 1)
            self.objs[name] = {
                **self.objs[name],
                "status": status,
                "metadata": {**self.objs[name]["metadata"], "resourceVersion": rv},
            }


def test_vm_claims_mark_assigned_and_release_clears():
    old = _pcip(
        "old", address="0000:07:00.0", phase="Assigned", assigned={"namespace": "net", "name": "vpp"}, members=[]
    )
    index, claims = _FakeIndex([_pcip("p0", open_to=("net", "lab")), old]), pci.Claims()
    vm = {"namespace": "net", "name": "vpp", "uid": "u1"}
    spec = {"hostDevices": [{"name": "wan", "pciPassthrough": "p0"}]}
    assignment = claims.assign(index.objs.values(), "n305", vm, spec)
    assert assignment.devices == {"wan": X520_0}
    index.write(assignment.patches)
    assert index.patches == [
        ("p0", "Assigned", {"namespace": "net", "name": "vpp", "uid": "u1"}),
        ("old", "Bound", None),
    ]
    with pytest.raises(ValueError, match="assigned to other VM net/vpp"):
        claims.assign(index.objs.values(), "n305", {"namespace": "lab", "name": "x"}, spec)
    index.patches.clear()
    patches = claims.release(index.objs.values(), vm)
    assert [name for name, _ in patches] == ["p0"]
    index.write(patches)
    assert index.objs["p0"]["status"]["phase"] == "Bound" and index.objs["p0"]["status"]["assignedTo"] is None


def test_a_claim_holds_before_the_index_shows_it():
    index, claims = _FakeIndex([_pcip("p0", open_to=("net", "lab"))]), pci.Claims()
    spec = {"hostDevices": [{"name": "wan", "pciPassthrough": "p0"}]}
    claims.assign(index.objs.values(), "n305", {"namespace": "net", "name": "vpp"}, spec)  # not written yet
    with pytest.raises(ValueError, match="assigned to other VM net/vpp"):
        claims.assign(index.objs.values(), "n305", {"namespace": "lab", "name": "x"}, spec)
