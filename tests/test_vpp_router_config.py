"""The vpp-router template's router configuration: template parameters (meta-data) -> the files
VPP starts from. The test runs the exact k3svirt-vpp-config script the rendered cloud-init
user-data installs, against a scratch root (K3SVIRT_VPP_ROOT: meta-data, PCI functions,
/proc/meminfo), and checks what it writes — or that a bad value stops it, naming the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from k3svirt_common import templates as t

REPO = Path(__file__).resolve().parent.parent
STORE = {p.stem: yaml.safe_load(p.read_text()) for p in (REPO / "vm-templates").glob("*.yaml")}
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE0test user@example"
# guest PCI functions: a virtio NIC (management), then the two passthrough 82599 ports
FUNCTIONS = {
    "0000:01:00.0": ("0x020000", "0x1af4", "0x1041"),
    "0000:07:00.0": ("0x020000", "0x8086", "0x10fb"),
    "0000:08:00.0": ("0x020000", "0x8086", "0x10fb"),
    "0000:00:1f.2": ("0x010601", "0x8086", "0x2922"),
}


def rendered(meta: dict[str, str] | None = None) -> tuple[str, dict]:
    """(config script, meta-data) of the vpp-router template with ``meta`` as its routerConfig parameter."""
    vm: dict = {"template": {"name": "vpp-router"}, "cloudInit": {"sshAuthorizedKeys": [KEY]}}
    if meta is not None:
        vm["cloudInit"]["metaData"] = yaml.safe_dump(meta)
    spec = t.expand(vm, STORE.get).spec
    files = {f["path"]: f for f in yaml.safe_load(spec["cloudInit"]["userData"])["write_files"]}
    return files["/usr/local/sbin/k3svirt-vpp-config"]["content"], yaml.safe_load(spec["cloudInit"]["metaData"])


def run(tmp_path: Path, meta: dict[str, str] | None = None, mem_mib: int = 4096) -> subprocess.CompletedProcess:
    script, md = rendered(meta)
    root = tmp_path / "root"
    (root / "run/cloud-init").mkdir(parents=True)
    (root / "run/cloud-init/instance-data.json").write_text(json.dumps({"ds": {"meta_data": md}}))
    (root / "proc").mkdir()
    (root / "proc/meminfo").write_text(f"MemTotal:       {mem_mib * 1024} kB\nMemFree: 1 kB\n")
    for addr, (cls, vendor, device) in FUNCTIONS.items():
        d = root / "sys/bus/pci/devices" / addr
        d.mkdir(parents=True)
        for name, value in (("class", cls), ("vendor", vendor), ("device", device)):
            (d / name).write_text(value + "\n")
    (tmp_path / "k3svirt-vpp-config").write_text(script)
    return subprocess.run(
        [sys.executable, str(tmp_path / "k3svirt-vpp-config")],
        env={"K3SVIRT_VPP_ROOT": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )


def files(tmp_path: Path) -> dict[str, str]:
    root = tmp_path / "root"
    return {p: (root / p.lstrip("/")).read_text() for p in
            ("/etc/vpp/startup.conf", "/etc/vpp/router.vpp", "/etc/sysctl.d/90-k3svirt-vpp.conf")}  # fmt: skip


def test_template_defaults_render_a_nat44_router(tmp_path):
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = files(tmp_path)
    cli = out["/etc/vpp/router.vpp"].splitlines()
    assert cli == [
        "set interface ip address wan 192.0.2.2/24",
        "set interface state wan up",
        "set interface ip address lan 192.168.100.1/24",
        "set interface state lan up",
        "ip route add 0.0.0.0/0 via 192.0.2.1 wan",
        "nat44 plugin enable sessions 63000",
        "nat44 add interface address wan",
        "set interface nat44 in lan out wan",
    ]
    conf = out["/etc/vpp/startup.conf"]
    # the passthrough ports, not the virtio management NIC, in PCI order: WAN first
    assert "dev 0000:07:00.0 { name wan num-rx-queues 3 }" in conf
    assert "dev 0000:08:00.0 { name lan num-rx-queues 3 }" in conf and "0000:01:00.0" not in conf
    assert "main-core 0\n  corelist-workers 1-3" in conf and "buffers-per-numa 32768" in conf
    assert "main-heap-size 1024M" in conf and "statseg {\n  size 32M" in conf
    # the sizing rule: 32768 x 2.5 KiB + 10 % = 88 MiB, + 1024 heap + 32 stats = 1144 MiB = 572 pages
    assert "vm.nr_hugepages = 572\n" in out["/etc/sysctl.d/90-k3svirt-vpp.conf"]


def test_parameters_drive_addresses_routes_and_nat(tmp_path):
    meta = {
        "vpp_wan_address": "dhcp",
        "vpp_lan_address": "10.10.0.1/16",
        "vpp_nat44": "false",
        "vpp_routes": "10.20.0.0/16 via 10.10.0.254 lan; 2001:db8::/32 via 2001:db8:ffff::1 wan",
        "vpp_wan_pci": "0000:08:00.0",
        "vpp_lan_pci": "0000:07:00.0",
        "vpp_workers": "1",
        "vpp_buffers": "16384",
        "vpp_main_heap": "512M",
    }
    proc = run(tmp_path, meta)
    assert proc.returncode == 0, proc.stderr
    out = files(tmp_path)
    assert out["/etc/vpp/router.vpp"].splitlines() == [
        "set dhcp client intfc wan",
        "set interface state wan up",
        "set interface ip address lan 10.10.0.1/16",
        "set interface state lan up",
        "ip route add 10.20.0.0/16 via 10.10.0.254 lan",
        "ip route add 2001:db8::/32 via 2001:db8:ffff::1 wan",
    ]
    conf = out["/etc/vpp/startup.conf"]
    assert "dev 0000:08:00.0 { name wan num-rx-queues 1 }" in conf and "corelist-workers 1-1" in conf
    # 16384 x 2.5 KiB + 10 % = 44 MiB + 512 + 32 = 588 MiB = 294 pages
    assert "vm.nr_hugepages = 294\n" in out["/etc/sysctl.d/90-k3svirt-vpp.conf"]


@pytest.mark.parametrize(
    ("meta", "key"),
    [
        ({"vpp_lan_address": "192.168.100.1"}, "vpp_lan_address"),
        ({"vpp_wan_address": "192.0.2.300/24"}, "vpp_wan_address"),
        ({"vpp_wan_gateway": "gw.example"}, "vpp_wan_gateway"),
        ({"vpp_routes": "10.0.0.0/8 via 10.0.0.1 mgmt"}, "vpp_routes"),
        ({"vpp_routes": "10.0.0.0/8 via 10.0.0.1 lan; $(reboot) via 1.1.1.1 wan"}, "vpp_routes"),
        ({"vpp_nat44": "yes"}, "vpp_nat44"),
        ({"vpp_main_heap": "lots"}, "vpp_main_heap"),
        ({"vpp_wan_pci": "0000:07:00.0; reboot"}, "vpp_wan_pci"),
        ({"vpp_workers": "-1"}, "vpp_workers"),
    ],
)
def test_bad_parameter_stops_naming_the_key(tmp_path, meta, key):
    proc = run(tmp_path, meta)
    assert proc.returncode != 0 and f"meta-data {key}=" in proc.stderr, proc.stderr
    assert not (tmp_path / "root/etc/vpp").exists()  # nothing half written


def test_too_little_guest_memory_names_the_setting(tmp_path):
    proc = run(tmp_path, mem_mib=2048)
    assert proc.returncode != 0 and "memory.size" in proc.stderr and "1144 MiB" in proc.stderr, proc.stderr
