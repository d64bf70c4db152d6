"""PCI device discovery: pure functions over a sysfs root (and a procfs root for host facts).

``inventory(root)`` returns the list published as ``NodePCIInventory.status.devices``;
``node_inventory_status(...)`` returns the whole ``status`` of that object.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import sysfs
from .pciids import PciIds, load_pci_ids

# Kernel command-line flags worth publishing (IOMMU, VFIO and the usual DPDK/VPP tuning knobs).
RELEVANT_CMDLINE_PREFIXES = (
    "intel_iommu",
    "amd_iommu",
    "iommu",
    "iommu.",
    "vfio",
    "vfio-pci.",
    "vfio_pci.",
    "vfio_iommu_type1.",
    "pcie_acs_override",
    "pci=",
    "isolcpus",
    "nohz_full",
    "rcu_nocbs",
    "irqaffinity",
    "hugepages",
    "hugepagesz",
    "default_hugepagesz",
    "transparent_hugepage",
    "kvm",
    "kvm_intel.",
    "kvm-intel.",
)

# Drivers a PCI bridge may sit on without breaking VFIO group viability.
BRIDGE_DRIVERS_OK = frozenset({"pcieport", "shpchp"})
VFIO_DRIVERS = frozenset({"vfio-pci", "pci-stub"})


@dataclass
class PCIDevice:
    address: str
    vendor_id: str | None = None
    device_id: str | None = None
    subsystem_vendor_id: str | None = None
    subsystem_device_id: str | None = None
    revision: str | None = None
    class_id: str | None = None  # six hex digits, e.g. "020000"
    vendor_name: str | None = None
    device_name: str | None = None
    subsystem_name: str | None = None
    class_name: str | None = None
    driver: str | None = None
    driver_override: str | None = None
    iommu_group: int | None = None
    iommu_group_members: list[str] = field(default_factory=list)
    numa_node: int | None = None
    is_bridge: bool = False
    parent: str | None = None
    reset_supported: bool = False
    sriov_total_vfs: int | None = None
    sriov_num_vfs: int | None = None
    virtfns: list[str] = field(default_factory=list)
    physfn: str | None = None
    net_interfaces: list[str] = field(default_factory=list)

    @property
    def is_pci_to_pci_bridge(self) -> bool:
        return bool(self.class_id) and self.class_id[:4] in ("0604", "0607")

    def to_dict(self) -> dict[str, Any]:
        """The camelCase shape of one entry of ``NodePCIInventory.status.devices``."""
        sriov = None
        if self.sriov_total_vfs is not None:
            sriov = {"totalVFs": self.sriov_total_vfs, "numVFs": self.sriov_num_vfs or 0, "virtfns": list(self.virtfns)}
        return {
            "address": self.address,
            "vendorId": self.vendor_id,
            "deviceId": self.device_id,
            "subsystemVendorId": self.subsystem_vendor_id,
            "subsystemDeviceId": self.subsystem_device_id,
            "revision": self.revision,
            "vendorName": self.vendor_name,
            "deviceName": self.device_name,
            "subsystemName": self.subsystem_name,
            "classId": self.class_id,
            "className": self.class_name,
            "driver": self.driver,
            "driverOverride": self.driver_override,
            "iommuGroup": self.iommu_group,
            "iommuGroupMembers": list(self.iommu_group_members),
            "numaNode": self.numa_node,
            "isBridge": self.is_bridge,
            "parent": self.parent,
            "resetSupported": self.reset_supported,
            "sriov": sriov,
            "physfn": self.physfn,
            "netInterfaces": list(self.net_interfaces),
        }


def _driver_override(dev_dir: Path) -> str | None:
    raw = sysfs.read_attr(dev_dir / "driver_override")
    if not raw or raw == "(null)":
        return None
    return raw


def _net_interfaces(dev_dir: Path) -> list[str]:
    names: set[str] = set()
    for pattern in ("net/*", "*/net/*"):  # virtio NICs hang their netdev under virtioN/
        for p in dev_dir.glob(pattern):
            names.add(p.name)
    return sorted(names)


def read_device(root: Path | str | None, address: str, ids: PciIds | None = None) -> PCIDevice | None:
    """Read one PCI function from ``<root>/bus/pci/devices/<address>``; ``None`` if absent."""
    root = sysfs.sysfs_root(root)
    address = sysfs.normalize_address(address)
    d = sysfs.pci_device_dir(root, address)
    if not d.exists():
        return None
    ids = ids if ids is not None else load_pci_ids()
    cls = sysfs.read_hex_id(d / "class")
    if cls:
        cls = cls.zfill(6)
    dev = PCIDevice(
        address=address,
        vendor_id=sysfs.read_hex_id(d / "vendor"),
        device_id=sysfs.read_hex_id(d / "device"),
        subsystem_vendor_id=sysfs.read_hex_id(d / "subsystem_vendor"),
        subsystem_device_id=sysfs.read_hex_id(d / "subsystem_device"),
        revision=sysfs.read_hex_id(d / "revision"),
        class_id=cls,
        driver=sysfs.link_name(d / "driver"),
        driver_override=_driver_override(d),
        reset_supported=(d / "reset").exists(),
        net_interfaces=_net_interfaces(d),
    )
    dev.vendor_name = ids.vendor_name(dev.vendor_id)
    dev.device_name = ids.device_name(dev.vendor_id, dev.device_id)
    dev.subsystem_name = ids.subsystem_name(
        dev.vendor_id, dev.device_id, dev.subsystem_vendor_id, dev.subsystem_device_id
    )
    dev.class_name = ids.class_name(cls)
    dev.is_bridge = bool(cls) and cls.startswith("06")
    numa = sysfs.read_int(d / "numa_node")
    dev.numa_node = numa if numa is not None and numa >= 0 else None
    group = sysfs.link_name(d / "iommu_group")
    if group is not None and group.isdigit():
        dev.iommu_group = int(group)
        members = sysfs.iommu_groups_dir(root) / group / "devices"
        try:
            dev.iommu_group_members = sorted(p.name for p in members.iterdir())
        except OSError:
            dev.iommu_group_members = [address]
    # The upstream bridge is the parent directory in the real device path.
    real_parent = Path(os.path.realpath(d)).parent.name
    dev.parent = real_parent if sysfs.is_pci_address(real_parent) else None
    total = sysfs.read_int(d / "sriov_totalvfs")
    if total is not None:
        dev.sriov_total_vfs = total
        dev.sriov_num_vfs = sysfs.read_int(d / "sriov_numvfs") or 0
        vfs = []
        for p in d.glob("virtfn*"):
            a = sysfs.link_name(p)
            if a and sysfs.is_pci_address(a):
                vfs.append((int(p.name[6:]) if p.name[6:].isdigit() else 0, a))
        dev.virtfns = [a for _, a in sorted(vfs)]
    pf = sysfs.link_name(d / "physfn")
    dev.physfn = pf if pf and sysfs.is_pci_address(pf) else None
    return dev


def list_addresses(root: Path | str | None = None) -> list[str]:
    root = sysfs.sysfs_root(root)
    try:
        return sorted(p.name for p in sysfs.pci_devices_dir(root).iterdir() if sysfs.is_pci_address(p.name))
    except OSError:
        return []


def list_devices(root: Path | str | None = None, ids: PciIds | None = None) -> list[PCIDevice]:
    """Every PCI function under the sysfs root, sorted by address."""
    ids = ids if ids is not None else load_pci_ids()
    out = []
    for a in list_addresses(root):
        dev = read_device(root, a, ids)
        if dev is not None:
            out.append(dev)
    return out


def inventory(root: Path | str | None = None, ids: PciIds | None = None) -> list[dict[str, Any]]:
    """The node's PCI devices in the shape published to ``NodePCIInventory.status.devices``."""
    return [d.to_dict() for d in list_devices(root, ids)]


