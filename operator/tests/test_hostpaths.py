"""Host paths a VM may name: kernels and volumes only from the node's allowed directories."""

from __future__ import annotations

import os

from k3svirt_operator import hostpaths
from k3svirt_operator.config import Settings

NS = "tenant-a"


def node_rules() -> hostpaths.HostPaths:
    """The allow-lists as the operator reads them at start-up (from the environment the test set)."""
    return Settings.from_env().host_paths


def test_default_guest_kernel_is_allowed(monkeypatch):
    monkeypatch.delenv("K3SVIRT_STORAGE_ROOT", raising=False)  # the defaults follow the storage root
    monkeypatch.delenv("K3SVIRT_KERNEL_DIRS", raising=False)
    spec = {
        "boot": {
            "kernel": {"path": "/var/lib/k3svirt/guest/vmlinuz", "initrdPath": "/var/lib/k3svirt/guest/initramfs.img"}
        }
    }
    assert hostpaths.violations(spec, node_rules(), NS) == []


def test_host_files_and_disks_are_refused_naming_the_field():
    spec = {
        "boot": {"kernel": {"path": "/etc/shadow"}},
        "disks": [{"name": "a", "source": {"blank": {}}}, {"name": "root", "source": {"volume": {"path": "/dev/vda"}}}],
    }
    fields = [f for f, _ in hostpaths.violations(spec, node_rules(), NS)]
    assert fields == ["spec.boot.kernel.path", "spec.disks[1].source.volume.path"]


def test_dot_dot_and_symlinks_cannot_escape(tmp_path, monkeypatch):
    allowed = tmp_path / "vols"
    (allowed / NS).mkdir(parents=True)
    (allowed / NS / "escape").symlink_to("/etc")
    monkeypatch.setenv("K3SVIRT_VOLUME_DIRS", str(allowed))
    for path in (f"{allowed}/{NS}/../../secret.img", f"{allowed}/{NS}/escape/passwd"):
        spec = {"disks": [{"name": "d", "source": {"volume": {"path": path}}}]}
        assert hostpaths.violations(spec, node_rules(), NS), path
    ok = {"disks": [{"name": "d", "source": {"volume": {"path": f"{allowed}/{NS}/data.img"}}}]}
    assert hostpaths.violations(ok, node_rules(), NS) == []


def vol(path: str) -> dict:
    return {"disks": [{"name": "d", "source": {"volume": {"path": path}}}]}


def test_volumes_are_scoped_to_their_namespace(tmp_path, monkeypatch):
    """A VM may attach only volumes under DIR/<its namespace>/: never another tenant's volume (by
    path, `..`, or a symlink of its own), nor a file of DIR itself, whatever its namespace is called."""
    allowed = tmp_path / "vols"
    for ns in (NS, "tenant-b"):
        (allowed / ns).mkdir(parents=True)
        (allowed / ns / "disk.raw").write_bytes(b"\0" * 512)
    (allowed / "loose.raw").write_bytes(b"\0" * 512)
    (allowed / NS / "theirs").symlink_to(allowed / "tenant-b" / "disk.raw")
    monkeypatch.setenv("K3SVIRT_VOLUME_DIRS", str(allowed))
    rules = node_rules()
    assert hostpaths.violations(vol(f"{allowed}/{NS}/disk.raw"), rules, NS) == []
    assert hostpaths.violations(vol(f"{allowed}/tenant-b/disk.raw"), rules, "tenant-b") == []
    for path in (f"{allowed}/tenant-b/disk.raw", f"{allowed}/{NS}/../tenant-b/disk.raw", f"{allowed}/{NS}/theirs",
                 f"{allowed}/loose.raw", str(allowed)):  # fmt: skip
        found = hostpaths.violations(vol(path), rules, NS)
        assert [f for f, _ in found] == ["spec.disks[0].source.volume.path"], path
        assert f"namespace {NS!r}" in found[0][1] and f"{allowed}/{NS}" in found[0][1]
    for odd in ("", ".", "..", "a/b"):  # never DIR itself or its parent (namespaces are DNS labels anyway)
        assert hostpaths.volume_roots(rules, odd) == []


def test_a_granted_path_belongs_to_one_namespace(tmp_path, monkeypatch):
    """NS=PATH hands one file or device (e.g. a whole disk by id) to one namespace only."""
    disk = tmp_path / "by-id" / "ata-DISK1"
    disk.parent.mkdir()
    disk.symlink_to(tmp_path / "sdb")
    (tmp_path / "sdb").write_bytes(b"\0" * 512)
    monkeypatch.setenv("K3SVIRT_VOLUME_DIRS", f"{tmp_path}/vols:{NS}={disk}:Bad_NS={disk}:x=relative")
    rules = node_rules()
    assert rules.volume_dirs == (f"{tmp_path}/vols",)
    assert rules.volume_grants == ((NS, str(tmp_path / "sdb")),)
    assert hostpaths.violations(vol(str(disk)), rules, NS) == []
    assert hostpaths.violations(vol(str(disk)), rules, "tenant-b")
    assert hostpaths.violations(vol(str(tmp_path / "sdb")), rules, NS) == []  # the same device, resolved


def test_host_networks_are_allow_listed(monkeypatch):
    """`bridge: cni0` would put a VM on the pod network: bridges and NAT networks are allow-listed."""
    nics = [{"name": "a", "bridge": {"name": "cni0"}}, {"name": "b", "nat": {}},
            {"name": "c", "nat": {"network": "mgmt"}}, {"name": "d", "bridge": {"name": "br0"}}]  # fmt: skip
    spec = {"networks": nics}
    monkeypatch.delenv("K3SVIRT_BRIDGES", raising=False)
    monkeypatch.delenv("K3SVIRT_NAT_NETWORKS", raising=False)
    assert [f for f, _ in hostpaths.violations(spec, node_rules(), NS)] == [
        "spec.networks[0].bridge.name",
        "spec.networks[2].nat.network",
        "spec.networks[3].bridge.name",
    ]
    monkeypatch.setenv("K3SVIRT_BRIDGES", "br0")
    monkeypatch.setenv("K3SVIRT_NAT_NETWORKS", "default:mgmt")
    assert [f for f, _ in hostpaths.violations(spec, node_rules(), NS)] == ["spec.networks[0].bridge.name"]


def test_the_hosts_boot_directory_is_not_a_default_kernel_dir(monkeypatch):
    """A VM booting /boot's kernel and initramfs would read whatever the host's initramfs carries."""
    monkeypatch.delenv("K3SVIRT_STORAGE_ROOT", raising=False)
    monkeypatch.delenv("K3SVIRT_KERNEL_DIRS", raising=False)
    rules = node_rules()
    assert not any(d == "/boot" or d.startswith("/boot/") for d in rules.kernel_dirs), rules.kernel_dirs
    release = os.uname().release
    spec = {"boot": {"kernel": {"path": f"/boot/vmlinuz-{release}", "initrdPath": f"/boot/initrd.img-{release}"}}}
    fields = [f for f, _ in hostpaths.violations(spec, rules, NS)]
    assert fields == ["spec.boot.kernel.path", "spec.boot.kernel.initrdPath"]
