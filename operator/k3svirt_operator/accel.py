"""Decides whether this node's VMs run on KVM or under software emulation (TCG).

/dev/kvm existing is not enough: nested guests can hang in early boot (seen: the kernel's real-mode
setup runs, the switch to protected mode never returns), and QEMU may lack permission to open it.
So the probe boots a Linux kernel of the host under KVM with an early serial console and trusts KVM
only when the kernel's banner shows up in time. The result is cached per boot of the host.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

import libvirt

log = logging.getLogger(__name__)

# Printed by the kernel once it runs in long mode: past the point where nested KVM hangs.
MARKER = b"Linux version"
PROBE_CMDLINE = "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1 loglevel=4"


@dataclass(frozen=True)
class Acceleration:
    domain_type: str  # "kvm" or "qemu"
    reason: str

    @property
    def label(self) -> str:
        """The word shown in VM status: kvm or emulation."""
        return "kvm" if self.domain_type == "kvm" else "emulation"


def probe_kernel(storage_root: Path, configured: str = "") -> Path | None:
    """A kernel to probe with: the configured one (K3SVIRT_PROBE_KERNEL), the running one, any in
    /boot, the test guest's."""
    candidates = [configured, f"/boot/vmlinuz-{os.uname().release}"]
    candidates += sorted(str(p) for p in Path("/boot").glob("vmlinuz*"))
    candidates.append(str(storage_root / "guest" / "vmlinuz"))
    for c in candidates:
        if c and os.access(c, os.R_OK) and os.path.getsize(c) > 0:
            return Path(c)
    return None


def probe_domain_xml(name: str, kernel: Path, log_file: Path, domain_type: str = "kvm") -> str:
    dom = ET.Element("domain", type=domain_type)
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = "96"
    ET.SubElement(dom, "vcpu").text = "1"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_el, "kernel").text = str(kernel)
    ET.SubElement(os_el, "cmdline").text = PROBE_CMDLINE
    ET.SubElement(dom, "on_reboot").text = "destroy"
    devices = ET.SubElement(dom, "devices")
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "log", file=str(log_file), append="off")
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")


def _kvm_offered(conn: libvirt.virConnect) -> bool:
    try:
        caps = ET.fromstring(conn.getCapabilities())
    except libvirt.libvirtError:
        return False
    return any(d.get("type") == "kvm" for d in caps.iter("domain"))


def probe(
    conn: libvirt.virConnect, workdir: Path, timeout: float = 10.0, *, forced: str = "auto", kernel_path: str = ""
) -> Acceleration:
    """Boots the probe sector under KVM; falls back to emulation with the reason why.

    ``forced``: K3SVIRT_ACCEL (kvm or qemu skip the probe); ``kernel_path``: K3SVIRT_PROBE_KERNEL.
    """
    if forced in ("kvm", "qemu"):
        return Acceleration(forced, f"forced by K3SVIRT_ACCEL={forced}")
    if not os.path.exists("/dev/kvm"):
        return Acceleration("qemu", "/dev/kvm does not exist (no VT-x/AMD-V, or kvm modules not loaded)")
    if not _kvm_offered(conn):
        return Acceleration("qemu", "libvirt offers no kvm domain type on this host")
    kernel = probe_kernel(workdir, kernel_path)
    if kernel is None:
        return Acceleration("qemu", "no readable kernel to probe KVM with (set K3SVIRT_PROBE_KERNEL)")
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)
    log_file = workdir / "accel-probe.log"
    log_file.unlink(missing_ok=True)
    name = f"k3svirt-accel-probe-{uuid.uuid4().hex[:8]}"
    try:
        dom = conn.createXML(probe_domain_xml(name, kernel, log_file), 0)
    except libvirt.libvirtError as exc:
        return Acceleration("qemu", f"a KVM guest could not start: {exc.get_error_message()}")
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log_file.exists() and MARKER in log_file.read_bytes():
                return Acceleration("kvm", f"a KVM guest booted {kernel.name} to its banner")
            time.sleep(0.1)
        return Acceleration(
            "qemu",
            f"a KVM guest did not boot {kernel.name} to its banner within "
            f"{timeout:g} s (nested virtualization that hangs in early boot?)",
        )
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def detect(
    conn: libvirt.virConnect, state_dir: Path, timeout: float = 10.0, *, forced: str = "auto", kernel_path: str = ""
) -> Acceleration:
    """probe() once per host boot; the answer is kept in state_dir/acceleration.json."""
    cache = state_dir / "acceleration.json"
    try:
        saved = json.loads(cache.read_text())
        if saved.get("boot_id") == _boot_id() and saved.get("forced") == forced:
            return Acceleration(saved["domain_type"], saved["reason"])
    except (OSError, ValueError, KeyError):
        pass
    result = probe(conn, state_dir, timeout, forced=forced, kernel_path=kernel_path)
    log.info("acceleration decided", extra={"domain_type": result.domain_type, "reason": result.reason})
    state_dir.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({**asdict(result), "boot_id": _boot_id(), "forced": forced}))
    return result


if __name__ == "__main__":
    import argparse

    from .config import Settings

    settings = Settings.from_env()  # the operator's own settings: the same answer it would get
    parser = argparse.ArgumentParser(description="Print kvm or qemu: the domain type this host can run.")
    parser.add_argument("--uri", default=settings.libvirt_uri)
    parser.add_argument("--state-dir", default=str(settings.storage_root))
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--fresh", action="store_true", help="ignore the cached answer")
    args = parser.parse_args()
    c = libvirt.open(args.uri)
    state = Path(args.state_dir)
    if args.fresh:
        (state / "acceleration.json").unlink(missing_ok=True)
    acc = detect(c, state, args.timeout, forced=settings.accel, kernel_path=settings.probe_kernel)
    print(f"{acc.domain_type}\t{acc.reason}")
