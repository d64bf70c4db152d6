"""Tiny real guest for libvirt tests: Debian cloud kernel + busybox initramfs.

Self-contained on purpose (the lead will move it into the shared test harness later).

    kernel = find_kernel()
    initrd = build_initramfs(work_dir, "while true; do :; done")
    disk = make_disk(work_dir / "disk.raw", size_mib=16)
    xml = domain_xml("k3svirt-unittest-x", kernel, initrd, disk=disk, serial_log=work_dir / "serial.log")

The generated ``/init`` mounts proc/sys/dev, installs busybox applets, loads the virtio modules the
cloud kernel builds as modules (virtio_blk, virtio_net, virtio_balloon, ...), prints
``GUEST_MARKER`` on the serial console and then runs ``script`` (as ``/bin/sh`` code). When the
script returns the guest idles forever (init must never exit).

Files handed to libvirt must be reachable by the qemu user (``libvirt-qemu`` with dynamic ownership):
use :func:`make_work_dir`, not pytest's 0700 ``tmp_path``.
"""

from __future__ import annotations

import glob
import gzip
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

GUEST_MARKER = "K3SVIRT-GUEST-UP"
BUSYBOX = Path("/bin/busybox")

# Load order matters: dependencies first (see modules.dep). Missing files are skipped, so a kernel
# that builds a driver in (=y) still works.
VIRTIO_MODULES: tuple[str, ...] = (
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/drivers/net/virtio_net.ko",
    "kernel/drivers/virtio/virtio_balloon.ko",
)

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


def _decompress_module(src: Path, dst: Path) -> None:
    if src.suffix == ".xz":
        subprocess.run(["xz", "-dc", str(src)], check=True, stdout=dst.open("wb"))
    elif src.suffix == ".zst":
        subprocess.run(["zstd", "-dc", str(src)], check=True, stdout=dst.open("wb"))
    elif src.suffix == ".gz":
        dst.write_bytes(gzip.decompress(src.read_bytes()))
    else:
        shutil.copyfile(src, dst)


def _module_builtin(kernel_release: str, module_rel: str) -> bool:
    """True when the kernel config builds this driver in (then there is nothing to insmod)."""
    config = Path(f"/boot/config-{kernel_release}")
    if not config.exists():
        return False
    symbol = {
        "virtio_ring": "CONFIG_VIRTIO",
        "virtio": "CONFIG_VIRTIO",
        "virtio_pci": "CONFIG_VIRTIO_PCI",
        "virtio_blk": "CONFIG_VIRTIO_BLK",
        "virtio_net": "CONFIG_VIRTIO_NET",
        "virtio_balloon": "CONFIG_VIRTIO_BALLOON",
        "failover": "CONFIG_FAILOVER",
        "net_failover": "CONFIG_NET_FAILOVER",
    }.get(Path(module_rel).name.removesuffix(".ko"))
    return bool(symbol) and f"{symbol}=y\n" in config.read_text()


INIT_PREAMBLE = """#!/bin/busybox sh
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp /run
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in {modules}; do
    [ -f "/lib/modules/$m" ] && insmod "/lib/modules/$m"
done
ip link set lo up
echo "{marker}" > /dev/ttyS0
"""

INIT_EPILOGUE = """
# init must never exit (kernel panic otherwise)
while true; do sleep 3600; done
"""


def build_initramfs(
    out_dir: str | os.PathLike[str],
    script: str,
    *,
    kernel_release: str | None = None,
    modules: tuple[str, ...] = VIRTIO_MODULES,
) -> Path:
    """Build ``<out_dir>/initramfs.cpio.gz`` running ``script`` after the standard preamble.

    ``script`` is POSIX sh run by busybox; it can use every busybox applet (dd, ping, udhcpc, ...).
    Returns the path of the gzip'd newc cpio archive.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if kernel_release is None:
        kernel_release = find_kernel()[1]
    moddir = Path("/lib/modules") / kernel_release
    with tempfile.TemporaryDirectory(prefix="k3svirt-initramfs-") as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        (root / "lib" / "modules").mkdir(parents=True)
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        (root / "bin" / "sh").symlink_to("busybox")
        loaded: list[str] = []
        for rel in modules:
            if _module_builtin(kernel_release, rel):
                continue
            src = next((moddir / (rel + ext) for ext in ("", ".xz", ".zst", ".gz")
                        if (moddir / (rel + ext)).exists()), None)
            if src is None:
                continue
            name = Path(rel).name
            _decompress_module(src, root / "lib" / "modules" / name)
            loaded.append(name)
        init = root / "init"
        init.write_text(
            INIT_PREAMBLE.format(modules=" ".join(loaded), marker=GUEST_MARKER)
            + "\n" + script + "\n" + INIT_EPILOGUE
        )
        init.chmod(0o755)
        files = subprocess.run(
            ["find", ".", "-mindepth", "1"], cwd=root, check=True, capture_output=True, text=True
        ).stdout
        archive = subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", "--owner=0:0"],
            cwd=root, input=files.encode(), check=True, capture_output=True,
        ).stdout
    out = out_dir / "initramfs.cpio.gz"
    out.write_bytes(gzip.compress(archive, compresslevel=1))
    out.chmod(0o644)
    return out


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
            f"<interface type='network'><source network={quoteattr(network)}/>"
            "<model type='virtio'/></interface>"
        )
    if serial_log is not None:
        devices.append(
            f"<serial type='file'><source path={quoteattr(str(serial_log))}/><target port='0'/></serial>"
        )
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


def wait_for_marker(serial_log: str | os.PathLike[str], marker: str = GUEST_MARKER,
                    timeout: float = 120.0, domain: Any | None = None) -> str:
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
