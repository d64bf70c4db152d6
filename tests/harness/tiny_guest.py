"""Builds the tiny test guest once: Debian's cloud kernel plus a busybox initramfs.

The guest loads the virtio drivers, reads its cloud-init NoCloud seed if it has one (prints the
files, applies local-hostname), takes a DHCP lease on its first NIC, prints a marker line on
the serial console and leaves a shell there (so `virsh console` works). Boots to the marker in
about 3 s under software emulation.

usage: python tiny_guest.py OUT_DIR        prints OUT_DIR/vmlinuz and OUT_DIR/initramfs.img

Work for a test runs either from the kernel command line (k3svirt.run=<base64 sh>) or, baked into
the initramfs, from build(out_dir, script=...); both run in the background after the marker.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

MARKER = "K3SVIRT-GUEST-READY"
BUSYBOX = Path("/bin/busybox")
# Loaded in this order; their own dependencies are resolved from modules.dep.
MODULES = ["virtio_pci", "virtio_blk", "virtio_net", "virtio_balloon", "virtio_console", "button", "evdev", "isofs"]

INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp /run /mnt
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/modules); do insmod /lib/modules/$m.ko 2>/dev/null; done
hostname "$(sed -n 's/.*k3svirt.hostname=\\([^ ]*\\).*/\\1/p' /proc/cmdline)"
# The NoCloud seed, as cloud-init finds it: a block device labelled cidata. Its files go to the
# console line by line (so tests see exactly what arrived) and its local-hostname is applied.
d=$(findfs LABEL=cidata 2>/dev/null)
if [ -n "$d" ] && mount -t iso9660 -o ro "$d" /mnt; then
  for f in meta-data user-data network-config; do
    [ -f "/mnt/$f" ] && sed "s/^/K3SVIRT-SEED $f: /" "/mnt/$f"
  done
  h=$(sed -n 's/^local-hostname: *//p' /mnt/meta-data | tr -d '\\042\\047')
  [ -n "$h" ] && hostname "$h"
  echo "K3SVIRT-SEED-HOSTNAME $(hostname)"
  umount /mnt
fi
ip link set lo up
for n in /sys/class/net/e*; do
  [ -e "$n" ] || continue
  ip link set "${{n##*/}}" up
  udhcpc -i "${{n##*/}}" -b -q -t 5 -s /etc/udhcpc.script >/dev/null 2>&1 &
done
# The ACPI power button (virsh shutdown, the operator's graceful stop and delete) powers it off.
mkdir -p /var/log /var/run && acpid -c /etc/acpi -l /var/log/acpid.log
echo "{MARKER} $(uname -r)"
# Extra work a test asks for, passed as k3svirt.run=<base64 shell script> on the kernel cmdline.
run=$(sed -n 's/.*k3svirt.run=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
[ -n "$run" ] && echo "$run" | base64 -d > /tmp/run.sh && sh /tmp/run.sh &
[ -f /etc/k3svirt-run.sh ] && sh /etc/k3svirt-run.sh &
while true; do setsid cttyhack sh; done
"""

POWER_BUTTON = """#!/bin/sh
echo "K3SVIRT-GUEST-POWEROFF" > /dev/console
sync
poweroff -f
"""

UDHCPC = """#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    echo "K3SVIRT-GUEST-IP $interface $ip" > /dev/console ;;
esac
"""


def _kernel() -> tuple[Path, str]:
    kernels = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"))
    if not kernels:
        sys.exit("no Debian cloud kernel in /boot: install linux-image-cloud-amd64 (tests/harness/deps.sh)")
    kernel = kernels[-1]
    return kernel, kernel.name.removeprefix("vmlinuz-")


def _module_files(release: str) -> list[Path]:
    """The module files for MODULES with their dependencies, in load order."""
    base = Path("/lib/modules") / release
    deps: dict[str, list[str]] = {}
    for line in (base / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[Path(path).name.split(".ko")[0].replace("-", "_")] = [path, *rest.split()]
    ordered: list[Path] = []

    def add(path: str) -> None:
        name = Path(path).name.split(".ko")[0].replace("-", "_")
        for dep in deps[name][1:]:
            add(dep)
        if base / deps[name][0] not in ordered:
            ordered.append(base / deps[name][0])

    for mod in MODULES:
        if mod in deps:
            add(deps[mod][0])
    return ordered


def _cpio(root: Path) -> bytes:
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    proc = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"],
        cwd=root,
        input="\n".join(files).encode(),
        capture_output=True,
        check=True,
    )
    return proc.stdout


def _decompressed(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        import lzma

        return lzma.decompress(data)
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    return data


def build(out_dir: Path, script: str | None = None) -> tuple[Path, Path]:
    """(vmlinuz, initramfs.img) in out_dir, rebuilt only when an input changed."""
    kernel, release = _kernel()
    modules = _module_files(release)
    busybox = BUSYBOX.read_bytes().hex()[:64]
    inputs = INIT + UDHCPC + POWER_BUTTON + " ".join(MODULES) + release + busybox + (script or "")
    key = hashlib.sha256(inputs.encode()).hexdigest()[:12]
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = out_dir / ".stamp"
    vmlinuz, initrd = out_dir / "vmlinuz", out_dir / "initramfs.img"
    if stamp.exists() and stamp.read_text() == key and vmlinuz.exists() and initrd.exists():
        return vmlinuz, initrd
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("bin", "etc", "etc/acpi/PWRF", "lib/modules", "usr/share/udhcpc"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUSYBOX, root / "bin/busybox")
        names = []
        for mod in modules:
            name = mod.name.split(".ko")[0]
            (root / "lib/modules" / f"{name}.ko").write_bytes(_decompressed(mod))
            names.append(name)
        (root / "etc/modules").write_text("\n".join(names) + "\n")
        extra = [("etc/k3svirt-run.sh", script)] if script else []
        files = (("init", INIT), ("etc/udhcpc.script", UDHCPC), ("etc/acpi/PWRF/00000080", POWER_BUTTON))
        for rel, text in (*files, *extra):
            (root / rel).write_text(text)
            (root / rel).chmod(0o755 | stat.S_IFREG)
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
            gz.write(_cpio(root))
    initrd.write_bytes(buf.getvalue())
    shutil.copy2(kernel, vmlinuz)
    for p in (out_dir, vmlinuz, initrd):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)  # QEMU runs as libvirt-qemu and must read them
    stamp.write_text(key)
    return vmlinuz, initrd


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for path in build(Path(sys.argv[1])):
        print(path)
