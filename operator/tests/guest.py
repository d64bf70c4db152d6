"""Tiny real guest for libvirt tests: Debian cloud kernel + busybox initramfs.

The initramfs is the harness's tiny guest (tests/harness/tiny_guest.py) with a script baked in.

    kernel = find_kernel()
    initrd = build_initramfs(work_dir, "while true; do :; done")
    disk = make_disk(work_dir / "disk.raw", size_mib=16)
    xml = domain_xml("k3svirt-unittest-x", kernel, initrd, disk=disk, serial_log=work_dir / "serial.log")

Its ``/init`` mounts proc/sys/dev, loads the virtio modules, prints ``GUEST_MARKER`` on the serial
console and runs ``script`` (``/bin/sh`` code) in the background.

Files handed to libvirt must be reachable by the qemu user (``libvirt-qemu`` with dynamic ownership):
use :func:`make_work_dir`, not pytest's 0700 ``tmp_path``.
"""

from __future__ import annotations

import glob
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

# The one tiny-guest builder lives in the harness; these helpers only add libvirt glue around it.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "harness"))
import tiny_guest  # noqa: E402

GUEST_MARKER = tiny_guest.MARKER

K3SVIRT_XMLNS = "https://k3svirt.io/xmlns/domain/v1"


def find_kernel() -> tuple[Path, str]:
    """Return (vmlinuz path, kernel release) of an installed Debian cloud kernel.

    Prefers the running kernel's release when it is a cloud kernel.
    """
    running = platform.release()
    candidates = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))
    if not candidates:
        raise FileNotFoundError("no /boot/vmlinuz-*-cloud-amd64 installed")
    for path in candidates:
        if path.endswith(running):
            return Path(path), running
    path = candidates[-1]
    return Path(path), path.removeprefix("/boot/vmlinuz-")


def build_initramfs(out_dir: str | os.PathLike[str], script: str, **_: Any) -> Path:
    """``<out_dir>/initramfs.img``: the harness's tiny guest (tests/harness/tiny_guest.py, the one
    initramfs builder) with ``script`` baked in; it runs in the background after ``GUEST_MARKER``."""
    return tiny_guest.build(Path(out_dir), script=script)[1]


def make_work_dir(prefix: str = "k3svirt-unittest-") -> Path:
    """A fresh directory the qemu user can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    path.chmod(0o755)
    return path


def make_disk(path: str | os.PathLike[str], size_mib: int = 16, fmt: str = "raw") -> Path:
    path = Path(path)
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), f"{size_mib}M"], check=True)
    path.chmod(0o666)
    return path


def vm_metadata_xml(namespace: str, name: str, uid: str = "", generation: int = 1) -> str:
    """The ``<k3svirt:vm>`` element the domain XML builder writes into ``<metadata>``."""
    return (
        f'<k3svirt:vm xmlns:k3svirt="{K3SVIRT_XMLNS}" namespace={quoteattr(namespace)} '
        f'name={quoteattr(name)} uid={quoteattr(uid)} generation="{generation}"/>'
    )


def domain_xml(
    name: str,
    kernel: str | os.PathLike[str],
    initrd: str | os.PathLike[str],
    *,
    disk: str | os.PathLike[str] | None = None,
    disk_format: str = "raw",
    network: str | None = "default",
    memory_mib: int = 96,  # the Debian cloud kernel needs >= ~72 MiB
    vcpus: int = 1,
    serial_log: str | os.PathLike[str] | None = None,
    metadata: str | None = None,
    domain_type: str = "qemu",
    cmdline: str = "console=ttyS0 panic=-1 loglevel=4",
    balloon_period: int | None = 2,
    uuid: str | None = None,
    tcg_tb_cache_mib: int | None = None,
) -> str:
    """Domain XML for a direct-kernel-boot guest (TCG by default: nested KVM is unreliable here)."""
    devices = []
    if disk is not None:
        devices.append(
            f"<disk type='file' device='disk'><driver name='qemu' type='{disk_format}' cache='none'/>"
            f"<source file={quoteattr(str(disk))}/><target dev='vda' bus='virtio'/></disk>"
        )
    if network is not None:
        devices.append(
            f"<interface type='network'><source network={quoteattr(network)}/><model type='virtio'/></interface>"
        )
    if serial_log is not None:
        devices.append(f"<serial type='file'><source path={quoteattr(str(serial_log))}/><target port='0'/></serial>")
    else:
        devices.append("<serial type='pty'><target port='0'/></serial>")
    if balloon_period is not None:
        devices.append(f"<memballoon model='virtio'><stats period='{balloon_period}'/></memballoon>")
    else:
        devices.append("<memballoon model='none'/>")
    meta = f"<metadata>{metadata}</metadata>" if metadata else ""
    tcg = ""
    if tcg_tb_cache_mib and domain_type == "qemu":  # shrink TCG's translation cache (default 1 GiB)
        tcg = f"<tcg><tb-cache unit='MiB'>{tcg_tb_cache_mib}</tb-cache></tcg>"
    uuid_el = f"<uuid>{uuid}</uuid>" if uuid else ""
    return f"""<domain type='{domain_type}'>
  <name>{name}</name>{uuid_el}
  {meta}
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>{vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/>{tcg}</features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    {"".join(devices)}
  </devices>
</domain>
"""


def wait_for_marker(
    serial_log: str | os.PathLike[str], marker: str = GUEST_MARKER, timeout: float = 120.0, domain: Any | None = None
) -> str:
    """Poll the serial log until ``marker`` appears; return the log text.

    TimeoutError after ``timeout``; RuntimeError at once when ``domain`` (a libvirt.virDomain) is
    no longer active (e.g. the kernel died early: below ~72 MiB the Debian cloud kernel does).
    """
    import time

    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            text = Path(serial_log).read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        if marker in text:
            return text
        if domain is not None:
            try:
                active = domain.isActive()
            except Exception:  # libvirtError: domain gone (transient domains vanish when stopped)
                active = False
            if not active:
                raise RuntimeError(f"guest stopped before printing {marker!r}:\n{text[-3000:]}")
        time.sleep(0.5)
    raise TimeoutError(f"marker {marker!r} not seen on serial console after {timeout}s:\n{text[-3000:]}")
