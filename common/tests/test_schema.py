"""validate_spec / validate_object against crds/virtualmachines.yaml."""

import copy
from pathlib import Path

import pytest
import yaml
from k3svirt_common import schema
from k3svirt_common.names import VM_KIND

VM = VM_KIND
OK = {"memory": {"size": "512Mi"}}
FULL = {
    "runStrategy": "RerunOnFailure",
    "template": {"name": "ubuntu", "version": "1.2.0"},
    "presets": [{"name": "pinned"}],
    "nodeName": "node1",
    "cpu": {
        "sockets": 1,
        "cores": 2,
        "threads": 1,
        "model": "host-model",
        "dedicatedCpuSet": "2-3",
        "emulatorCpuSet": "1",
    },
    "memory": {"size": "1Gi", "hugepages": {"pageSize": "2Mi"}},
    "boot": {"firmware": "uefi", "kernel": {"path": "/k", "initrdPath": "/i", "cmdline": "console=ttyS0"}},
    "iothreads": 1,
    "disks": [
        {
            "name": "root",
            "bus": "virtio",
            "size": "10Gi",
            "format": "qcow2",
            "source": {"image": {"url": "https://x/y.qcow2", "checksum": "sha256:" + "a" * 64, "clone": "copy"}},
            "qcow2": {"clusterSize": "2Mi", "preallocation": "metadata", "lazyRefcounts": True},
            "provisioning": "thick",
            "cache": "none",
            "io": "native",
            "iothread": 1,
            "readOnly": False,
            "bootOrder": 1,
            "serial": "ROOT",
        },
        {"name": "blank", "size": "1G", "source": {"blank": {}}, "bus": "sata"},
        {"name": "vol", "format": "raw", "source": {"volume": {"path": "/dev/sdb"}}, "bus": "scsi"},
    ],
    "networks": [
        {"name": "default", "nat": {"network": "default"}},
        {"name": "lan", "bridge": {"name": "br0"}, "model": "e1000e", "macAddress": "52:54:00:aa:bb:cc"},
    ],
    "cloudInit": {
        "userData": "#cloud-config\n",
        "networkData": "version: 2\n",
        "metaData": "a: b\n",
        "sshAuthorizedKeys": ["ssh-ed25519 AAAA me"],
    },
    "hostDevices": [{"name": "nic", "pciPassthrough": "node1-0000-01-00-0"}],
    "devices": {
        "watchdog": {"model": "i6300esb", "action": "reset"},
        "tpm": {"model": "tpm-crb", "version": "2.0"},
        "video": {"model": "virtio"},
        "inputs": [{"type": "tablet", "bus": "usb"}],
        "graphics": {"type": "vnc"},
        "rng": True,
        "memballoon": True,
        "serialConsole": True,
    },
    "lifecycle": {"onPoweroff": "destroy", "onReboot": "restart", "onCrash": "coredump-restart"},
    "features": {"acpi": True, "apic": True, "hyperv": False},
    "deletionPolicy": "Retain",
}


def paths(errors):
    return {e.path for e in errors}


def test_valid_minimal_and_full():
    assert schema.validate_spec(VM, OK) == []
    assert schema.validate_spec(VM, FULL) == []
    assert schema.validate_spec(VM, schema.apply_vm_defaults(FULL)) == []


