"""A test machine with a real (emulated) IOMMU, built once from Debian packages and cached by version.

The machine is Debian bookworm made by mmdebstrap (Debian's generic kernel, which has intel-iommu,
vfio-pci, e1000e and 9p; python3; plain QEMU; libvirt; pciutils), an ext4 image made with
``mkfs.ext4 -d`` (no loop devices, no root-only mounts). The harness boots it under emulation (TCG:
nested KVM hangs here) on q35 with QEMU's ``intel-iommu`` (interrupt remapping, caching mode: what
VFIO inside needs) and three e1000e NICs, each behind its own PCIe root port and so in its own
IOMMU group, plus an SR-IOV capable emulated NVMe controller (the VF tests' physical function). The
first NIC carries the machine's default route (so the operator's safety refusal has something real
to refuse); all NICs use QEMU user networking with ``restrict=on`` and no forwards, so nothing
leaves this machine. Three 9p shares, no network: the repository (read-only), the tiny guest
(read-only, the inner VM's kernel + initramfs) and a job directory.

The machine's init (no systemd) mounts them and runs every ``jobs/<name>.sh`` that appears,
writing ``<name>.out`` and then ``<name>.rc``: :class:`Machine.run` is "run this shell script in
the machine", so one boot serves a whole test module.

usage: python iommu_machine.py build        build (or find) the cached image, print its directory
       python iommu_machine.py shell        boot it, run stdin as one job, print the output
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
MARKER = "K3SVIRT-IOMMU-READY"
# What the machine runs: its kernel + initramfs, python3 for the operator's PCI code, QEMU and
# libvirt for the VMs inside, pciutils for lspci/pci.ids, iproute2 for the routes the safety check reads,
# mount (not in the apt variant).
PACKAGES = [
    "linux-image-amd64",
    "initramfs-tools",
    "python3",
    "qemu-system-x86",
    "libvirt-daemon",
    "libvirt-daemon-driver-qemu",
    "libvirt-clients",
    "pciutils",
    "iproute2",
    "kmod",
    "mount",
    "procps",
    "psmisc",
]
IMAGE_BYTES = 3 * 1024**3
# The NICs: MAC, PCIe root port. The first carries the default route (QEMU's user network).
NICS = [("52:54:00:16:00:01", 1), ("52:54:00:16:00:02", 2), ("52:54:00:16:00:03", 3)]
# An SR-IOV physical function for the VF tests: QEMU 7.2 has no igb (SR-IOV NIC, 8.0+), but its
# emulated NVMe controller is SR-IOV capable and Linux's nvme driver creates VFs (sriov_numvfs,
# pci_sriov_configure_simple). Behind its own root port (ACS on: every VF gets its own IOMMU group).
# SR-IOV needs an NVM subsystem; the flexible queue/interrupt pools must cover max_vfs (x2 / x1).
# No namespace: nothing in the machine uses it as a disk.
SRIOV_VFS = 2
SRIOV_PORT = 4
SRIOV_NVME = [
    "-device", f"pcie-root-port,id=rp{SRIOV_PORT},chassis={SRIOV_PORT},slot={SRIOV_PORT}",
    "-device", "nvme-subsys,id=nvsub,nqn=k3svirt-sriov",
    "-device", f"nvme,serial=k3svirtsriov,subsys=nvsub,bus=rp{SRIOV_PORT},sriov_max_vfs={SRIOV_VFS},"
    f"sriov_vq_flexible={2 * SRIOV_VFS},sriov_vi_flexible={SRIOV_VFS}",
]  # fmt: skip

# PID 1 in the image is only this stub: it mounts the repository share and runs the machine's real
# init from it (tests/harness/iommu_init.sh), so changing that script never rebuilds the image.
INIT = """#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
modprobe 9pnet_virtio
mkdir -p /repo
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro repo /repo
exec /bin/sh /repo/tests/harness/iommu_init.sh
"""


def _mmdebstrap_args(root: Path) -> list[str]:
    return [
        "mmdebstrap",
        "--variant=apt",
        "--mode=root",
        '--aptopt=APT::Install-Recommends "false"',
        '--aptopt=Acquire::Languages "none"',
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--include=" + ",".join(PACKAGES),
        '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*',
        SUITE,
        str(root),
        MIRROR,
    ]


def cache_key() -> str:
    version = subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True).stdout
    inputs = "\n".join([SUITE, MIRROR, *PACKAGES, INIT, version, " ".join(_mmdebstrap_args(Path("/")))])
    return hashlib.sha256(inputs.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Image:
    kernel: Path
    initrd: Path
    rootfs: Path


def cache_dir() -> Path:
    base = os.environ.get("K3SVIRT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "k3svirt"
    )
    return Path(base) / "iommu-machine"


def build(out: Path | None = None) -> Image:
    """The cached image for this version of the inputs; built (about 5 minutes) when missing."""
    out = (out or cache_dir()) / cache_key()
    image = Image(out / "vmlinuz", out / "initrd.img", out / "rootfs.ext4")
    if all(p.exists() for p in (image.kernel, image.initrd, image.rootfs)):
        return image
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        root = Path(tmp) / "root"
        subprocess.run(_mmdebstrap_args(root), check=True, stdout=subprocess.DEVNULL)
        init = root / "sbin/k3svirt-init"
        init.write_text(INIT)
        init.chmod(0o755)
        (root / "etc/hostname").write_text("k3svirt-iommu\n")
        staged = Path(tmp) / "out"
        staged.mkdir()
        shutil.copy2(sorted(root.glob("boot/vmlinuz-*"))[-1], staged / "vmlinuz")
        shutil.copy2(sorted(root.glob("boot/initrd.img-*"))[-1], staged / "initrd.img")
        subprocess.run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                "k3svirt-iommu",
                "-d",
                str(root),
                str(staged / "rootfs.ext4"),
                str(IMAGE_BYTES // 1024) + "k",
            ],
            check=True,
        )
        if out.exists():
            shutil.rmtree(out)
        staged.rename(out)
    return image


@dataclass
class Machine:
    """One boot of the IOMMU machine; :meth:`run` executes shell scripts inside it."""

    image: Image
    work: Path
    repo: Path
    guest: Path
    cpus: int = 4
    memory_mib: int = 3072
    hugepages_1g: int = 1
    proc: subprocess.Popen[bytes] | None = None
    boot_seconds: float = 0.0
    _seq: int = field(default=0)

    @property
    def jobs(self) -> Path:
        return self.work / "jobs"

    @property
    def console(self) -> Path:
        return self.work / "console.log"

    def command(self) -> list[str]:
        cmdline = (
            # no_timer_check: on a loaded host the emulated timer misses the kernel's IO-APIC check (panic)
            f"root=/dev/vda rw console=ttyS0 init=/sbin/k3svirt-init intel_iommu=on iommu=pt "
            f"hugepagesz=1G hugepages={self.hugepages_1g} panic=-1 quiet no_timer_check"
        )
        cmd = [
            "qemu-system-x86_64",
            "-machine", "q35,kernel-irqchip=split",
            "-accel", "tcg,thread=multi",
            "-cpu", "max",
            "-smp", str(self.cpus),
            "-m", str(self.memory_mib),
            # the IOMMU first, so every PCI device below is created behind it
            "-device", "intel-iommu,intremap=on,caching-mode=on",
            "-kernel", str(self.image.kernel),
            "-initrd", str(self.image.initrd),
            "-append", cmdline,
            "-drive", f"file={self.image.rootfs},if=none,id=root,format=raw,snapshot=on",
            "-device", "virtio-blk-pci,drive=root",
        ]  # fmt: skip
        for mac, port in NICS:
            cmd += [
                "-device", f"pcie-root-port,id=rp{port},chassis={port},slot={port}",
                "-netdev", f"user,id=n{port},restrict=on",
                "-device", f"e1000e,netdev=n{port},bus=rp{port},mac={mac}",
            ]  # fmt: skip
        cmd += SRIOV_NVME
        for tag, path, ro in (("repo", self.repo, True), ("guest", self.guest, True), ("jobs", self.jobs, False)):
            opts = f"local,path={path},mount_tag={tag},security_model=none" + (",readonly=on" if ro else "")
            cmd += ["-virtfs", opts]
        cmd += ["-display", "none", "-monitor", "none", "-serial", f"file:{self.console}", "-no-reboot"]
        return cmd

    def start(self, timeout: float = 300) -> None:
        self.jobs.mkdir(parents=True, exist_ok=True)
        for p in self.jobs.iterdir():
            p.unlink()
        t0 = time.monotonic()
        with open(self.work / "qemu.log", "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stderr=log)
        while MARKER not in self.console_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"IOMMU machine exited with {self.proc.returncode}: {self.console_tail()}")
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise TimeoutError(f"IOMMU machine not up after {timeout:.0f}s: {self.console_tail()}")
            time.sleep(0.5)
        self.boot_seconds = time.monotonic() - t0

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def console_tail(self, lines: int = 30) -> str:
        return "\n".join(self.console_text().splitlines()[-lines:])

    def run(self, script: str, timeout: float = 600, name: str | None = None) -> tuple[int, str]:
        """(exit status, output) of ``script`` run by sh inside the machine."""
        assert self.proc is not None, "machine not started"
        self._seq += 1
        name = f"{self._seq:03d}-{name or 'job'}"
        tmp = self.jobs / f".{name}.tmp"
        tmp.write_text(script)
        tmp.rename(self.jobs / f"{name}.sh")
        rc_file = self.jobs / f"{name}.rc"
        deadline = time.monotonic() + timeout
        while not rc_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"IOMMU machine died during {name}: {self.console_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {name} not done after {timeout:.0f}s: {self.output(name)[-3000:]}")
            time.sleep(0.2)
        return int(rc_file.read_text().strip() or "255"), self.output(name)

    def output(self, name: str) -> str:
        try:
            return (self.jobs / f"{name}.out").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        (self.jobs / "poweroff").touch()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in ("build", "shell"):
        sys.exit(__doc__)
    image = build()
    if sys.argv[1] == "build":
        print(image.kernel.parent)
        return
    sys.path.insert(0, str(Path(__file__).parent))
    import tiny_guest

    work = Path(tempfile.mkdtemp(prefix="k3svirt-iommu-"))
    guest_dir = work / "guest"
    tiny_guest.build(guest_dir)
    machine = Machine(image, work, Path(__file__).resolve().parents[2], guest_dir)
    machine.start()
    print(f"booted in {machine.boot_seconds:.1f}s", file=sys.stderr)
    try:
        rc, out = machine.run(sys.stdin.read())
        print(out, end="")
        print(f"rc={rc}", file=sys.stderr)
    finally:
        machine.stop()


if __name__ == "__main__":
    _main()
