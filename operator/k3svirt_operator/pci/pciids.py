"""Human-readable names from the pci.ids database (Debian package ``pci.ids``, pulled in by ``pciutils``).

Looked up in ``$K3SVIRT_PCI_IDS``, then ``/usr/share/misc/pci.ids``, ``/usr/share/hwdata/pci.ids``,
``/usr/share/pci.ids``. Without the file, device names are ``None`` but class names still come from
the small built-in table below (the PCI class codes are fixed by the PCI-SIG).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

DEFAULT_PATHS = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids")

# Base classes and the subclasses that matter on a router/virtualization host.
BUILTIN_CLASSES: dict[str, str] = {
    "00": "Unclassified device",
    "01": "Mass storage controller",
    "0101": "IDE interface",
    "0104": "RAID bus controller",
    "0106": "SATA controller",
    "0107": "Serial Attached SCSI controller",
    "0108": "Non-Volatile memory controller",
    "02": "Network controller",
    "0200": "Ethernet controller",
    "0280": "Network controller",
    "03": "Display controller",
    "0300": "VGA compatible controller",
    "0380": "Display controller",
    "04": "Multimedia controller",
    "0403": "Audio device",
    "05": "Memory controller",
    "06": "Bridge",
    "0600": "Host bridge",
    "0601": "ISA bridge",
    "0604": "PCI bridge",
    "0680": "Bridge",
    "07": "Communication controller",
    "08": "Generic system peripheral",
    "0c": "Serial bus controller",
    "0c03": "USB controller",
    "0c05": "SMBus",
    "11": "Signal processing controller",
    "12": "Processing accelerators",
    "ff": "Unassigned class",
}


@dataclass
class PciIds:
    vendors: dict[str, str] = field(default_factory=dict)
    devices: dict[tuple[str, str], str] = field(default_factory=dict)
    subsystems: dict[tuple[str, str, str, str], str] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)

    def vendor_name(self, vendor: str | None) -> str | None:
        return self.vendors.get(vendor) if vendor else None

    def device_name(self, vendor: str | None, device: str | None) -> str | None:
        return self.devices.get((vendor, device)) if vendor and device else None

    def subsystem_name(
        self, vendor: str | None, device: str | None, sub_vendor: str | None, sub_device: str | None
    ) -> str | None:
        if not (vendor and device and sub_vendor and sub_device):
            return None
        return self.subsystems.get((vendor, device, sub_vendor, sub_device))

    def class_name(self, class_code: str | None) -> str | None:
        """Name for a 6-hex-digit class code (``"020000"``): the subclass name, else the base class."""
        if not class_code:
            return None
        code = class_code.lower()
        for key in (code[:4], code[:2]):
            name = self.classes.get(key) or BUILTIN_CLASSES.get(key)
            if name:
                return name
        return None


def parse_pci_ids(text: str) -> PciIds:
    """Parse the pci.ids format (vendors/devices/subsystems, then ``C`` class blocks)."""
    ids = PciIds()
    vendor = device = None
    cls = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("C "):
            parts = line[2:].split(None, 1)
            cls, vendor, device = parts[0].lower(), None, None
            if len(parts) == 2:
                ids.classes[cls] = parts[1].strip()
            continue
        if not line.startswith("\t"):
            parts = line.split(None, 1)
            if len(parts) == 2 and len(parts[0]) == 4:
                vendor, device, cls = parts[0].lower(), None, None
                ids.vendors[vendor] = parts[1].strip()
            else:
                vendor = device = cls = None
            continue
        if line.startswith("\t\t"):
            body = line[2:]
            if vendor and device:
                parts = body.split(None, 2)
                if len(parts) == 3:
                    ids.subsystems[(vendor, device, parts[0].lower(), parts[1].lower())] = parts[2].strip()
            continue
        body = line[1:]
        parts = body.split(None, 1)
        if len(parts) != 2:
            continue
        if cls is not None:
            ids.classes[cls + parts[0].lower()] = parts[1].strip()
        elif vendor:
            device = parts[0].lower()
            ids.devices[(vendor, device)] = parts[1].strip()
    return ids


def find_pci_ids_file(configured: str | None = None) -> Path | None:
    candidates = [configured] if configured else []
    candidates += list(DEFAULT_PATHS)
    for c in candidates:
        p = Path(c)
        if p.is_file():
            return p
    return None


@lru_cache(maxsize=4)
def _load(path: str | None) -> PciIds:
    if path is None:
        return PciIds()
    try:
        return parse_pci_ids(Path(path).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return PciIds()


def load_pci_ids(configured: str | None = None) -> PciIds:
    """The (cached) database; empty when no pci.ids file is installed. ``configured``: the node's
    K3SVIRT_PCI_IDS (Settings.pci.ids_file), looked up first."""
    p = find_pci_ids_file(configured)
    return _load(str(p) if p else None)
