"""Host paths a VM may name: kernels and volumes only from the node's allowed directories."""

from __future__ import annotations

from k3svirt_operator import hostpaths
from k3svirt_operator.config import Settings


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
    assert hostpaths.violations(spec, node_rules()) == []


def test_host_files_and_disks_are_refused_naming_the_field():
    spec = {
        "boot": {"kernel": {"path": "/etc/shadow"}},
        "disks": [{"name": "a", "source": {"blank": {}}}, {"name": "root", "source": {"volume": {"path": "/dev/vda"}}}],
    }
    fields = [f for f, _ in hostpaths.violations(spec, node_rules())]
    assert fields == ["spec.boot.kernel.path", "spec.disks[1].source.volume.path"]


def test_dot_dot_and_symlinks_cannot_escape(tmp_path, monkeypatch):
    allowed = tmp_path / "vols"
    allowed.mkdir()
    (allowed / "escape").symlink_to("/etc")
    monkeypatch.setenv("K3SVIRT_VOLUME_DIRS", str(allowed))
    for path in (f"{allowed}/../secret.img", f"{allowed}/escape/passwd"):
        spec = {"disks": [{"name": "d", "source": {"volume": {"path": path}}}]}
        assert hostpaths.violations(spec, node_rules()), path
    ok = {"disks": [{"name": "d", "source": {"volume": {"path": f"{allowed}/data.img"}}}]}
    assert hostpaths.violations(ok, node_rules()) == []


def test_host_networks_are_allow_listed(monkeypatch):
    """`bridge: cni0` would put a VM on the pod network: bridges and NAT networks are allow-listed."""
    nics = [{"name": "a", "bridge": {"name": "cni0"}}, {"name": "b", "nat": {}},
            {"name": "c", "nat": {"network": "mgmt"}}, {"name": "d", "bridge": {"name": "br0"}}]  # fmt: skip
    spec = {"networks": nics}
    monkeypatch.delenv("K3SVIRT_BRIDGES", raising=False)
    monkeypatch.delenv("K3SVIRT_NAT_NETWORKS", raising=False)
    assert [f for f, _ in hostpaths.violations(spec, node_rules())] == [
        "spec.networks[0].bridge.name",
        "spec.networks[2].nat.network",
        "spec.networks[3].bridge.name",
    ]
    monkeypatch.setenv("K3SVIRT_BRIDGES", "br0")
    monkeypatch.setenv("K3SVIRT_NAT_NETWORKS", "default:mgmt")
    assert [f for f, _ in hostpaths.violations(spec, node_rules())] == ["spec.networks[0].bridge.name"]
