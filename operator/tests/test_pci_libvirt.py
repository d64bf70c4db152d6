"""PCI passthrough against the real machine: this node's sysfs (read only) and libvirt on qemu:///system.

The libvirt test is skipped only when libvirtd is not reachable (the harness is not up).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from k3svirt_operator import pci
from k3svirt_operator.domain_xml import DomainContext, VMRef, build_domain

LIBVIRT_URI = os.environ.get("K3SVIRT_LIBVIRT_URI", "qemu:///system")
HEX4 = re.compile(r"^[0-9a-f]{4}$")


def test_real_sysfs_inventory_is_sane():
    devices = pci.inventory("/sys")
    on_disk = sorted(p.name for p in Path("/sys/bus/pci/devices").iterdir())
    assert devices, "this machine has PCI devices"
    assert [d["address"] for d in devices] == on_disk
    for d in devices:
        assert pci.normalize_address(d["address"]) == d["address"]
        assert HEX4.match(d["vendorId"]) and HEX4.match(d["deviceId"])
        assert re.match(r"^[0-9a-f]{6}$", d["classId"]) and d["className"]
        assert d["isBridge"] == d["classId"].startswith("06")
        assert d["driver"] is None or (Path("/sys/bus/pci/drivers") / d["driver"]).is_dir()
        if d["iommuGroup"] is not None:
            assert d["address"] in d["iommuGroupMembers"]
        assert d["numaNode"] is None or d["numaNode"] >= 0
    # Names come from pci.ids when installed (Debian package pci.ids, via pciutils).
    if Path("/usr/share/misc/pci.ids").exists():
        assert any(d["vendorName"] for d in devices)


def test_real_host_facts_protect_the_default_route_nic_and_root_disk():
    facts = pci.gather_host_facts("/sys", "/proc")
    assert facts.iommu_enabled == bool(list(Path("/sys/kernel/iommu_groups").glob("*")))
    for iface in pci.safety.default_route_interfaces("/proc"):
        dev = Path("/sys/class/net") / iface / "device"
        if dev.exists():
            addr = pci.sysfs.pci_address_of(dev)
            assert addr in facts.critical and "default route" in facts.critical[addr]
    st = pci.node_inventory_status("/sys", "/proc", denylist=())
    assert st["devices"] and st["conditions"][0]["type"] == "IOMMUReady"
    if not facts.iommu_enabled:
        assert st["conditions"][0]["reason"] in ("IOMMUDisabled", "IntelIOMMUMissingFromCmdline")


def _libvirt():
    libvirt = pytest.importorskip("libvirt")
    try:
        return libvirt.open(LIBVIRT_URI)
    except libvirt.libvirtError as e:
        pytest.skip(f"libvirtd not reachable at {LIBVIRT_URI}: {e}")


def _real_endpoint() -> str:
    return next(d["address"] for d in pci.inventory("/sys") if not d["isBridge"])


@pytest.mark.parametrize("where", ["fixture-address", "real-address"])
def test_resolved_hostdev_xml_validates_and_libvirt_defines_it(where, tmp_path):
    conn = _libvirt()
    address = "0000:03:00.0" if where == "fixture-address" else _real_endpoint()
    ns = f"k3svirt-unittest-pci-{uuid.uuid4().hex[:8]}"
    pcip = {
        "metadata": {"name": "x520-p0", "generation": 1},
        "spec": {"nodeName": "n305", "address": address, "assignTo": {"namespace": ns, "name": "vpp"}},
        "status": {
            "phase": "Bound",
            "address": address,
            "iommuGroup": 2,
            "observedGeneration": 1,
            "groupMembers": [{"address": address, "driver": "vfio-pci", "isBridge": False}],
        },
    }
    spec = {"memory": {"size": "64Mi"}, "hostDevices": [{"name": "wan", "pciPassthrough": "x520-p0"}]}
    resolved = pci.resolve_host_devices(spec, [pcip], "n305", vm_namespace=ns, vm_name="vpp")
    xml = build_domain(
        VMRef(ns, "vpp", str(uuid.uuid4())),
        spec,
        DomainContext(domain_type="qemu", host_devices=pci.host_device_map(resolved)),
    ).xml
    parts = pci.address_parts(address)
    assert '<hostdev mode="subsystem" type="pci" managed="no">' in xml
    assert (
        f'<address domain="{parts["domain"]}" bus="{parts["bus"]}" slot="{parts["slot"]}" '
        f'function="{parts["function"]}" />'
    ) in xml
    f = tmp_path / "domain.xml"
    f.write_text(xml)
    validator = shutil.which("virt-xml-validate")
    if validator:
        out = subprocess.run([validator, str(f), "domain"], capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stderr + out.stdout
    dom = conn.defineXML(xml)
    try:
        assert dom.name().startswith("k3svirt-unittest-pci-")
        live = dom.XMLDesc(0)
        assert "type='pci' managed='no'" in live
        assert f"bus='{parts['bus']}' slot='{parts['slot']}' function='{parts['function']}'" in live
    finally:
        dom.undefine()
        conn.close()
