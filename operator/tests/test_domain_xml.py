"""domain_xml: a table of specs covering every field; each XML is checked by libvirt's own RNG
(virt-xml-validate) and for the elements the field maps to; a few are defined on qemu:///system."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest
from k3svirt_common.names import XML_NAMESPACE
from k3svirt_common.schema import validate_spec
from k3svirt_operator.domain_xml import (
    DiskPlacement,
    DomainBuildError,
    DomainContext,
    VMRef,
    build_domain,
    default_mac,
    device_aliases,
    disk_targets,
    parse_cpuset,
)

UID = "6f1c1a52-8b5e-4a4e-9d3c-2c0d8a0e7b11"
REF = VMRef("ns1", "vm1", UID, 7)
MEM = {"memory": {"size": "128Mi"}}
BLANK = {"source": {"blank": {}}, "size": "1Gi"}
CTX = DomainContext(
    domain_type="kvm",
    disks={
        "root": "/var/lib/k3svirt/ns1/vm1/root.qcow2",
        "data": DiskPlacement("/dev/null", "raw", block=True),
        "s": DiskPlacement("/tmp/s.raw", "raw"),
    },
    console_log="/var/log/k3svirt/ns1_vm1.log",
)


_SUBPRED = re.compile(r"^(.*?)\[([\w/]+)/@(\w+)='([^']*)'\](.*)$")


def findall(root, xpath):
    """ElementTree findall plus predicates on a child's attribute: disk[target/@dev='vda']."""
    m = _SUBPRED.match(xpath)
    if not m:
        return root.findall(xpath)
    head, sub, attr, value, rest = m.groups()
    hits = [e for e in root.findall(head) if any(c.get(attr) == value for c in e.findall(sub))]
    return [r for e in hits for r in (findall(e, "." + rest) if rest else [e])]


def one(root, xpath):
    found = findall(root, xpath)
    assert len(found) == 1, f"{xpath}: {len(found)} matches"
    return found[0]


