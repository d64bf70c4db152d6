"""PCI passthrough for k3svirt: discovery, host-safety checks, VFIO binding and VM assignment.

Pure functions over a sysfs root (default ``/sys``) and a procfs root (default ``/proc``); the
handlers pass the node's (config.Settings.pci: K3SVIRT_SYSFS_ROOT, K3SVIRT_PROC_ROOT). They call:

* ``node_inventory_status()``  -> NodePCIInventory.status
* ``reconcile_passthrough()`` / ``release_passthrough()`` -> PCIPassthrough.status (binds / restores)
* ``resolve_host_devices()``   -> the host addresses domain_xml renders as ``<hostdev>``
* ``Claims.assign()`` / ``Claims.release()`` -> the same for a VM, with the PCIPassthrough statuses
  that record ``status.assignedTo`` (``plan_for_vm()`` / ``plan_release()`` are the pure parts),
  which the handler writes after the pass

See docs/pci-passthrough.md.
"""

from . import sriov
from .assignment import (
    Assignment,
    HostDeviceError,
    HostDeviceResolutionError,
    ResolvedHostDevice,
    StatusPatch,
    assigned_status,
    host_device_map,
    plan_for_vm,
    plan_release,
    resolve_host_devices,
    unassigned_status,
)
from .binding import (
    BindError,
    BindPlan,
    Refusal,
    bind,
    modprobe,
    plan_bind,
    recover_interrupted,
    restore,
    select_device,
)
from .claims import Claims
from .discovery import PCIDevice, inventory, iommu_enabled, list_devices, read_device
from .pciids import load_pci_ids
from .phases import PHASE_ASSIGNED, PHASE_AVAILABLE, PHASE_BOUND, PHASE_FAILED, PHASE_PENDING
from .reconcile import node_inventory_status, reconcile_passthrough, release_passthrough
from .safety import HostFacts, gather_host_facts, load_denylist
from .sysfs import address_parts, normalize_address

__all__ = [
    "Assignment",
    "BindError",
    "BindPlan",
    "Claims",
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
    "StatusPatch",
    "address_parts",
    "assigned_status",
    "bind",
    "gather_host_facts",
    "host_device_map",
    "inventory",
    "iommu_enabled",
    "list_devices",
    "load_denylist",
    "load_pci_ids",
    "modprobe",
    "node_inventory_status",
    "normalize_address",
    "plan_bind",
    "plan_for_vm",
    "plan_release",
    "read_device",
    "reconcile_passthrough",
    "recover_interrupted",
    "release_passthrough",
    "resolve_host_devices",
    "restore",
    "select_device",
    "sriov",
    "unassigned_status",
]