@pytest.mark.parametrize(
    ("patch", "path", "needle"),
    [
        ({"runStrategy": "Sometimes"}, "spec.runStrategy", "supported values"),
        (
            {"disks": [{"name": "a", "bus": "ide", "size": "1G", "source": {"blank": {}}}]},
            "spec.disks[0].bus",
            "ide",
        ),
        (
            {"disks": [{"name": "A_b", "size": "1G", "source": {"blank": {}}}]},
            "spec.disks[0].name",
            "must match",
        ),
        ({"disks": [{"name": "a", "source": {"blank": {}}}]}, "spec.disks[0]", "size is required"),
        ({"disks": [{"name": "a", "source": {}}]}, "spec.disks[0].source", "exactly one"),
        (
            {"disks": [{"name": "a", "size": "1G", "source": {"blank": {}, "volume": {"path": "/x"}}}]},
            "spec.disks[0].source",
            "exactly one",
        ),
        (
            {
                "disks": [
                    {"name": "a", "size": "1G", "source": {"blank": {}}},
                    {"name": "a", "size": "1G", "source": {"blank": {}}},
                ]
            },
            "spec.disks[1]",
            "Duplicate",
        ),
        (
            {"disks": [{"name": "a", "source": {"image": {"url": "ftp://x"}}}]},
            "spec.disks[0].source.image.url",
            "",
        ),
        (
            {"disks": [{"name": "a", "source": {"image": {"url": "http://x", "checksum": "md5:1"}}}]},
            "spec.disks[0].source.image.checksum",
            "",
        ),
        (
            {"disks": [{"name": "a", "format": "raw", "qcow2": {}, "source": {"volume": {"path": "/x"}}}]},
            "spec.disks[0]",
            "qcow2 options",
        ),
        (
            {"disks": [{"name": "a", "qcow2": {"clusterSize": "3Ki"}, "source": {"volume": {"path": "/x"}}}]},
            "spec.disks[0].qcow2.clusterSize",
            "",
        ),
        (
            {"disks": [{"name": "a", "io": "native", "cache": "writeback", "source": {"volume": {"path": "/x"}}}]},
            "spec.disks[0]",
            "io native",
        ),
        (
            {"disks": [{"name": "a", "iothread": 2, "source": {"volume": {"path": "/x"}}}], "iothreads": 1},
            "spec",
            "iothread",
        ),
        (
            {
                "disks": [{"name": "a", "bus": "sata", "iothread": 1, "source": {"volume": {"path": "/x"}}}],
                "iothreads": 1,
            },
            "spec.disks[0]",
            "virtio",
        ),
        ({"networks": [{"name": "n"}]}, "spec.networks[0]", "exactly one of nat, bridge"),
        (
            {"networks": [{"name": "n", "nat": {}, "macAddress": "01:00:00:00:00:00"}]},
            "spec.networks[0].macAddress",
            "",
        ),
        ({"networks": [{"name": "n", "nat": {}, "model": "ne2k"}]}, "spec.networks[0].model", ""),
        ({"cpu": {"sockets": 0}}, "spec.cpu.sockets", "greater than or equal to 1"),
        ({"cpu": {"sockets": 16, "cores": 16, "threads": 2}}, "spec.cpu", "at most 255"),
        ({"cpu": {"dedicatedCpuSet": "a-b"}}, "spec.cpu.dedicatedCpuSet", ""),
        ({"memory": {"size": "1GB"}}, "spec.memory.size", ""),
        ({"memory": {"size": "1Gi", "hugepages": {"pageSize": "4Ki"}}}, "spec.memory.hugepages.pageSize", ""),
        ({"memory": {}}, "spec.memory.size", "Required"),
        ({"boot": {"firmware": "coreboot"}}, "spec.boot.firmware", ""),
        ({"boot": {"kernel": {"path": "vmlinuz"}}}, "spec.boot.kernel.path", ""),
        ({"devices": {"watchdog": {"model": "ib700"}}}, "spec.devices.watchdog.model", ""),
        ({"devices": {"tpm": {"model": "tpm-crb", "version": "1.2"}}}, "spec.devices.tpm", "tpm-crb"),
        ({"devices": {"inputs": [{"type": "tablet", "bus": "ps2"}]}}, "spec.devices.inputs[0]", "tablet"),
        ({"devices": {"graphics": {"type": "rdp"}}}, "spec.devices.graphics.type", ""),
        ({"lifecycle": {"onReboot": "preserve"}}, "spec.lifecycle.onReboot", ""),
        (
            {"lifecycle": {"onPoweroff": "restart", "onReboot": "destroy"}},
            "spec.lifecycle",
            "onPoweroff restart",
        ),
        ({"nodeName": "n", "nodeSelector": {"a": "b"}}, "spec", "at most one of nodeName"),
        ({"hostDevices": [{"name": "x"}]}, "spec.hostDevices[0]", "set exactly one of pciPassthrough"),
        ({"deletionPolicy": "Orphan"}, "spec.deletionPolicy", ""),
        ({"runStategy": "Always"}, "spec.runStategy", "unknown field"),
    ],
)
def test_invalid(patch, path, needle):
    spec = {**copy.deepcopy(OK), **patch}
    errors = schema.validate_spec(VM, spec)
    assert path in paths(errors), errors
    assert any(needle in e.message for e in errors if e.path == path), errors