# (id, spec, ctx changes, [(xpath, {attr: value} | text | None-for-absent)])
CASES = [
    (
        "live-maxima",
        {"memory": {"size": "128Mi", "maxSize": "256Mi"}, "cpu": {"sockets": 1, "cores": 1, "maxVcpus": 4}},
        {},
        [
            ("./memory", "262144"),
            ("./currentMemory", "131072"),
            ("./vcpu", {"current": "1"}),
            ("./cpu/topology", {"sockets": "4", "cores": "1", "threads": "1"}),
        ],
    ),
    (
        "minimal",
        {**MEM},
        {},
        [
            ("./name", "ns1_vm1"),
            ("./uuid", UID),
            ("./memory", "131072"),
            ("./currentMemory", "131072"),
            ("./vcpu", "1"),
            ("./cpu/topology", {"sockets": "1", "cores": "1", "threads": "1"}),
            ("./os/type", {"machine": "q35", "arch": "x86_64"}),
            ("./features/acpi", {}),
            ("./features/apic", {}),
            ("./on_poweroff", "destroy"),
            ("./on_reboot", "restart"),
            ("./on_crash", "destroy"),
            ("./devices/serial/log", {"file": "/var/log/k3svirt/ns1_vm1.log", "append": "on"}),
            ("./devices/console/target", {"type": "serial"}),
            ("./devices/memballoon", {"model": "virtio"}),
            ("./devices/video/model", {"type": "none"}),
            ("./devices/graphics", None),
            ("./devices/rng", None),
            ("./devices/tpm", None),
            ("./devices/watchdog", None),
            ("./os/kernel", None),
            ("./cpu[@mode]", None),
            ("./memoryBacking", None),
            ("./cputune", None),
        ],
    ),
    (
        "cpu-topology-model",
        {**MEM, "cpu": {"sockets": 2, "cores": 2, "threads": 2, "model": "Skylake-Client"}},
        {},
        [
            ("./vcpu", "8"),
            ("./cpu", {"mode": "custom", "match": "exact"}),
            ("./cpu/model", "Skylake-Client"),
            ("./cpu/topology", {"sockets": "2", "cores": "2", "threads": "2"}),
        ],
    ),
    (
        "cpu-host-passthrough-kvm",
        {**MEM, "cpu": {"model": "host-passthrough"}},
        {},
        [("./cpu", {"mode": "host-passthrough"})],
    ),
    ("cpu-host-model-kvm", {**MEM, "cpu": {"model": "host-model"}}, {}, [("./cpu", {"mode": "host-model"})]),
    (
        "cpu-passthrough-emulated",
        {**MEM, "cpu": {"model": "host-passthrough"}},
        {"domain_type": "qemu"},
        [("./cpu", {"mode": "maximum"})],
    ),
    (
        "cpu-passthrough-emulated-omit",
        {**MEM, "cpu": {"model": "host-model"}},
        {"domain_type": "qemu", "cpu_fallback": "omit"},
        [("./cpu[@mode]", None)],
    ),
    (
        "cpu-shared-pool",  # no dedicated cores: vCPUs and emulator on the node's shared CPUs (cpupool.py)
        {**MEM, "cpu": {"cores": 2, "maxVcpus": 4}, "iothreads": 1},
        {"shared_cpus": "1-3"},
        [("./vcpu", {"cpuset": "1-3", "current": "2", "placement": "static"}), ("./cputune", None)],
    ),
    (
        "cpu-shared-pool-not-for-dedicated",  # a VM with dedicated cores keeps its own pinning
        {**MEM, "cpu": {"cores": 1, "dedicatedCpuSet": "0", "emulatorCpuSet": "1"}},
        {"shared_cpus": "1-3"},
        [("./vcpu[@cpuset]", None), ("./cputune/vcpupin[@vcpu='0']", {"cpuset": "0"})],
    ),
    (
        "cpu-shared-pool-with-emulator-pin",  # emulatorCpuSet alone: the emulator stays where it says
        {**MEM, "cpu": {"cores": 1, "emulatorCpuSet": "3"}},
        {"shared_cpus": "1-3"},
        [("./vcpu", {"cpuset": "1-3"}), ("./cputune/emulatorpin", {"cpuset": "3"}), ("./cputune/vcpupin", None)],
    ),
    (
        "cpu-pinning",
        {**MEM, "cpu": {"cores": 2, "dedicatedCpuSet": "0-1", "emulatorCpuSet": "1"}, "iothreads": 1},
        {},
        [
            ("./cputune/vcpupin[@vcpu='0']", {"cpuset": "0"}),
            ("./cputune/vcpupin[@vcpu='1']", {"cpuset": "1"}),
            ("./cputune/emulatorpin", {"cpuset": "1"}),
            ("./cputune/iothreadpin", {"iothread": "1", "cpuset": "1"}),
            ("./iothreads", "1"),
        ],
    ),
    (
        "hugepages",
        {"memory": {"size": "256Mi", "hugepages": {"pageSize": "2Mi"}}},
        {},
        [("./memoryBacking/hugepages/page", {"size": "2048", "unit": "KiB"})],
    ),
    (
        "uefi-autoselect",
        {**MEM, "boot": {"firmware": "uefi"}},
        {},
        [("./os", {"firmware": "efi"}), ("./os/loader", None)],
    ),
    (
        "uefi-explicit",
        {**MEM, "boot": {"firmware": "uefi"}},
        {
            "uefi_loader": "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "uefi_nvram": "/var/lib/k3svirt/ns1/vm1/nvram.fd",
            "uefi_nvram_template": "/usr/share/OVMF/OVMF_VARS_4M.fd",
        },
        [
            ("./os/loader", {"readonly": "yes", "type": "pflash"}),
            ("./os/nvram", {"template": "/usr/share/OVMF/OVMF_VARS_4M.fd"}),
            ("./os[@firmware]", None),
        ],
    ),
    (
        "kernel-boot",
        {
            **MEM,
            "boot": {
                "kernel": {
                    "path": "/boot/vmlinuz",
                    "initrdPath": "/boot/initrd",
                    "cmdline": "console=ttyS0 root=/dev/vda",
                }
            },
        },
        {},
        [
            ("./os/kernel", "/boot/vmlinuz"),
            ("./os/initrd", "/boot/initrd"),
            ("./os/cmdline", "console=ttyS0 root=/dev/vda"),
        ],
    ),
    (
        "disks",
        {
            **MEM,
            "iothreads": 2,
            "disks": [
                {
                    "name": "root",
                    **BLANK,
                    "iothread": 2,
                    "bootOrder": 1,
                    "serial": "ROOT-1",
                    "cache": "none",
                    "io": "native",
                },
                {
                    "name": "data",
                    "bus": "scsi",
                    "format": "raw",
                    "source": {"volume": {"path": "/dev/null"}},
                    "readOnly": True,
                    "cache": "writeback",
                    "io": "threads",
                },
                {
                    "name": "s",
                    "bus": "sata",
                    "format": "raw",
                    **BLANK,
                    "provisioning": "thick",
                    "cache": "unsafe",
                    "io": "io_uring",
                },
            ],
        },
        {"seed_iso": "/var/lib/k3svirt/ns1/vm1/seed.iso"},
        [
            (
                "./devices/disk[target/@dev='vda']/driver",
                {"name": "qemu", "type": "qcow2", "cache": "none", "io": "native", "discard": "unmap", "iothread": "2"},
            ),
            ("./devices/disk[target/@dev='vda']/source", {"file": "/var/lib/k3svirt/ns1/vm1/root.qcow2"}),
            ("./devices/disk[target/@dev='vda']/serial", "ROOT-1"),
            ("./devices/disk[target/@dev='vda']/boot", {"order": "1"}),
            ("./devices/disk[target/@dev='vda']/target", {"bus": "virtio"}),
            ("./devices/disk[target/@dev='sda']", {"type": "block"}),
            ("./devices/disk[target/@dev='sda']/source", {"dev": "/dev/null"}),
            ("./devices/disk[target/@dev='sda']/readonly", {}),
            ("./devices/disk[target/@dev='sda']/target", {"bus": "scsi"}),
            ("./devices/disk[target/@dev='sda']/driver", {"type": "raw", "cache": "writeback", "io": "threads"}),
            ("./devices/disk[target/@dev='sdb']/driver", {"discard": "ignore", "io": "io_uring", "cache": "unsafe"}),
            ("./devices/disk[target/@dev='sdb']/target", {"bus": "sata"}),
            ("./devices/disk[alias/@name='ua-cloudinit']", {"device": "disk"}),
            ("./devices/disk[alias/@name='ua-cloudinit']/target", {"dev": "vdb", "bus": "virtio"}),
            ("./devices/disk[alias/@name='ua-cloudinit']/source", {"file": "/var/lib/k3svirt/ns1/vm1/seed.iso"}),
            ("./devices/disk[alias/@name='ua-cloudinit']/readonly", {}),
            ("./devices/controller[@type='scsi']", {"model": "virtio-scsi"}),
            ("./devices/disk/alias[@name='ua-disk-root']", {}),
            ("./iothreads", "2"),
        ],
    ),
    (
        "networks",
        {
            **MEM,
            "networks": [
                {"name": "default", "nat": {}},
                {"name": "lan", "bridge": {"name": "br0"}, "model": "e1000e", "macAddress": "52:54:00:AB:CD:EF"},
                {"name": "old", "nat": {"network": "isolated"}, "model": "rtl8139"},
            ],
        },
        {},
        [
            ("./devices/interface[alias/@name='ua-net-default']", {"type": "network"}),
            ("./devices/interface[alias/@name='ua-net-default']/source", {"network": "default"}),
            ("./devices/interface[alias/@name='ua-net-default']/mac", {"address": default_mac(UID, "default")}),
            ("./devices/interface[alias/@name='ua-net-default']/model", {"type": "virtio"}),
            ("./devices/interface[alias/@name='ua-net-lan']", {"type": "bridge"}),
            ("./devices/interface[alias/@name='ua-net-lan']/source", {"bridge": "br0"}),
            ("./devices/interface[alias/@name='ua-net-lan']/mac", {"address": "52:54:00:ab:cd:ef"}),
            ("./devices/interface[alias/@name='ua-net-lan']/model", {"type": "e1000e"}),
            ("./devices/interface[alias/@name='ua-net-old']/source", {"network": "isolated"}),
            ("./devices/interface[alias/@name='ua-net-old']/model", {"type": "rtl8139"}),
        ],
    ),
    (
        "hostdev",
        {**MEM, "hostDevices": [{"name": "nic", "pciPassthrough": "p1"}]},
        {"host_devices": {"nic": "0000:3b:1f.7"}},
        [
            ("./devices/hostdev", {"mode": "subsystem", "type": "pci", "managed": "no"}),
            (
                "./devices/hostdev/source/address",
                {"domain": "0x0000", "bus": "0x3b", "slot": "0x1f", "function": "0x7"},
            ),
            ("./devices/hostdev/alias", {"name": "ua-hostdev-nic"}),
        ],
    ),
    (
        "hostdev-by-kind",  # the node picked a device of the kind: the domain only sees its address
        # irqAffinity is applied to the host's IRQs while the VM runs (pci/irq.py), nothing in the XML
        {**MEM, "cpu": {"irqAffinity": "vm"}, "hostDevices": [{"name": "wan", "resource": "k3svirt.io/pci-8086-10fb"}]},
        {"host_devices": {"wan": "0000:03:00.1"}},
        [
            ("./devices/hostdev/source/address", {"bus": "0x03", "slot": "0x00", "function": "0x1"}),
            ("./devices/hostdev/alias", {"name": "ua-hostdev-wan"}),
        ],
    ),
    (
        "devices",
        {
            **MEM,
            "devices": {
                "watchdog": {"model": "i6300esb", "action": "poweroff"},
                "tpm": {"model": "tpm-tis", "version": "1.2"},
                "video": {"model": "qxl"},
                "graphics": {"type": "spice"},
                "rng": True,
                "memballoon": False,
                "serialConsole": False,
                "inputs": [{"type": "tablet"}, {"type": "keyboard", "bus": "virtio"}, {"type": "mouse", "bus": "ps2"}],
            },
        },
        {},
        [
            ("./devices/watchdog", {"model": "i6300esb", "action": "poweroff"}),
            ("./devices/tpm", {"model": "tpm-tis"}),
            ("./devices/tpm/backend", {"type": "emulator", "version": "1.2"}),
            ("./devices/video/model", {"type": "qxl"}),
            ("./devices/graphics", {"type": "spice", "listen": "127.0.0.1"}),
            ("./devices/rng/backend", "/dev/urandom"),
            ("./devices/memballoon", {"model": "none"}),
            ("./devices/serial", None),
            ("./devices/console", None),
            ("./devices/input[@type='tablet']", {"bus": "usb"}),
            ("./devices/input[@type='keyboard']", {"bus": "virtio"}),
            ("./devices/input[@type='mouse']", {"bus": "ps2"}),
        ],
    ),
    (
        "devices-vnc-tpm2",
        {**MEM, "devices": {"graphics": {"type": "vnc"}, "tpm": {}, "watchdog": {"model": "i6300esb"}}},
        {},
        [
            ("./devices/graphics", {"type": "vnc", "autoport": "yes"}),
            ("./devices/video/model", {"type": "virtio"}),
            ("./devices/tpm", {"model": "tpm-crb"}),
            ("./devices/tpm/backend", {"version": "2.0"}),
            ("./devices/watchdog", {"action": "reset"}),
        ],
    ),
    (
        "lifecycle-features",
        {
            **MEM,
            "lifecycle": {"onPoweroff": "restart", "onReboot": "restart", "onCrash": "coredump-restart"},
            "features": {"acpi": False, "apic": True, "hyperv": True},
        },
        {},
        [
            ("./on_poweroff", "restart"),
            ("./on_crash", "coredump-restart"),
            ("./features/acpi", None),
            ("./features/hyperv/relaxed", {"state": "on"}),
            ("./features/hyperv/spinlocks", {"retries": "8191"}),
            ("./clock/timer[@name='hypervclock']", {"present": "yes"}),
        ],
    ),
    (
        "seed-on-sata-cdrom",
        {**MEM, "cloudInit": {"seedBus": "sata"}},
        {"seed_iso": "/tmp/seed.iso"},
        [
            ("./devices/disk[alias/@name='ua-cloudinit']", {"device": "cdrom"}),
            ("./devices/disk[alias/@name='ua-cloudinit']/target", {"dev": "sda", "bus": "sata"}),
            ("./devices/disk[alias/@name='ua-cloudinit']/readonly", {}),
        ],
    ),
    (
        "lifecycle-crash-preserve",
        {**MEM, "lifecycle": {"onPoweroff": "destroy", "onReboot": "destroy", "onCrash": "preserve"}},
        {},
        [("./on_reboot", "destroy"), ("./on_crash", "preserve")],
    ),
    (
        "non-domain-fields",
        {
            **MEM,
            "runStrategy": "Manual",
            "template": {"name": "t"},
            "presets": [{"name": "p"}],
            "nodeSelector": {"a": "b"},
            "deletionPolicy": "Retain",
            "terminationGracePeriodSeconds": 5,
            "cloudInit": {"userData": "#cloud-config", "sshAuthorizedKeys": ["ssh-ed25519 AAAA"]},
        },
        {"seed_iso": "/tmp/seed.iso", "emulator": "/usr/bin/qemu-system-x86_64"},
        [
            ("./devices/disk[alias/@name='ua-cloudinit']/target", {"dev": "vda", "bus": "virtio"}),
            ("./devices/emulator", "/usr/bin/qemu-system-x86_64"),
        ],
    ),
]