# Host-level facts ------------------------------------------------------------------------------


def iommu_group_count(root: Path | str | None = None) -> int:
    try:
        return sum(1 for _ in sysfs.iommu_groups_dir(sysfs.sysfs_root(root)).iterdir())
    except OSError:
        return 0


def iommu_enabled(root: Path | str | None = None) -> bool:
    """The IOMMU is on when the kernel has created at least one IOMMU group."""
    return iommu_group_count(root) > 0


def kernel_cmdline(proc: Path | str | None = None) -> list[str]:
    raw = sysfs.read_attr(sysfs.proc_root(proc) / "cmdline") or ""
    args = raw.split()
    # Everything after a bare "--" belongs to init, not the kernel.
    return args[: args.index("--")] if "--" in args else args


def relevant_cmdline_flags(args: list[str]) -> list[str]:
    return [a for a in args if a.startswith(RELEVANT_CMDLINE_PREFIXES)]


def cpu_vendor(proc: Path | str | None = None) -> str | None:
    """``GenuineIntel``, ``AuthenticAMD`` ... from ``/proc/cpuinfo``; ``None`` if unknown."""
    raw = sysfs.read_attr(sysfs.proc_root(proc) / "cpuinfo") or ""
    for line in raw.splitlines():
        if line.startswith("vendor_id"):
            return line.split(":", 1)[1].strip() or None
    return None


def cmdline_flag(args: list[str], key: str) -> str | None:
    """Value of the last ``key=value`` on the command line (the kernel's own rule), else ``None``."""
    val = None
    for a in args:
        if a.startswith(key + "="):
            val = a.split("=", 1)[1]
    return val


def intel_iommu_requested(args: list[str]) -> bool:
    """``intel_iommu=on`` (possibly with more comma-separated options) is on the command line."""
    v = cmdline_flag(args, "intel_iommu")
    return v is not None and "on" in v.split(",")


def utcnow() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
