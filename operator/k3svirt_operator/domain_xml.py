"""THE VirtualMachine spec -> libvirt domain XML builder (pure: no I/O, no libvirt calls).

    build_domain(ref, spec, ctx) -> BuiltDomain(xml, adjustments)

`spec` is the merged (template + presets + VM) spec; operator defaults are applied here again
(k3svirt_common.schema.apply_vm_defaults is idempotent). Node-side decisions come in through
DomainContext: acceleration, file paths, PCI addresses, firmware paths.

Emulation (ctx.domain_type 'qemu', i.e. QEMU TCG): host-passthrough needs KVM and host-model
describes the host CPU, which TCG does not emulate faithfully, so both are replaced according to
ctx.cpu_fallback: 'maximum' (default; libvirt <cpu mode='maximum'/>, QEMU's "max" CPU = every
feature TCG can emulate), 'omit' (libvirt/QEMU default model) or 'error' (DomainBuildError). Each
replacement is returned as an Adjustment(field, reason, message) that the operator puts into the
VM's conditions, so the user sees why the guest CPU differs from the spec.

Every device the builder adds carries a libvirt user alias ("ua-disk-<name>", "ua-net-<name>",
"ua-hostdev-<name>") so that live domain data maps back to spec entries; the domain UUID is the
VM's metadata.uid and the <metadata> holds <k3svirt:vm namespace= name= uid= generation= specHash=/>.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from k3svirt_common.names import XML_NAMESPACE, XML_PREFIX, domain_name
from k3svirt_common.quantity import parse_quantity
from k3svirt_common.schema import apply_vm_defaults

from .vmref import VMRef

__all__ = [
    "Adjustment",
    "BuiltDomain",
    "DiskPlacement",
    "DomainBuildError",
    "DomainContext",
    "VMRef",
    "build_domain",
    "default_mac",
    "device_aliases",
    "disk_targets",
    "live_shape_hash",
    "memory_kib",
    "parse_cpuset",
    "spec_hash",
    "vcpu_counts",
]

ITCO_MIN_LIBVIRT = 9_001_000  # <watchdog model='itco'/> appeared in libvirt 9.1.0


@dataclass(frozen=True)
class DiskPlacement:
    """Where a spec disk lives on the node. block=True for a block device (<source dev=>)."""

    path: str
    format: str | None = None  # None: spec.disks[].format
    block: bool | None = None  # None: True for paths under /dev/


@dataclass
class DomainContext:
    """Node decisions the builder needs; the operator fills it in."""

    domain_type: str = "kvm"  # 'kvm' or 'qemu' (TCG emulation)
    emulator: str | None = None  # e.g. /usr/bin/qemu-system-x86_64; None = libvirt's default
    # spec.disks[].name -> DiskPlacement, a plain path, or any object with .path/.format (storage.DiskResult)
    disks: Mapping[str, Any] = field(default_factory=dict)
    seed_iso: str | None = None  # cloud-init NoCloud ISO, attached read-only (see seed_bus)
    console_log: str | None = None  # serial console log file (virtlogd appends to it)
    host_devices: Mapping[str, str] = field(default_factory=dict)  # hostDevices[].name -> "0000:01:00.0"
    uefi_loader: str | None = None  # None with firmware uefi: libvirt firmware autoselection
    uefi_nvram: str | None = None  # per-VM NVRAM file (kept by deletionPolicy Retain)
    uefi_nvram_template: str | None = None
    tpm_available: bool = True  # swtpm installed on the node
    cpu_fallback: str = "maximum"  # under emulation: 'maximum' | 'omit' | 'error'
    libvirt_version: int | None = None  # conn.getLibVersion(); None = assume current
    machine: str = "q35"
    arch: str = "x86_64"
    graphics_listen: str = "127.0.0.1"
    guest_agent_channel: bool = True
    tcg_tb_cache_mib: int = 0  # under emulation: TCG translation cache size; 0 = QEMU's default (1 GiB)
    # The node's shared CPU pool (cpupool.py), e.g. "1-7": where a VM without dedicated cores runs
    # (<vcpu cpuset>: its vCPUs and, unless emulatorCpuSet pins them, its emulator threads); None = every CPU.
    shared_cpus: str | None = None


@dataclass(frozen=True)
class Adjustment:
    """A spec value the builder had to change for this node (reported in VM conditions)."""

    field: str
    reason: str  # CamelCase
    message: str


@dataclass(frozen=True)
class BuiltDomain:
    xml: str
    adjustments: list[Adjustment]


class DomainBuildError(ValueError):
    """The spec cannot be turned into a domain on this node; `field` names the culprit."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field = field_path
        self.message = message


