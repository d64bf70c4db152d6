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


class IndexedPciIds(PciIds):
    """pci.ids read on demand: the file's vendor blocks are indexed by byte offset once, and a lookup
    parses only its vendor's block (a few recently used blocks are kept). Parsing the whole file kept
    ~120000 objects, 8.5 MiB of the operator's heap (tracemalloc, bench/README.md) for the names of the
    few dozen devices a host has. The device classes (a few hundred) are parsed at once."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._offsets: dict[str, tuple[int, int]] = {}  # vendor id -> (start, end) of its block
        self._blocks: dict[str, PciIds] = {}  # parsed blocks, least recently used first
        with open(path, "rb") as fh:
            data = fh.read()
        tops: list[tuple[str | None, int]] = []  # every top-level line: (vendor id, or None for a class)
        pos = 0
        for line in data.splitlines(keepends=True):
            if line[:1] not in (b"\t", b"#") and line.strip():
                tops.append((None if line.startswith(b"C ") else line[:4].decode("ascii", "replace").lower(), pos))
            pos += len(line)
        classes: list[bytes] = []
        for i, (vendor, start) in enumerate(tops):
            end = tops[i + 1][1] if i + 1 < len(tops) else len(data)
            if vendor is None:
                classes.append(data[start:end])
            else:
                self._offsets[vendor] = (start, end)
        if classes:
            self.classes = parse_pci_ids(b"".join(classes).decode("utf-8", "replace")).classes

    KEPT_BLOCKS = 32

    def _block(self, vendor: str) -> PciIds:
        block = self._blocks.pop(vendor, None)
        if block is None:
            block = PciIds()
            span = self._offsets.get(vendor)
            if span is not None:
                try:
                    with open(self.path, "rb") as fh:
                        fh.seek(span[0])
                        block = parse_pci_ids(fh.read(span[1] - span[0]).decode("utf-8", "replace"))
                except OSError:
                    pass
            if len(self._blocks) >= self.KEPT_BLOCKS:
                self._blocks.pop(next(iter(self._blocks)))
        self._blocks[vendor] = block  # the most recently used last
        return block

    def vendor_name(self, vendor: str | None) -> str | None:
        return self._block(vendor.lower()).vendor_name(vendor.lower()) if vendor else None

    def device_name(self, vendor: str | None, device: str | None) -> str | None:
        if not (vendor and device):
            return None
        return self._block(vendor.lower()).device_name(vendor.lower(), device.lower())

    def subsystem_name(
        self, vendor: str | None, device: str | None, sub_vendor: str | None, sub_device: str | None
    ) -> str | None:
        if not (vendor and device and sub_vendor and sub_device):
            return None
        v, d, sv, sd = vendor.lower(), device.lower(), sub_vendor.lower(), sub_device.lower()
        return self._block(v).subsystem_name(v, d, sv, sd)


@lru_cache(maxsize=4)
def _load(path: str | None) -> PciIds:
    if path is None:
        return PciIds()
    try:
        return IndexedPciIds(path)
    except OSError:
        return PciIds()


def load_pci_ids(configured: str | None = None) -> PciIds:
    """The (cached) database; empty when no pci.ids file is installed. ``configured``: the node's
    K3SVIRT_PCI_IDS (Settings.pci.ids_file), looked up first."""
    p = find_pci_ids_file(configured)
    return _load(str(p) if p else None)
