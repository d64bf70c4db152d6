"""Deciding whether a device may be handed to VFIO (pure) and doing it (the sysfs write protocol).

* :func:`select_device` turns a ``PCIPassthrough.spec`` (address or selector) into an inventory entry.
* :func:`plan_bind` decides: a :class:`BindPlan` (which functions of the IOMMU group to rebind) or a
  :class:`Refusal` whose ``reason`` is the condition reason published on the object.
* :func:`bind` executes a plan: for every target ``driver_override=vfio-pci`` -> unbind from the current
  driver -> ``drivers_probe`` (-> ``drivers/vfio-pci/bind`` as a fallback) -> verify the ``driver`` link.
* :func:`restore` undoes it: clear ``driver_override`` -> unbind from vfio-pci -> ``drivers_probe``
  (-> ``drivers/<original>/bind`` as a fallback) -> verify.

All writes go through the ``write`` argument (default :func:`~k3svirt_operator.pci.sysfs.write_attr`).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import discovery, safety, sysfs

log = logging.getLogger(__name__)

VFIO_PCI = "vfio-pci"

# Condition reasons (CamelCase, published in PCIPassthrough.status.conditions[].reason).
IOMMU_DISABLED = "IOMMUDisabled"
INTEL_IOMMU_MISSING = "IntelIOMMUMissingFromCmdline"
DEVICE_NOT_FOUND = "DeviceNotFound"
DEVICE_BUSY = "DeviceBusy"
HOST_CRITICAL = "HostCritical"
PARTIAL_GROUP = "PartialGroup"
NO_IOMMU_GROUP = "NoIOMMUGroup"
UNSUPPORTED_DEVICE = "UnsupportedDevice"
DRIVER_NOT_LOADED = "DriverNotLoaded"
INVALID_SPEC = "InvalidSpec"
BIND_FAILED = "BindFailed"
RESTORE_FAILED = "RestoreFailed"
STILL_ASSIGNED = "StillAssigned"

GROUP_POLICY_STRICT = "Strict"
GROUP_POLICY_BIND_GROUP = "BindGroup"


@dataclass(frozen=True)
class Refusal:
    """Why a device cannot (now) be bound; ``reason`` is the condition reason."""

    reason: str
    message: str
    address: str | None = None
    iommu_group: int | None = None
    ok: bool = field(default=False, init=False)


@dataclass(frozen=True)
class GroupMember:
    address: str
    driver: str | None
    is_bridge: bool
    exempt: bool  # a bridge that VFIO tolerates in the group: never rebound
    claimed_by: str | None = None  # another PCIPassthrough that names this function

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "driver": self.driver,
            "isBridge": self.is_bridge,
            "claimedBy": self.claimed_by,
        }


@dataclass(frozen=True)
class BindTarget:
    address: str
    current_driver: str | None


@dataclass(frozen=True)
class BindPlan:
    """Rebind every endpoint function of ``iommu_group`` that is not yet on ``driver``."""

    address: str
    driver: str
    iommu_group: int
    group_members: tuple[GroupMember, ...]
    targets: tuple[BindTarget, ...]
    original_driver: str | None
    ok: bool = field(default=True, init=False)

    @property
    def endpoint_addresses(self) -> list[str]:
        return [m.address for m in self.group_members if not m.exempt]


class BindError(Exception):
    def __init__(self, reason: str, message: str, done: Mapping[str, str | None] | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.done = dict(done or {})


# Selection -------------------------------------------------------------------------------------


def _norm_hex(v: Any) -> str:
    s = str(v).strip().lower()
    return s[2:] if s.startswith("0x") else s


def select_device(spec: Mapping[str, Any], inventory: list[dict[str, Any]]) -> dict[str, Any] | Refusal:
    """The inventory entry a ``PCIPassthrough.spec`` names (``address`` or ``selector``)."""
    by_addr = {d["address"]: d for d in inventory}
    address, selector = spec.get("address"), spec.get("selector")
    if bool(address) == bool(selector):
        return Refusal(INVALID_SPEC, "exactly one of spec.address and spec.selector must be set")
    if address:
        try:
            a = sysfs.normalize_address(address)
        except ValueError as e:
            return Refusal(INVALID_SPEC, str(e))
        if a not in by_addr:
            return Refusal(DEVICE_NOT_FOUND, f"no PCI device {a} on this node", address=a)
        return by_addr[a]
    want = {
        k: _norm_hex(selector[k])
        for k in ("vendor", "device", "subsystemVendor", "subsystemDevice")
        if selector.get(k) is not None
    }
    key = {
        "vendor": "vendorId",
        "device": "deviceId",
        "subsystemVendor": "subsystemVendorId",
        "subsystemDevice": "subsystemDeviceId",
    }
    matches = sorted(
        (d for d in inventory if all(d.get(key[k]) == v for k, v in want.items())), key=lambda d: d["address"]
    )
    index = int(selector.get("index", 0))
    desc = ":".join(want.get(k, "*") for k in ("vendor", "device"))
    if index < 0 or index >= len(matches):
        return Refusal(
            DEVICE_NOT_FOUND, f"selector {desc} index {index} matched no device ({len(matches)} match(es) on this node)"
        )
    return matches[index]


# Planning --------------------------------------------------------------------------------------


def _exempt_bridge(dev: Mapping[str, Any] | None) -> bool:
    """VFIO tolerates PCI bridges in a group as long as they are driverless or on pcieport/shpchp."""
    if not dev or not dev.get("isBridge"):
        return False
    return dev.get("driver") in (None, *discovery.BRIDGE_DRIVERS_OK)


def plan_bind(
    device: Mapping[str, Any],
    inventory: list[dict[str, Any]],
    host_facts: safety.HostFacts,
    denylist: Iterable[str] = (),
    *,
    driver: str = VFIO_PCI,
    group_policy: str = GROUP_POLICY_STRICT,
    claimed: Mapping[str, str] | None = None,
) -> BindPlan | Refusal:
    """Decide whether ``device`` (an inventory entry) may be bound to ``driver``.

    ``claimed`` maps addresses to the names of the OTHER PCIPassthrough objects on this node that
    already resolved to them. Group safety: every endpoint function of the device's IOMMU group is
    bound together; PCI bridges tolerated by VFIO are excepted. With ``group_policy="Strict"`` the
    other endpoints must already be on a VFIO driver, driverless, or claimed by another
    PCIPassthrough; ``"BindGroup"`` takes them along (never host-critical or busy ones).
    """
    claimed = claimed or {}
    denylist = tuple(denylist)
    address = device["address"]
    by_addr = {d["address"]: d for d in inventory}
    problem = safety.iommu_problem(host_facts)
    if problem:
        return Refusal(problem[0], problem[1], address=address)
    if device.get("isBridge"):
        return Refusal(
            UNSUPPORTED_DEVICE,
            f"{address} is a bridge ({device.get('className')}); pass the devices behind it instead",
            address=address,
        )
    group = device.get("iommuGroup")
    if group is None:
        return Refusal(
            NO_IOMMU_GROUP,
            f"{address} is in no IOMMU group although the IOMMU is on "
            "(device behind a non-isolating bridge or not handled by the IOMMU)",
            address=address,
        )
    if address in claimed:
        return Refusal(
            DEVICE_BUSY,
            f"{address} is already claimed by PCIPassthrough {claimed[address]}",
            address=address,
            iommu_group=group,
        )

    members: list[GroupMember] = []
    for a in device.get("iommuGroupMembers") or [address]:
        m = by_addr.get(a)
        members.append(
            GroupMember(
                address=a,
                driver=(m or {}).get("driver"),
                is_bridge=bool((m or {}).get("isBridge")),
                exempt=_exempt_bridge(m),
                claimed_by=claimed.get(a),
            )
        )

    def refuse(reason: str, msg: str) -> Refusal:
        return Refusal(reason, msg, address=address, iommu_group=group)

    for m in members:
        if m.exempt:
            continue
        entry = by_addr.get(m.address, {"address": m.address})
        where = "" if m.address == address else f" (shares IOMMU group {group} with {address})"
        uses = safety.host_use(m.address, entry, host_facts, denylist)
        if m.address in host_facts.critical or safety.denylist_match(entry, denylist):
            return refuse(
                HOST_CRITICAL,
                f"{m.address}{where} is needed by the host: {'; '.join(uses)}; pass another device, or "
                "move that use to another device first (a denylisted one: change the operator's denylist)",
            )
        if m.address in host_facts.busy:
            return refuse(
                DEVICE_BUSY,
                f"{m.address}{where} is in use by the host: {host_facts.busy[m.address]}; "
                "stop that use (unmount, swapoff, remove it from the bridge/bond) and the operator retries",
            )
        sriov = entry.get("sriov") or {}
        if sriov.get("numVFs"):
            return refuse(
                DEVICE_BUSY,
                f"{m.address}{where} has {sriov['numVFs']} SR-IOV VFs enabled; "
                "unbinding the PF destroys them: set sriov_numvfs to 0 first, "
                "or pass the VFs instead",
            )

    uncovered = [
        m
        for m in members
        if not m.exempt
        and m.address != address
        and m.claimed_by is None
        and m.driver not in (None, *discovery.VFIO_DRIVERS, driver)
    ]
    if uncovered and group_policy != GROUP_POLICY_BIND_GROUP:
        listing = ", ".join(f"{m.address} ({m.driver})" for m in uncovered)
        return refuse(
            PARTIAL_GROUP,
            f"IOMMU group {group} of {address} also holds {listing}; all endpoints of a group "
            "must be detached from the host together: create PCIPassthrough objects for them "
            "too, or set spec.groupPolicy: BindGroup",
        )

    targets = tuple(BindTarget(m.address, m.driver) for m in members if not m.exempt and m.driver != driver)
    if targets and driver not in host_facts.drivers:
        return refuse(DRIVER_NOT_LOADED, f"the {driver} driver is not loaded: modprobe {driver}")
    return BindPlan(
        address=address,
        driver=driver,
        iommu_group=int(group),
        group_members=tuple(members),
        targets=targets,
        original_driver=device.get("driver"),
    )


# Executing -------------------------------------------------------------------------------------


def current_driver(root: Path, address: str) -> str | None:
    return sysfs.link_name(sysfs.pci_device_dir(root, address) / "driver")


def _rebind(root: Path, address: str, driver: str, write: sysfs.Writer) -> None:
    dev = sysfs.pci_device_dir(root, address)
    write(dev / "driver_override", driver)
    cur = current_driver(root, address)
    if cur and cur != driver:
        write(sysfs.pci_drivers_dir(root) / cur / "unbind", address)
    if current_driver(root, address) != driver:
        write(root / "bus" / "pci" / "drivers_probe", address)
    bind_file = sysfs.pci_drivers_dir(root) / driver / "bind"
    if current_driver(root, address) != driver and bind_file.exists():
        write(bind_file, address)
    got = current_driver(root, address)
    if got != driver:
        raise BindError(BIND_FAILED, f"{address} is on {got or 'no driver'} after binding to {driver}")


def bind(
    plan: BindPlan, root: Path | str | None = None, *, write: sysfs.Writer = sysfs.write_attr
) -> dict[str, str | None]:
    """Execute ``plan``; return ``{address: original driver}`` of the functions it rebound.

    On failure, functions already rebound are restored (best effort) and :class:`BindError` is raised.
    """
    root = sysfs.sysfs_root(root)
    done: dict[str, str | None] = {}
    for t in plan.targets:
        if not sysfs.pci_device_dir(root, t.address).exists():
            raise BindError(DEVICE_NOT_FOUND, f"{t.address} disappeared", done)
        try:
            _rebind(root, t.address, plan.driver, write)
        except (OSError, BindError) as e:
            log.warning(
                "binding %s to %s failed: %s",
                t.address,
                plan.driver,
                e,
                extra={"pci_address": t.address, "driver": plan.driver},
            )
            done_and_failed = {**done, t.address: t.current_driver}
            try:
                back = restore(done_and_failed, root, driver=plan.driver, write=write)
                rollback = "rolled back: " + ", ".join(f"{a} is on {d or 'no driver'}" for a, d in back.items())
            except BindError as re_err:
                log.warning("rollback failed: %s", re_err)
                rollback = f"rollback failed ({re_err.message}): check the device's driver on the node"
            msg = e.message if isinstance(e, BindError) else f"writing sysfs for {t.address} failed: {e}"
            raise BindError(BIND_FAILED, f"{msg}; {rollback}", done) from e
        done[t.address] = t.current_driver
        log.info(
            "bound %s to %s (was %s)",
            t.address,
            plan.driver,
            t.current_driver,
            extra={"pci_address": t.address, "driver": plan.driver, "original_driver": t.current_driver},
        )
    return done


def restore(
    originals: Mapping[str, str | None],
    root: Path | str | None = None,
    *,
    driver: str = VFIO_PCI,
    write: sysfs.Writer = sysfs.write_attr,
) -> dict[str, str | None]:
    """Give functions back to the host: ``{address: original driver or None}`` -> ``{address: driver now}``.

    ``None`` as original means "whatever the kernel matches" (drivers_probe). Raises :class:`BindError`
    (reason ``RestoreFailed``) when an original driver could not be re-attached; the others are still done.
    """
    root = sysfs.sysfs_root(root)
    now: dict[str, str | None] = {}
    errors = []
    for address, original in originals.items():
        dev = sysfs.pci_device_dir(root, address)
        if not dev.exists():
            continue
        try:
            write(dev / "driver_override", "\n")
            cur = current_driver(root, address)
            if cur and cur == driver and cur != original:
                write(sysfs.pci_drivers_dir(root) / cur / "unbind", address)
            if current_driver(root, address) is None:
                write(root / "bus" / "pci" / "drivers_probe", address)
            orig_bind = sysfs.pci_drivers_dir(root) / original / "bind" if original else None
            if original and current_driver(root, address) is None and orig_bind and orig_bind.exists():
                write(orig_bind, address)
        except OSError as e:
            errors.append(f"{address}: {e}")
        got = current_driver(root, address)
        now[address] = got
        if original and got != original:
            errors.append(f"{address} is on {got or 'no driver'}, expected {original}")
        else:
            log.info(
                "restored %s to %s",
                address,
                got,
                extra={"pci_address": address, "driver": got, "original_driver": original},
            )
    if errors:
        raise BindError(RESTORE_FAILED, "; ".join(errors), now)
    return now


def recover_interrupted(
    root: Path | str | None = None, *, driver: str = VFIO_PCI, write: sysfs.Writer = sysfs.write_attr
) -> dict[str, str | None]:
    """Undo binds a killed operator left half done; return ``{address: driver now}`` of what it touched.

    :func:`bind` writes ``driver_override`` first, so the kernel itself records every bind in flight:
    a function whose override names ``driver`` but that is on no driver was unbound and never probed
    (killed between the steps), and one still on another driver was never unbound. Both go back to
    the host: the override is cleared and the driver the kernel matches is probed (``drivers_probe``,
    the same as :func:`restore` with an unknown original). Functions already on ``driver`` are a
    finished bind and stay (their PCIPassthrough owns them). Call it with the bind lock held or
    before any bind runs (operator start).
    """
    root = sysfs.sysfs_root(root)
    touched: dict[str, str | None] = {}
    for address in discovery.list_addresses(root):
        dev = sysfs.pci_device_dir(root, address)
        if sysfs.read_attr(dev / "driver_override") != driver:
            continue
        cur = current_driver(root, address)
        if cur == driver:
            continue
        try:
            write(dev / "driver_override", "\n")
            if cur is None:
                write(root / "bus" / "pci" / "drivers_probe", address)
        except OSError as e:
            log.warning("recovering %s failed: %s", address, e, extra={"pci_address": address})
        touched[address] = current_driver(root, address)
        log.warning(
            "interrupted bind of %s undone: now on %s",
            address,
            touched[address],
            extra={"pci_address": address, "driver": touched[address], "was_driverless": cur is None},
        )
    return touched


def modprobe(module: str = VFIO_PCI) -> bool:
    """Load a kernel module on the real host (``modprobe``); False when unavailable or failing."""
    exe = shutil.which("modprobe")
    if not exe:
        return False
    return subprocess.run([exe, module], capture_output=True, check=False).returncode == 0
