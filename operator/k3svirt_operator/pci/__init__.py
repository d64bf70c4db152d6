"""PCI passthrough for k3svirt: discovery, host-safety checks, VFIO binding and VM assignment.

Pure functions over a sysfs root (``$K3SVIRT_SYSFS_ROOT``, default ``/sys``) and a procfs root
(``$K3SVIRT_PROC_ROOT``, default ``/proc``). The kopf handlers call:

* ``node_inventory_status()``  -> NodePCIInventory.status
* ``reconcile_passthrough()`` / ``release_passthrough()`` -> PCIPassthrough.status (binds / restores)
* ``resolve_host_devices()``   -> the host addresses domain_xml renders as ``<hostdev>``
* ``resolve_for_vm()`` / ``release_for_vm()`` -> the same, through the operator Runtime, marking
  ``status.assignedTo`` (``assigned_status()`` / ``unassigned_status()`` are the pure parts)

See docs/pci-passthrough.md.
"""

from .assignment import (
    PHASE_ASSIGNED,
    PHASE_AVAILABLE,
    PHASE_BOUND,
    PHASE_FAILED,
    PHASE_PENDING,
    HostDeviceError,
    HostDeviceResolutionError,
    ResolvedHostDevice,
    host_device_map,
    passthrough_names,
    release_for_vm,
    resolve_for_vm,
    resolve_host_devices,
)
from .binding import BindError, BindPlan, Refusal, bind, modprobe, plan_bind, restore, select_device
from .discovery import PCIDevice, inventory, iommu_enabled, list_devices, read_device
from .reconcile import (
    assigned_status,
    node_inventory_status,
    reconcile_passthrough,
    release_passthrough,
    unassigned_status,
)
from .safety import HostFacts, gather_host_facts, load_denylist
from .sysfs import address_parts, normalize_address

__all__ = [
    "BindError",
    "BindPlan",
    "HostDeviceError",
    "HostDeviceResolutionError",
    "HostFacts",
    "PCIDevice",
    "PHASE_ASSIGNED",
    "PHASE_AVAILABLE",
    "PHASE_BOUND",
    "PHASE_FAILED",
    "PHASE_PENDING",
    "Refusal",
    "ResolvedHostDevice",
    "address_parts",
    "assigned_status",
    "bind",
    "gather_host_facts",
    "host_device_map",
    "inventory",
    "iommu_enabled",
    "list_devices",
    "load_denylist",
    "modprobe",
    "node_inventory_status",
    "normalize_address",
    "passthrough_names",
    "plan_bind",
    "read_device",
    "reconcile_passthrough",
    "release_for_vm",
    "release_passthrough",
    "resolve_for_vm",
    "resolve_host_devices",
    "restore",
    "select_device",
    "unassigned_status",
]
