"""Low-level access to a sysfs-shaped tree and a procfs-shaped tree.

Everything here takes an explicit root so that the same code reads the real ``/sys`` and
``/proc`` of a node and the fixture trees the tests build. The roots default to ``/sys`` and
``/proc``; the operator passes its settings' (``K3SVIRT_SYSFS_ROOT``, ``K3SVIRT_PROC_ROOT``: in the
DaemonSet the host's trees are mounted and these point at them).

Writes go through one function, :func:`write_attr`, whose signature is the ``Writer`` protocol:
the binding executor takes a writer argument so tests can observe (and react to) the exact
sequence of sysfs writes while the executor runs its real code path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

# "0000:03:00.0" (domain:bus:slot.function); the domain may be omitted on input.
_ADDR_RE = re.compile(r"^(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")
_FULL_ADDR_RE = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")

Writer = Callable[[Path, str], None]


def sysfs_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The sysfs root to use: ``root`` if given, else ``/sys``."""
    return Path(root if root is not None else "/sys")


def proc_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The procfs root to use: ``root`` if given, else ``/proc``."""
    return Path(root if root is not None else "/proc")


def normalize_address(address: str) -> str:
    """Return the canonical lower-case ``dddd:bb:ss.f`` form; accept ``bb:ss.f`` (domain 0000).

    Raises ``ValueError`` for anything that is not a PCI address.
    """
    m = _ADDR_RE.match(address.strip())
    if not m:
        raise ValueError(f"not a PCI address: {address!r}")
    dom, bus, slot, fn = m.groups()
    return f"{(dom or '0000').lower()}:{bus.lower()}:{slot.lower()}.{fn}"


def is_pci_address(name: str) -> bool:
    """True if ``name`` is a canonical PCI address (as sysfs spells directory names)."""
    return bool(_FULL_ADDR_RE.match(name))


def address_parts(address: str) -> dict[str, str]:
    """Split an address into the hex strings libvirt's ``<address>`` element wants.

    ``"0000:03:00.1"`` -> ``{"domain": "0x0000", "bus": "0x03", "slot": "0x00", "function": "0x1"}``.
    """
    addr = normalize_address(address)
    dom, bus, rest = addr.split(":")
    slot, fn = rest.split(".")
    return {"domain": f"0x{dom}", "bus": f"0x{bus}", "slot": f"0x{slot}", "function": f"0x{fn}"}


def read_attr(path: Path) -> str | None:
    """Read a sysfs attribute, stripped; ``None`` if it does not exist or cannot be read."""
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def read_hex_id(path: Path) -> str | None:
    """Read an attribute like ``0x8086`` and return ``"8086"`` (lower-case, no prefix)."""
    raw = read_attr(path)
    if not raw:
        return None
    raw = raw.lower()
    return raw[2:] if raw.startswith("0x") else raw


def read_int(path: Path) -> int | None:
    raw = read_attr(path)
    if raw is None:
        return None
    try:
        return int(raw, 0)
    except ValueError:
        return None


def link_name(path: Path) -> str | None:
    """The last component of a symlink's target (e.g. the driver name behind ``driver``)."""
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def pci_address_of(path: Path) -> str | None:
    """The PCI device a sysfs path belongs to: the last PCI-address component of its real path.

    Works for ``class/net/<if>/device`` (which may point at a virtio child of the PCI function),
    ``class/block/<disk>``, ``dev/block/<maj:min>`` and so on. ``None`` for virtual devices.
    """
    try:
        real = os.path.realpath(path)
    except OSError:
        return None
    found = None
    for part in Path(real).parts:
        if is_pci_address(part):
            found = part
    return found


def write_attr(path: Path, value: str) -> None:
    """Write one value to one sysfs attribute (the single place the executor writes)."""
    with open(path, "w") as fh:
        fh.write(value)


# Paths inside a sysfs root -------------------------------------------------------------------


def pci_devices_dir(root: Path) -> Path:
    return root / "bus" / "pci" / "devices"


def pci_device_dir(root: Path, address: str) -> Path:
    return pci_devices_dir(root) / address


def pci_drivers_dir(root: Path) -> Path:
    return root / "bus" / "pci" / "drivers"


def iommu_groups_dir(root: Path) -> Path:
    return root / "kernel" / "iommu_groups"