@pytest.mark.parametrize(
    ("disks", "path", "needle"),
    [
        ([{"name": "a", "size": "1Gi", "qcow2": {"clusterSize": "3Ki"}}], "spec.disks[0].qcow2.clusterSize", ""),
        ([{"name": "a", "size": "1Gi", "qcow2": {"clusterSize": "256"}}], "spec.disks[0].qcow2.clusterSize", ""),
        (
            [{"name": "a", "size": "1Gi"}, {"name": "b", "size": "1Gi", "qcow2": {"clusterSize": "4Mi"}}],
            "spec.disks[1].qcow2.clusterSize",
            "",
        ),
        (
            [{"name": "a", "size": "1Gi", "format": "raw", "qcow2": {"lazyRefcounts": True}}],
            "spec.disks[0]",
            "only valid with format qcow2",
        ),
        ([{"name": "a", "format": "raw", "source": {"image": {"url": "http://h/i"}}}], "spec.disks[0]", "overlay"),
        ([{"name": "a", "source": {"blank": {}}}], "spec.disks[0]", "size is required for a blank disk"),
        ([{"name": "a"}], "spec", "a disk without source is blank"),
        ([{"name": "a", "size": "lots"}], "spec.disks[0].size", ""),
        ([{"name": "a", "size": "0"}], "spec.disks[0].size", "size must be positive"),
        ([{"name": "a", "size": "1Gi"}, {"name": "a", "size": "1Gi"}], "spec.disks[1]", "Duplicate value"),
        ([{"name": "Root", "size": "1Gi"}], "spec.disks[0].name", ""),
        (
            [{"name": "a", "size": "1Gi", "source": {"blank": {}, "volume": {"path": "/x"}}}],
            "spec.disks[0].source",
            "exactly one of",
        ),
        ([{"name": "a", "source": {"volume": {"path": "relative"}}}], "spec.disks[0].source.volume.path", ""),
        (
            [{"name": "a", "size": "1Gi", "source": {"volume": {"path": "/x"}}}],
            "spec.disks[0]",
            "not allowed with source.volume",
        ),
        ([{"name": "a", "source": {"image": {"url": "ftp://h/i"}}}], "spec.disks[0].source.image.url", ""),
        (
            [{"name": "a", "source": {"image": {"url": "http://h/i", "checksum": "md5:00"}}}],
            "spec.disks[0].source.image.checksum",
            "",
        ),
        (
            [{"name": "a", "source": {"image": {"url": "http://h/i", "clone": "link"}}}],
            "spec.disks[0].source.image.clone",
            "",
        ),
        ([{"name": "a", "size": "1Gi", "format": "vmdk"}], "spec.disks[0].format", ""),
        ([{"name": "a", "size": "1Gi", "provisioning": "fat"}], "spec.disks[0].provisioning", ""),
        ([{"name": "a", "size": "1Gi", "qcow2": {"preallocation": "some"}}], "spec.disks[0].qcow2.preallocation", ""),
    ],
)
def test_disk_rules_live_in_the_crd(disks, path, needle):
    """The disk rules storage.plan_disks once repeated: the CRD's only (the operator validates the merged
    spec with it, templates.validate_merged), each error naming the field."""
    errors = schema.validate_spec(VM, {"memory": {"size": "1Gi"}, "disks": disks})
    assert path in paths(errors), errors
    assert any(needle in e.message for e in errors if e.path == path), errors


