"""What the host itself needs: devices that must never be handed to a VM.

``gather_host_facts(sys_root, proc_root)`` reads, without writing anything:

* the NIC(s) carrying the default route (IPv4 ``/proc/net/route``, IPv6 ``/proc/net/ipv6_route``),
  followed through bridges, bonds and VLANs (``lower_*`` and ``brif/*`` links) down to PCI functions;
* the disk controller(s) behind the root filesystem (``/proc/1/mountinfo`` and ``/proc/self/mountinfo``,
  major:minor -> ``/sys/dev/block``, through device-mapper/md ``slaves/``);
* controllers behind other mounted filesystems and swap (busy, not critical);
* network functions enslaved to a bridge or bond (busy);
* whether the IOMMU is on, the CPU vendor and the kernel command line.

The operator's denylist (``K3SVIRT_PCI_DENYLIST``, ``K3SVIRT_PCI_DENYLIST_FILE``) adds devices by address,
``vendor:device`` ID or ``class:<hex prefix>``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import discovery, sysfs

DENYLIST_ENV = "K3SVIRT_PCI_DENYLIST"
DENYLIST_FILE_ENV = "K3SVIRT_PCI_DENYLIST_FILE"


@dataclass(frozen=True)
class HostFacts:
    iommu_enabled: bool
    iommu_group_count: int = 0
    cpu_vendor: str | None = None
    cmdline: tuple[str, ...] = ()
    # address -> human reason; "critical" is never bindable, "busy" is in use right now.
    critical: Mapping[str, str] = field(default_factory=dict)
    busy: Mapping[str, str] = field(default_factory=dict)
    drivers: frozenset[str] = frozenset()  # PCI drivers currently registered (bus/pci/drivers/*)

    @property
    def is_intel(self) -> bool:
        return self.cpu_vendor == "GenuineIntel"

    @property
    def intel_iommu_on(self) -> bool:
        return discovery.intel_iommu_requested(list(self.cmdline))


# Network ---------------------------------------------------------------------------------------


def default_route_interfaces(proc: Path | str | None = None) -> list[str]:
    """Interfaces holding an IPv4 or IPv6 default route."""
    proc = sysfs.proc_root(proc)
    out: list[str] = []
    for line in (sysfs.read_attr(proc / "net" / "route") or "").splitlines()[1:]:
        f = line.split()
        if len(f) >= 8 and f[1] == "00000000" and f[7] == "00000000" and int(f[3], 16) & 0x1:
            out.append(f[0])
    for line in (sysfs.read_attr(proc / "net" / "ipv6_route") or "").splitlines():
        f = line.split()
        # dest(32 hex) dest_len src src_len nexthop metric refcnt use flags iface
        if len(f) >= 10 and set(f[0]) == {"0"} and f[1] == "00" and f[9] != "lo" and int(f[8], 16) & 0x1:
            out.append(f[9])
    return sorted(set(out))


def interface_pci_devices(sys_root: Path | str | None, iface: str, _seen: set[str] | None = None) -> set[str]:
    """PCI functions under a network interface, through bridges/bonds/VLANs."""
    root = sysfs.sysfs_root(sys_root)
    seen = _seen if _seen is not None else set()
    if iface in seen:
        return set()
    seen.add(iface)
    nd = root / "class" / "net" / iface
    found: set[str] = set()
    if (nd / "device").exists():
        a = sysfs.pci_address_of(nd / "device")
        if a:
            found.add(a)
    lowers = [p.name[len("lower_") :] for p in _glob(nd, "lower_*")]
    lowers += [p.name for p in _glob(nd / "brif", "*")]
    for low in lowers:
        found |= interface_pci_devices(root, low, seen)
    return found


def _glob(d: Path, pattern: str) -> list[Path]:
    try:
        return sorted(d.glob(pattern))
    except OSError:
        return []


def enslaved_interfaces(sys_root: Path | str | None = None) -> dict[str, str]:
    """Interface -> master (bridge/bond) for every enslaved physical interface."""
    root = sysfs.sysfs_root(sys_root)
    out = {}
    for nd in _glob(root / "class" / "net", "*"):
        master = sysfs.link_name(nd / "master")
        if master:
            out[nd.name] = master
    return out


# Storage ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    mountpoint: str
    majmin: str | None
    source: str
    fstype: str


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def read_mounts(proc: Path | str | None = None) -> list[Mount]:
    """Mounts of the host: ``<proc>/1/mountinfo`` (the host's init when the host /proc is mounted with
    hostPID) and ``<proc>/self/mountinfo``; falls back to ``<proc>/mounts``."""
    proc = sysfs.proc_root(proc)
    mounts: list[Mount] = []
    for path in (proc / "1" / "mountinfo", proc / "self" / "mountinfo"):
        for line in (sysfs.read_attr(path) or "").splitlines():
            f = line.split()
            if "-" not in f:
                continue
            sep = f.index("-")
            if len(f) < sep + 3 or len(f) < 5:
                continue
            mounts.append(Mount(_unescape(f[4]), f[2], _unescape(f[sep + 2]), f[sep + 1]))
    if not mounts:
        for line in (sysfs.read_attr(proc / "mounts") or "").splitlines():
            f = line.split()
            if len(f) >= 3:
                mounts.append(Mount(_unescape(f[1]), None, _unescape(f[0]), f[2]))
    return mounts


def block_device_pci(sys_root: Path | str | None, majmin: str | None, source: str | None, _depth: int = 0) -> set[str]:
    """PCI controllers behind a block device (by ``maj:min`` or ``/dev/<name>``), through dm/md slaves."""
    root = sysfs.sysfs_root(sys_root)
    node: Path | None = None
    if majmin and majmin.split(":")[0] != "0" and (root / "dev" / "block" / majmin).exists():
        node = root / "dev" / "block" / majmin
    elif source and source.startswith("/dev/"):
        name = os.path.basename(source)
        if (root / "class" / "block" / name).exists():
            node = root / "class" / "block" / name
    if node is None or _depth > 8:
        return set()
    found: set[str] = set()
    a = sysfs.pci_address_of(node)
    if a:
        found.add(a)
    real = Path(os.path.realpath(node))
    for slave in _glob(real, "slaves/*") + _glob(real.parent, "slaves/*"):
        found |= block_device_pci(root, None, "/dev/" + slave.name, _depth + 1)
    return found


def swap_devices(proc: Path | str | None = None) -> list[str]:
    out = []
    for line in (sysfs.read_attr(sysfs.proc_root(proc) / "swaps") or "").splitlines()[1:]:
        f = line.split()
        if f and f[0].startswith("/dev/"):
            out.append(f[0])
    return out


# Denylist --------------------------------------------------------------------------------------


def parse_denylist(text: str | Iterable[str]) -> tuple[str, ...]:
    """Entries separated by commas, whitespace or newlines; ``#`` starts a comment.

    ``0000:00:02.0`` / ``00:02.0`` (address), ``8086:46d0`` (vendor:device), ``class:0106`` (class prefix).
    """
    lines = text.splitlines() if isinstance(text, str) else list(text)
    out: list[str] = []
    for line in lines:
        line = line.split("#", 1)[0]
        for tok in line.replace(",", " ").split():
            tok = tok.strip().lower()
            if not tok:
                continue
            if "." in tok:
                tok = sysfs.normalize_address(tok)
            out.append(tok)
    return tuple(out)


def load_denylist(env: Mapping[str, str]) -> tuple[str, ...]:
    """The operator's denylist from ``$K3SVIRT_PCI_DENYLIST`` and the file ``$K3SVIRT_PCI_DENYLIST_FILE``
    (config.Settings reads it once, at start-up)."""
    entries = list(parse_denylist(env.get(DENYLIST_ENV, "")))
    path = env.get(DENYLIST_FILE_ENV)
    if path:
        with contextlib.suppress(OSError):
            entries += parse_denylist(Path(path).read_text())
    return tuple(entries)


def denylist_match(dev: Mapping[str, Any], denylist: Iterable[str]) -> str | None:
    """The first denylist entry matching an inventory entry, else ``None``."""
    for entry in denylist:
        if entry.startswith("class:"):
            if (dev.get("classId") or "").startswith(entry[6:]):
                return entry
        elif "." in entry:
            if dev.get("address") == entry:
                return entry
        elif ":" in entry:
            v, d = entry.split(":", 1)
            if dev.get("vendorId") == v and dev.get("deviceId") == d:
                return entry
    return None


# Putting it together ---------------------------------------------------------------------------


def _add(d: dict[str, str], addrs: Iterable[str], why: str) -> None:
    for a in addrs:
        d[a] = f"{d[a]}; {why}" if a in d and why not in d[a] else why


def gather_host_facts(sys_root: Path | str | None = None, proc_root: Path | str | None = None) -> HostFacts:
    """Read everything :func:`~k3svirt_operator.pci.binding.plan_bind` needs to know about the host."""
    root = sysfs.sysfs_root(sys_root)
    proc = sysfs.proc_root(proc_root)
    critical: dict[str, str] = {}
    busy: dict[str, str] = {}
    for iface in default_route_interfaces(proc):
        _add(critical, interface_pci_devices(root, iface), f"carries the default route (interface {iface})")
    for m in read_mounts(proc):
        addrs = block_device_pci(root, m.majmin, m.source)
        if not addrs:
            continue
        if m.mountpoint == "/":
            _add(critical, addrs, f"controller of the root filesystem ({m.source})")
        else:
            _add(busy, addrs, f"filesystem mounted at {m.mountpoint} ({m.source})")
    for dev in swap_devices(proc):
        _add(busy, block_device_pci(root, None, dev), f"swap on {dev}")
    for iface, master in enslaved_interfaces(root).items():
        _add(busy, interface_pci_devices(root, iface), f"interface {iface} is enslaved to {master}")
    for a in critical:
        busy.pop(a, None)
    try:
        drivers = frozenset(p.name for p in sysfs.pci_drivers_dir(root).iterdir())
    except OSError:
        drivers = frozenset()
    return HostFacts(
        iommu_enabled=discovery.iommu_enabled(root),
        iommu_group_count=discovery.iommu_group_count(root),
        cpu_vendor=discovery.cpu_vendor(proc),
        cmdline=tuple(discovery.kernel_cmdline(proc)),
        critical=critical,
        busy=busy,
        drivers=drivers,
    )


def iommu_problem(facts: HostFacts) -> tuple[str, str] | None:
    """``(reason, message)`` when VFIO passthrough cannot work on this host, else ``None``."""
    if facts.iommu_enabled:
        return None
    if facts.is_intel and not facts.intel_iommu_on:
        return (
            "IntelIOMMUMissingFromCmdline",
            "no IOMMU groups exist and intel_iommu=on is missing from the kernel command line: "
            "enable VT-d in the firmware, add 'intel_iommu=on iommu=pt' to the kernel command line "
            "and reboot",
        )
    hint = (
        "enable VT-d in the firmware (intel_iommu=on is already on the command line)"
        if facts.is_intel
        else "enable the IOMMU (VT-d / AMD-Vi) in the firmware and on the kernel command line"
    )
    return ("IOMMUDisabled", f"no IOMMU groups exist in /sys/kernel/iommu_groups: {hint}, then reboot")


def host_use(address: str, dev: Mapping[str, Any], facts: HostFacts, denylist: Iterable[str]) -> list[str]:
    """Why the host needs this device (empty when it does not): for the inventory's ``hostUse``."""
    out = []
    if address in facts.critical:
        out.append(facts.critical[address])
    if address in facts.busy:
        out.append(facts.busy[address])
    entry = denylist_match(dev, denylist)
    if entry:
        out.append(f"denylisted by operator configuration ({entry})")
    return out