def _check(xml: str, checks) -> ET.Element:
    root = ET.fromstring(xml)
    for xpath, want in checks:
        if want is None:
            assert findall(root, xpath) == [], f"{xpath} should be absent"
            continue
        el = one(root, xpath)
        if isinstance(want, str):
            assert el.text == want, (xpath, el.text)
        else:
            for k, v in want.items():
                assert el.get(k) == v, (xpath, k, el.get(k))
    return root


def _virt_xml_validate(xml: str, tmp_path) -> None:
    tool = shutil.which("virt-xml-validate")
    assert tool, "virt-xml-validate is missing (install libvirt-clients)"
    f = tmp_path / "domain.xml"
    f.write_text(xml)
    r = subprocess.run([tool, str(f), "domain"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr + xml


@pytest.mark.parametrize(("spec", "ctx_changes", "checks"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_table(spec, ctx_changes, checks, tmp_path):
    assert validate_spec("VirtualMachine", spec) == [], "table specs must be valid API input"
    xml = build_domain(REF, spec, replace(CTX, **ctx_changes)).xml
    _virt_xml_validate(xml, tmp_path)
    _check(xml, checks)


def test_table_covers_every_spec_field():
    """Every leaf of the CRD spec schema appears in some table spec (keeps the table honest)."""
    from k3svirt_common.schema import openapi_schema

    def leaves(s, path):
        props = s.get("properties")
        if isinstance(s.get("items"), dict):
            yield from leaves(s["items"], path + "[]")
        elif props:
            for k, v in props.items():
                yield from leaves(v, f"{path}.{k}" if path else k)
        else:
            yield path

    def used(obj, path, out):
        out.add(path)
        if isinstance(obj, dict):
            for k, v in obj.items():
                used(v, f"{path}.{k}" if path else k, out)
        elif isinstance(obj, list):
            for v in obj:
                used(v, path + "[]", out)

    seen: set[str] = set()
    for c in CASES:
        used(c[1], "", seen)
    qcow2_only = {
        "disks[].qcow2.clusterSize",
        "disks[].qcow2.preallocation",
        "disks[].qcow2.lazyRefcounts",
        "disks[].qcow2.compression",
        "disks[].source.image.url",
        "disks[].source.image.checksum",
        "disks[].source.image.clone",
        "cloudInit.networkData",
        "cloudInit.metaData",
        "nodeName",
        "cpu.request",
        "cpu.dedicatedCores",  # the operator turns it into dedicatedCpuSet before the build (test_cpupin.py)
        "template.version",
        "presets[].version",
    }
    # ^ storage/cloud-init/placement/reservation inputs: not in the domain XML (pinned in test_no_xml_effect).
    missing = sorted(
        p
        for p in leaves(openapi_schema("VirtualMachine")["properties"]["spec"], "")
        if p not in seen and p not in qcow2_only
    )
    assert missing == []


def test_no_xml_effect():
    base = {**MEM, "disks": [{"name": "root", **BLANK}]}
    image = {"url": "https://x/i.qcow2", "checksum": "sha256:" + "0" * 64, "clone": "copy"}
    other = {
        **MEM,
        "nodeName": "n2",
        "cpu": {"request": "500m"},  # the reservation pod's, not the domain's
        "template": {"name": "t", "version": "2"},
        "presets": [{"name": "p", "version": "1"}],
        "cloudInit": {"networkData": "version: 2", "metaData": "a: b"},
        "disks": [
            {
                "name": "root",
                "source": {"image": image},
                "size": "1Gi",
                "qcow2": {"clusterSize": "2Mi", "preallocation": "metadata", "lazyRefcounts": True},
            }
        ],
    }

    def strip(x):
        return "\n".join(line for line in x.splitlines() if "specHash" not in line)

    assert strip(build_domain(REF, base, CTX).xml) == strip(build_domain(REF, other, CTX).xml)


def test_metadata_element():
    root = ET.fromstring(build_domain(REF, MEM, CTX).xml)
    vm = one(root, f"./metadata/{{{XML_NAMESPACE}}}vm")
    assert (vm.get("namespace"), vm.get("name"), vm.get("uid"), vm.get("generation")) == ("ns1", "vm1", UID, "7")
    assert len(vm.get("specHash")) == 64


def test_emulation_adjustments():
    built = build_domain(REF, {**MEM, "cpu": {"model": "host-passthrough"}}, replace(CTX, domain_type="qemu"))
    assert [(a.field, a.reason) for a in built.adjustments] == [("spec.cpu.model", "CPUModelNotEmulated")]
    assert build_domain(REF, {**MEM, "cpu": {"model": "host-passthrough"}}, CTX).adjustments == []
    with pytest.raises(DomainBuildError) as e:
        build_domain(
            REF, {**MEM, "cpu": {"model": "host-model"}}, replace(CTX, domain_type="qemu", cpu_fallback="error")
        )
    assert e.value.field == "spec.cpu.model"
    named = ET.fromstring(build_domain(REF, {**MEM, "cpu": {"model": "qemu64"}}, replace(CTX, domain_type="qemu")).xml)
    assert one(named, "./cpu").get("check") == "none"


def test_tcg_translation_cache_only_under_emulation():
    emulated = ET.fromstring(build_domain(REF, MEM, replace(CTX, domain_type="qemu", tcg_tb_cache_mib=32)).xml)
    cache = one(emulated, "./features/tcg/tb-cache")
    assert (cache.text, cache.get("unit")) == ("32", "MiB")
    default = ET.fromstring(build_domain(REF, MEM, replace(CTX, domain_type="qemu")).xml)
    assert default.find("./features/tcg") is None  # 0: QEMU's own default
    kvm = ET.fromstring(build_domain(REF, MEM, replace(CTX, tcg_tb_cache_mib=32)).xml)
    assert kvm.find("./features/tcg") is None  # KVM translates nothing


@pytest.mark.parametrize(
    ("spec", "ctx_changes", "field"),
    [
        ({**MEM, "disks": [{"name": "nofile", **BLANK}]}, {}, "spec.disks[0]"),
        ({**MEM, "hostDevices": [{"name": "x", "pciPassthrough": "p"}]}, {}, "spec.hostDevices[0]"),
        (
            {**MEM, "hostDevices": [{"name": "x", "pciPassthrough": "p"}]},
            {"host_devices": {"x": "zz"}},
            "spec.hostDevices[0]",
        ),
        ({**MEM, "devices": {"tpm": {}}}, {"tpm_available": False}, "spec.devices.tpm"),
        (
            {**MEM, "devices": {"watchdog": {"model": "itco"}}},
            {"libvirt_version": 9_000_000},
            "spec.devices.watchdog.model",
        ),
    ],
)
def test_build_errors(spec, ctx_changes, field):
    with pytest.raises(DomainBuildError) as e:
        build_domain(REF, spec, replace(CTX, **ctx_changes))
    assert e.value.field == field


def test_itco_on_new_libvirt():
    root = ET.fromstring(
        build_domain(
            REF,
            {**MEM, "devices": {"watchdog": {"model": "itco", "action": "none"}}},
            replace(CTX, libvirt_version=9_001_000),
        ).xml
    )
    assert one(root, "./devices/watchdog").attrib == {"model": "itco", "action": "none"}


def test_helpers():
    assert parse_cpuset("2-5,7") == [2, 3, 4, 5, 7]
    assert parse_cpuset("") == []
    spec = {"disks": [{"name": "a"}, {"name": "b", "bus": "sata"}, {"name": "c"}, {"name": "d", "bus": "scsi"}]}
    assert disk_targets(spec, with_seed=True) == {"a": "vda", "b": "sda", "c": "vdb", "d": "sdb", "__seed__": "vdc"}
    sata_seed = {**spec, "cloudInit": {"seedBus": "sata"}}
    assert disk_targets(sata_seed, with_seed=True)["__seed__"] == "sdc"
    many = disk_targets({"disks": [{"name": f"d{i}"} for i in range(28)]})
    assert many["d25"] == "vdz" and many["d26"] == "vdaa"
    mac = default_mac(UID, "default")
    assert mac.startswith("52:54:00:") and mac == default_mac(UID, "default") != default_mac(UID, "lan")
    assert device_aliases({"networks": [{"name": "lan"}]}) == {"ua-net-lan": "networks[lan]"}


# --- real libvirt --------------------------------------------------------------------------------

SOCKETS = ("/var/run/libvirt/libvirt-sock", "/var/run/libvirt/virtqemud-sock")
DEFINE_CASES = [
    "minimal",
    "cpu-passthrough-emulated",
    "cpu-pinning",
    "cpu-shared-pool",
    "uefi-autoselect",
    "kernel-boot",
    "disks",
    "networks",
    "devices",
    "devices-vnc-tpm2",
    "lifecycle-features",
    "lifecycle-crash-preserve",
]


@pytest.mark.skipif(not any(os.path.exists(s) for s in SOCKETS), reason="libvirtd socket absent")
@pytest.mark.parametrize("case", DEFINE_CASES)
def test_define_on_libvirt(case, tmp_path):
    libvirt = pytest.importorskip("libvirt")
    _, spec, ctx_changes, _checks = next(c for c in CASES if c[0] == case)
    name = f"unittest-{case}"[:50]
    ref = VMRef("k3svirt", name, str(uuid.uuid4()), 1)
    # bridges and networks need not exist for define; emulation because /dev/kvm may be unusable here
    xml = build_domain(ref, spec, replace(CTX, **{**ctx_changes, "domain_type": "qemu"})).xml
    xml = xml.replace("<name>k3svirt_", "<name>k3svirt-", 1)  # k3svirt-unittest-<case>
    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = libvirt.open("qemu:///system")
    dom = None
    try:
        dom = conn.defineXML(xml)
        assert dom.name() == f"k3svirt-{name}"
        assert dom.UUIDString() == ref.uid
        back = ET.fromstring(dom.XMLDesc(0))
        vm = one(back, f"./metadata/{{{XML_NAMESPACE}}}vm")
        assert vm.get("uid") == ref.uid
        for alias in device_aliases(spec):
            assert back.findall(f".//alias[@name='{alias}']"), alias
    finally:
        if dom is not None:
            flags = libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | getattr(libvirt, "VIR_DOMAIN_UNDEFINE_TPM", 0)
            dom.undefineFlags(flags)
        conn.close()


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({**MEM, "cpu": {"cores": 4, "dedicatedCpuSet": "0-1"}}, "spec.cpu.dedicatedCpuSet", "as many CPUs"),
        ({**MEM, "cpu": {"emulatorCpuSet": "3-1"}}, "spec.cpu.emulatorCpuSet", "lo <= hi"),
        ({**MEM, "cpu": {"dedicatedCpuSet": "1,0-3"}}, "spec.cpu.dedicatedCpuSet", "names a CPU twice"),
        ({**MEM, "cpu": {"dedicatedCpuSet": "1,0-8192"}}, "spec.cpu.dedicatedCpuSet", "at most 8191"),
        ({**MEM, "cpu": {"dedicatedCpuSet": "0-4294967296"}}, "spec.cpu.dedicatedCpuSet", "must match"),
        ({"memory": {"size": "1Mi"}}, "spec.memory.size", "at least 16Mi"),
        ({"memory": {"size": "16777216.5"}}, "spec.memory.size", "whole number of bytes"),
        ({"memory": {"size": "3Mi", "hugepages": {"pageSize": "2Mi"}}}, "spec.memory.size", "multiple"),
        ({"memory": {"size": "1536Mi", "hugepages": {"pageSize": "1Gi"}}}, "spec.memory.size", "multiple"),
    ],
)
def test_node_independent_rules_are_the_schemas_not_the_builders(spec, field, message):
    """The builder trusts the schema (validate_merged runs it on the merged spec before a build):
    these specs are refused by the CRD's rules, naming the field, never by domain_xml."""
    errors = validate_spec("VirtualMachine", spec)
    assert any(e.path == field and message in e.message for e in errors), errors


def test_a_pinned_cpuset_is_expanded_in_order():
    assert len(parse_cpuset("0-8191")) == 8192
    built = ET.fromstring(build_domain(REF, {**MEM, "cpu": {"cores": 3, "dedicatedCpuSet": "7,2-3"}}, CTX).xml)
    assert [p.get("cpuset") for p in built.findall("./cputune/vcpupin")] == ["7", "2", "3"]


@pytest.mark.skipif(not any(os.path.exists(s) for s in SOCKETS), reason="libvirtd socket absent")
def test_tcg_translation_cache_is_accepted_by_libvirt():
    libvirt = pytest.importorskip("libvirt")
    ref = VMRef("k3svirt", "unittest-tb-cache", str(uuid.uuid4()), 1)
    xml = build_domain(ref, MEM, replace(CTX, domain_type="qemu", tcg_tb_cache_mib=32, disks={})).xml
    xml = xml.replace("<name>k3svirt_", "<name>k3svirt-", 1)
    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = libvirt.open("qemu:///system")
    try:
        dom = conn.defineXML(xml)
        try:
            cache = ET.fromstring(dom.XMLDesc(0)).find("./features/tcg/tb-cache")
            assert cache is not None and int(cache.text) * {"MiB": 1024, "KiB": 1}[cache.get("unit", "KiB")] == 32768
        finally:
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    finally:
        conn.close()


def test_a_disk_size_change_is_no_restart_other_disk_changes_are():
    """Sizes are grown in place (live through libvirt): they stay out of the restart decision."""
    from k3svirt_operator.domain_xml import domain_spec_hash

    disk = {"name": "d", "source": {"blank": {}}, "size": "1Gi"}
    base = domain_spec_hash({"memory": {"size": "64Mi"}, "disks": [disk]})
    assert domain_spec_hash({"memory": {"size": "64Mi"}, "disks": [{**disk, "size": "2Gi"}]}) == base
    assert domain_spec_hash({"memory": {"size": "64Mi"}, "disks": [{**disk, "cache": "writeback"}]}) != base