# --- helpers -------------------------------------------------------------------------------------


def parse_cpuset(value: str) -> list[int]:
    """ "2-5,7" -> [2, 3, 4, 5, 7] (order kept) of a cpuset the CRD schema has checked: its pattern
    (at most four digits per number) and CEL rules (CPU numbers <= 8191, ranges lo <= hi, no CPU
    twice, at least one CPU per vCPU) run in the API server, the gateway and on the merged spec
    (templates.validate_merged) before the builder sees it."""
    out: list[int] = []
    for part in filter(None, str(value).split(",")):  # sysfs lists can be empty
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def default_mac(uid: str, network_name: str) -> str:
    """A stable locally-administered-range MAC (52:54:00:xx:xx:xx) for an interface without one."""
    h = hashlib.sha256(f"{uid}/{network_name}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in h[:3])


def spec_hash(spec: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a (merged) spec; stored in the domain metadata."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def domain_spec_hash(spec: Mapping[str, Any]) -> str:
    """spec_hash() of the fields that shape the domain: a runStrategy change is no restart, nor a
    disk's size (the disk is grown in place, live while the domain runs: VMReconciler._grow_disks)."""
    shaping = {k: v for k, v in spec.items() if k not in NON_DOMAIN_FIELDS}
    if isinstance(shaping.get("disks"), list):
        shaping["disks"] = [{k: v for k, v in d.items() if k != "size"} if isinstance(d, dict) else d
                            for d in shaping["disks"]]  # fmt: skip
    return spec_hash(shaping)


def live_shape_hash(spec: Mapping[str, Any]) -> str:
    """domain_spec_hash() without what a running guest can take live: memory.size when memory.maxSize
    is set (the balloon moves below the maximum) and cpu.sockets when cpu.maxVcpus is set (vCPUs are
    hot-plugged up to the maximum). Two specs with the same shape differ only in those."""
    shape = {k: copy.deepcopy(v) for k, v in spec.items() if k not in NON_DOMAIN_FIELDS}
    if (shape.get("memory") or {}).get("maxSize"):
        shape["memory"].pop("size", None)
    if (shape.get("cpu") or {}).get("maxVcpus"):
        shape["cpu"].pop("sockets", None)
    return spec_hash(shape)


def vcpu_counts(spec: Mapping[str, Any]) -> tuple[int, int]:
    """(vCPUs the guest runs with, the most it can be hot-plugged to)."""
    cpu = spec["cpu"]
    vcpus = int(cpu["sockets"]) * int(cpu["cores"]) * int(cpu["threads"])
    return vcpus, max(vcpus, int(cpu.get("maxVcpus") or vcpus))


def memory_kib(spec: Mapping[str, Any]) -> tuple[int, int]:
    """(guest RAM now, the most the balloon may give it) in KiB. maxSize >= size is a CRD rule (CEL)."""
    mem = spec["memory"]
    try:
        size = parse_quantity(mem["size"], field="spec.memory.size")
        top = parse_quantity(mem["maxSize"], field="spec.memory.maxSize") if mem.get("maxSize") else size
    except ValueError as e:
        raise DomainBuildError("spec.memory", str(e)) from e
    return -(-size // 1024), -(-top // 1024)


def _dev_name(prefix: str, index: int) -> str:
    letters = ""
    n = index + 1
    while n:
        n, r = divmod(n - 1, 26)
        letters = chr(ord("a") + r) + letters
    return prefix + letters


def seed_bus(spec: Mapping[str, Any]) -> str:
    """Bus of the cloud-init seed: virtio (a read-only disk) unless the spec asks for a SATA CD-ROM.
    virtio by default because cloud kernels (Debian's genericcloud among them) have no AHCI driver,
    so a SATA seed is invisible to them and cloud-init silently finds no datasource."""
    return str((spec.get("cloudInit") or {}).get("seedBus") or "virtio")


def disk_targets(spec: Mapping[str, Any], with_seed: bool = False) -> dict[str, str]:
    """Guest device names: virtio disks vda, vdb...; scsi and sata disks share sda, sdb...;
    the cloud-init seed (key "__seed__") takes the next name of its bus (seed_bus)."""
    vd = sd = 0
    out: dict[str, str] = {}
    for disk in spec.get("disks") or []:
        if disk.get("bus", "virtio") == "virtio":
            out[disk["name"]] = _dev_name("vd", vd)
            vd += 1
        else:
            out[disk["name"]] = _dev_name("sd", sd)
            sd += 1
    if with_seed:
        out["__seed__"] = _dev_name("vd", vd) if seed_bus(spec) == "virtio" else _dev_name("sd", sd)
    return out


def device_aliases(spec: Mapping[str, Any]) -> dict[str, str]:
    """libvirt alias -> spec path, e.g. {"ua-net-default": "networks[default]"}."""
    out = {f"ua-disk-{d['name']}": f"disks[{d['name']}]" for d in spec.get("disks") or []}
    out.update({f"ua-net-{n['name']}": f"networks[{n['name']}]" for n in spec.get("networks") or []})
    out.update({f"ua-hostdev-{h['name']}": f"hostDevices[{h['name']}]" for h in spec.get("hostDevices") or []})
    return out


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: Any) -> ET.Element:
    el = ET.SubElement(parent, tag, {k.rstrip("_"): str(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        el.text = text
    return el


def _placement(ctx: DomainContext, name: str, i: int, spec_format: str) -> tuple[str, str, bool]:
    p = ctx.disks.get(name)
    if p is None:
        raise DomainBuildError(f"spec.disks[{i}]", f"no file on this node for disk {name!r} (not provisioned)")
    if isinstance(p, str):
        return p, spec_format, p.startswith("/dev/")
    path = getattr(p, "path", None)
    if not path:
        raise DomainBuildError(f"spec.disks[{i}]", f"disk {name!r} placement has no path")
    fmt = getattr(p, "format", None) or spec_format
    block = getattr(p, "block", None)
    if block is None:  # e.g. storage.DiskResult: a volume under /dev is a block device
        block = str(path).startswith("/dev/")
    return str(path), fmt, bool(block)


def _pci_address(value: str, field_path: str) -> dict[str, str]:
    m = re.fullmatch(r"(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])", value.strip())
    if not m:
        raise DomainBuildError(field_path, f"invalid PCI address {value!r} (want DDDD:BB:SS.F)")
    dom, bus, slot, fn = m.groups()
    return {
        "domain": f"0x{(dom or '0000').lower()}",
        "bus": f"0x{bus.lower()}",
        "slot": f"0x{slot.lower()}",
        "function": f"0x{fn}",
    }


# --- sections ------------------------------------------------------------------------------------


def _cpu(dom: ET.Element, spec: Mapping[str, Any], ctx: DomainContext, adj: list[Adjustment]) -> None:
    cpu = spec["cpu"]
    sockets, cores, threads = int(cpu["sockets"]), int(cpu["cores"]), int(cpu["threads"])
    vcpus, most = vcpu_counts(spec)
    pinned = cpu.get("dedicatedCpuSet")
    pool = {} if pinned or not ctx.shared_cpus else {"cpuset": ctx.shared_cpus}
    if most > vcpus:
        # Hot-plug adds sockets: the topology describes the maximum, libvirt starts `current` of them.
        if most % (cores * threads):
            raise DomainBuildError(
                "spec.cpu.maxVcpus", f"{most} is not a multiple of cores * threads ({cores * threads})"
            )
        sockets = most // (cores * threads)
        _sub(dom, "vcpu", str(most), placement="static", current=vcpus, **pool)
    else:
        _sub(dom, "vcpu", str(vcpus), placement="static", **pool)

    iothreads = int(spec.get("iothreads") or 0)
    if iothreads:
        _sub(dom, "iothreads", str(iothreads))

    emulator = cpu.get("emulatorCpuSet")
    if pinned or emulator:
        tune = _sub(dom, "cputune")
        if pinned:  # enough CPUs for 1:1 pinning: a CRD rule
            host = parse_cpuset(pinned)
            for i in range(vcpus):
                _sub(tune, "vcpupin", vcpu=i, cpuset=host[i])
        if emulator:
            _sub(tune, "emulatorpin", cpuset=emulator)
            for t in range(1, iothreads + 1):
                _sub(tune, "iothreadpin", iothread=t, cpuset=emulator)

    model = cpu.get("model")
    el = ET.Element("cpu")
    if model in ("host-passthrough", "host-model"):
        if ctx.domain_type == "kvm":
            el.set("mode", model)
        elif ctx.cpu_fallback == "error":
            raise DomainBuildError("spec.cpu.model", f"{model} needs KVM; this node runs VMs under emulation")
        elif ctx.cpu_fallback == "omit":
            adj.append(
                Adjustment(
                    "spec.cpu.model",
                    "CPUModelNotEmulated",
                    f"cpu.model {model} needs KVM; running under emulation with QEMU's default CPU",
                )
            )
        else:
            el.set("mode", "maximum")
            el.set("migratable", "off")
            adj.append(
                Adjustment(
                    "spec.cpu.model",
                    "CPUModelNotEmulated",
                    f"cpu.model {model} needs KVM; running under emulation with QEMU's 'max' CPU",
                )
            )
    elif model:
        el.set("mode", "custom")
        el.set("match", "exact")
        if ctx.domain_type != "kvm":
            el.set("check", "none")  # TCG lacks some features of named models; QEMU filters them
        _sub(el, "model", model, fallback="forbid")
    _sub(el, "topology", sockets=sockets, dies=1, cores=cores, threads=threads)
    dom.append(el)


def _memory(dom: ET.Element, spec: Mapping[str, Any]) -> None:
    """Guest RAM; the 16Mi minimum, whole bytes and the hugepage multiple are CRD rules (checked on
    the merged spec before this runs)."""
    mem = spec["memory"]
    kib, top = memory_kib(spec)
    _sub(dom, "memory", str(top), unit="KiB")  # the balloon gives the guest at most this
    _sub(dom, "currentMemory", str(kib), unit="KiB")
    huge = mem.get("hugepages")
    if huge:
        page = parse_quantity(huge["pageSize"], field="spec.memory.hugepages.pageSize")
        backing = _sub(dom, "memoryBacking")
        _sub(_sub(backing, "hugepages"), "page", size=page // 1024, unit="KiB")


def _os(dom: ET.Element, spec: Mapping[str, Any], ctx: DomainContext) -> None:
    boot = spec["boot"]
    os_el = _sub(dom, "os")
    uefi = boot.get("firmware") == "uefi"
    if uefi and not ctx.uefi_loader:
        os_el.set("firmware", "efi")
    _sub(os_el, "type", "hvm", arch=ctx.arch, machine=ctx.machine)
    if uefi and ctx.uefi_loader:
        _sub(os_el, "loader", ctx.uefi_loader, readonly="yes", type="pflash")
    if uefi and ctx.uefi_nvram:
        _sub(os_el, "nvram", ctx.uefi_nvram, template=ctx.uefi_nvram_template)
    kernel = boot.get("kernel")
    if kernel:
        _sub(os_el, "kernel", kernel["path"])
        if kernel.get("initrdPath"):
            _sub(os_el, "initrd", kernel["initrdPath"])
        if kernel.get("cmdline"):
            _sub(os_el, "cmdline", kernel["cmdline"])


_HYPERV = (
    ("relaxed", {}),
    ("vapic", {}),
    ("spinlocks", {"retries": 8191}),
    ("vpindex", {}),
    ("synic", {}),
    ("stimer", {}),
)


def _features(dom: ET.Element, spec: Mapping[str, Any], ctx: DomainContext) -> None:
    feat = spec["features"]
    el = _sub(dom, "features")
    if ctx.domain_type == "qemu" and ctx.tcg_tb_cache_mib > 0:
        # QEMU's default translation cache is 1 GiB and a busy guest fills much of it: a 128 MiB
        # tiny guest had 247 MB resident. Guests here are small (bench/README.md: memory per VM).
        _sub(_sub(el, "tcg"), "tb-cache", str(ctx.tcg_tb_cache_mib), unit="MiB")
    if feat.get("acpi"):
        _sub(el, "acpi")
    if feat.get("apic"):
        _sub(el, "apic")
    if feat.get("hyperv"):
        hv = _sub(el, "hyperv", mode="custom")
        for name, attrs in _HYPERV:
            _sub(hv, name, state="on", **attrs)
    clock = _sub(dom, "clock", offset="utc")
    _sub(clock, "timer", name="rtc", tickpolicy="catchup")
    _sub(clock, "timer", name="pit", tickpolicy="delay")
    _sub(clock, "timer", name="hpet", present="no")
    if feat.get("hyperv"):
        _sub(clock, "timer", name="hypervclock", present="yes")


def _disks(devs: ET.Element, spec: Mapping[str, Any], ctx: DomainContext) -> None:
    targets = disk_targets(spec, with_seed=True)
    for i, d in enumerate(spec.get("disks") or []):
        path, fmt, block = _placement(ctx, d["name"], i, d["format"])
        disk = _sub(devs, "disk", type="block" if block else "file", device="disk")
        drv = _sub(
            disk,
            "driver",
            name="qemu",
            type=fmt,
            cache=d["cache"],
            io=d["io"],
            discard="unmap" if d.get("provisioning") == "thin" else "ignore",
        )
        if d.get("iothread") is not None:  # bus virtio and 1..spec.iothreads: CRD rules
            drv.set("iothread", str(d["iothread"]))
        _sub(disk, "source", **({"dev": path} if block else {"file": path}))
        _sub(disk, "target", dev=targets[d["name"]], bus=d["bus"])
        if d.get("readOnly"):
            _sub(disk, "readonly")
        if d.get("serial"):
            _sub(disk, "serial", d["serial"])
        if d.get("bootOrder") is not None:
            _sub(disk, "boot", order=d["bootOrder"])
        _sub(disk, "alias", name=f"ua-disk-{d['name']}")
    if ctx.seed_iso:
        bus = seed_bus(spec)
        cd = _sub(devs, "disk", type="file", device="disk" if bus == "virtio" else "cdrom")
        _sub(cd, "driver", name="qemu", type="raw")
        _sub(cd, "source", file=ctx.seed_iso)
        _sub(cd, "target", dev=targets["__seed__"], bus=bus)
        _sub(cd, "readonly")
        _sub(cd, "alias", name="ua-cloudinit")
    if any(d["bus"] == "scsi" for d in spec.get("disks") or []):
        _sub(devs, "controller", type="scsi", index=0, model="virtio-scsi")


def _networks(devs: ET.Element, spec: Mapping[str, Any], ref: VMRef) -> None:
    for n in spec.get("networks") or []:
        if "bridge" in n:
            iface = _sub(devs, "interface", type="bridge")
            _sub(iface, "source", bridge=n["bridge"]["name"])
        else:
            iface = _sub(devs, "interface", type="network")
            _sub(iface, "source", network=(n.get("nat") or {}).get("network", "default"))
        _sub(iface, "mac", address=(n.get("macAddress") or default_mac(ref.uid or "", n["name"])).lower())
        _sub(iface, "model", type=n["model"])
        _sub(iface, "alias", name=f"ua-net-{n['name']}")


def _hostdevs(devs: ET.Element, spec: Mapping[str, Any], ctx: DomainContext) -> None:
    for i, h in enumerate(spec.get("hostDevices") or []):
        fp = f"spec.hostDevices[{i}]"
        addr = ctx.host_devices.get(h["name"])
        if not addr:
            what = (
                f"PCIPassthrough {h['pciPassthrough']!r}"
                if h.get("pciPassthrough")
                else f"a {h.get('resource')} device"
            )
            raise DomainBuildError(fp, f"{what} has no resolved host address")
        hd = _sub(devs, "hostdev", mode="subsystem", type="pci", managed="no")
        _sub(hd, "driver", name="vfio")
        _sub(_sub(hd, "source"), "address", **_pci_address(addr, fp))
        _sub(hd, "alias", name=f"ua-hostdev-{h['name']}")


def _other_devices(devs: ET.Element, spec: Mapping[str, Any], ctx: DomainContext) -> None:
    dv = spec["devices"]
    if dv.get("serialConsole"):
        serial = _sub(devs, "serial", type="pty")
        if ctx.console_log:
            _sub(serial, "log", file=ctx.console_log, append="on")
        _sub(serial, "target", port=0)
        _sub(_sub(devs, "console", type="pty"), "target", type="serial", port=0)
    if ctx.guest_agent_channel:
        ch = _sub(devs, "channel", type="unix")
        _sub(ch, "target", type="virtio", name="org.qemu.guest_agent.0")
    for inp in dv.get("inputs") or []:
        _sub(devs, "input", type=inp["type"], bus=inp["bus"])
    gtype = (dv.get("graphics") or {}).get("type", "none")
    if gtype != "none":
        g = _sub(devs, "graphics", type=gtype, autoport="yes", listen=ctx.graphics_listen)
        _sub(g, "listen", type="address", address=ctx.graphics_listen)
    video = (dv.get("video") or {}).get("model")
    if video:
        _sub(_sub(devs, "video"), "model", type=video)
    wd = dv.get("watchdog")
    if wd:
        if wd["model"] == "itco" and ctx.libvirt_version is not None and ctx.libvirt_version < ITCO_MIN_LIBVIRT:
            raise DomainBuildError("spec.devices.watchdog.model", "itco needs libvirt >= 9.1 on the node")
        _sub(devs, "watchdog", model=wd["model"], action=wd.get("action", "reset"))
    if dv.get("rng"):
        _sub(_sub(devs, "rng", model="virtio"), "backend", "/dev/urandom", model="random")
    tpm = dv.get("tpm")
    if tpm:
        if not ctx.tpm_available:
            raise DomainBuildError("spec.devices.tpm", "no TPM emulator (swtpm) on this node")
        _sub(_sub(devs, "tpm", model=tpm["model"]), "backend", type="emulator", version=tpm["version"])
    _sub(devs, "panic", model="isa")  # lets lifecycle.onCrash see guest kernel panics
    if dv.get("memballoon"):
        _sub(_sub(devs, "memballoon", model="virtio"), "stats", period=10)
    else:
        _sub(devs, "memballoon", model="none")


# --- public --------------------------------------------------------------------------------------


def build_domain(ref: VMRef, spec: Mapping[str, Any], ctx: DomainContext) -> BuiltDomain:
    """Build the domain XML for a merged VM spec; DomainBuildError names the offending field."""
    if ctx.domain_type not in ("kvm", "qemu"):
        raise ValueError(f"domain_type must be 'kvm' or 'qemu', got {ctx.domain_type!r}")
    s = apply_vm_defaults(dict(spec))
    adj: list[Adjustment] = []
    dom = ET.Element("domain", type=ctx.domain_type)
    _sub(dom, "name", domain_name(ref.namespace, ref.name))
    with contextlib.suppress(ValueError):  # a non-UUID uid (unit tests): libvirt generates one
        _sub(dom, "uuid", str(uuid.UUID(ref.uid or "")))
    meta = _sub(dom, "metadata")
    _sub(
        meta,
        f"{XML_PREFIX}:vm",
        **{f"xmlns:{XML_PREFIX}": XML_NAMESPACE},
        namespace=ref.namespace,
        name=ref.name,
        uid=ref.uid,
        generation=ref.generation or 0,
        specHash=domain_spec_hash(s),
        liveShape=live_shape_hash(s),
    )
    _memory(dom, s)
    _cpu(dom, s, ctx, adj)
    _os(dom, s, ctx)
    _features(dom, s, ctx)
    life = s["lifecycle"]  # the combinations QEMU refuses are CRD rules
    _sub(dom, "on_poweroff", life["onPoweroff"])
    _sub(dom, "on_reboot", life["onReboot"])
    _sub(dom, "on_crash", life["onCrash"])
    devs = _sub(dom, "devices")
    if ctx.emulator:
        _sub(devs, "emulator", ctx.emulator)
    _disks(devs, s, ctx)
    _networks(devs, s, ref)
    _hostdevs(devs, s, ctx)
    _other_devices(devs, s, ctx)
    ET.indent(dom)
    return BuiltDomain(ET.tostring(dom, encoding="unicode"), adj)


# Spec fields that never need a domain restart: they are not part of the domain definition.
# template/presets act through the merged spec that is compared; nodeName/nodeSelector are
# placement, handled by the operator's scheduling logic, not by domain_spec_hash().
NON_DOMAIN_FIELDS = frozenset({"runStrategy", "deletionPolicy", "template", "presets", "nodeName", "nodeSelector"})