def test_not_strict_ignores_unknown():
    assert schema.validate_spec(VM, {**OK, "foo": 1}, strict=False) == []


def test_template_may_supply_memory():
    """The one memory.size rule (a CEL rule of the CRD): the VM sets it or names a template."""
    assert schema.validate_spec(VM, {"template": {"name": "t"}}) == []
    errs = schema.validate_spec(VM, {})
    assert paths(errs) == {"spec.memory.size"}
    assert "unless spec.template supplies it" in errs[0].message


def test_validate_object():
    obj = {
        "apiVersion": "k3svirt.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": "vm1"},
        "spec": OK,
    }
    assert schema.validate_object(VM, obj) == []
    bad = {**obj, "apiVersion": "v1", "metadata": {"name": "Bad_Name"}}
    errs = schema.validate_object(VM, bad)
    assert "apiVersion" in paths(errs)
    assert any("DNS label" in e.message for e in errs)
    status = {
        **obj,
        "status": {
            "printableStatus": "Running",
            "monitoring": {"anything": 1},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    assert schema.validate_object(VM, status) == []


def test_crds_dir_env(tmp_path, monkeypatch):
    src = Path(schema.crds_dir()) / "virtualmachines.yaml"
    (tmp_path / "vm.yaml").write_text(src.read_text())  # found by kind, not file name
    monkeypatch.setenv("K3SVIRT_CRDS_DIR", str(tmp_path))
    schema.clear_cache()
    try:
        assert schema.crds_dir() == tmp_path
        assert schema.validate_spec(VM, OK) == []
        with pytest.raises(schema.SchemaNotFound):
            schema.load_crd("NoSuchKind")
    finally:
        monkeypatch.delenv("K3SVIRT_CRDS_DIR")
        schema.clear_cache()


def test_crd_shape():
    crd = schema.load_crd(VM)
    assert crd["spec"]["names"]["shortNames"] == ["vm"]
    assert crd["spec"]["names"]["categories"] == ["k3svirt"]
    v = crd["spec"]["versions"][0]
    assert v["subresources"] == {"status": {}}
    assert [c["name"] for c in v["additionalPrinterColumns"]] == [
        "Status",
        "Ready",
        "Node",
        "IP",
        "Accel",
        "Age",
    ]


def _walk(s, path="root"):
    yield path, s
    for k, v in (s.get("properties") or {}).items():
        yield from _walk(v, f"{path}.{k}")
    if isinstance(s.get("items"), dict):
        yield from _walk(s["items"], f"{path}[]")


def test_every_spec_field_described():
    spec = schema.openapi_schema(VM)["properties"]["spec"]
    missing = [p for p, s in _walk(spec, "spec") if not s.get("description") and not p.endswith("[]")]
    assert missing == []


def test_defaults_idempotent_and_valid():
    d = schema.apply_vm_defaults(FULL)
    assert d == schema.apply_vm_defaults(d)
    assert d["disks"][1]["bus"] == "sata" and d["disks"][2]["io"] == "native"
    assert d["devices"]["memballoon"] is True
    m = schema.apply_vm_defaults(OK)
    assert m["devices"]["video"]["model"] == "none" and m["boot"]["firmware"] == "bios"
    assert "qcow2" not in schema.apply_vm_defaults({"disks": [{"name": "a", "format": "raw"}]})["disks"][0]


def test_docs_examples_validate():
    doc = Path(__file__).resolve().parents[2] / "docs" / "api" / "virtualmachine.md"
    text = doc.read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    vms = [y for b in blocks for y in yaml.safe_load_all(b) if isinstance(y, dict) and y.get("kind") == VM]
    assert len(vms) >= 2
    for obj in vms:
        assert schema.validate_object(VM, obj) == [], obj["metadata"]["name"]
