"""k3svirt_common.templates: semver, resolution, merge, error naming, import/export, versioning."""

from __future__ import annotations

import copy

import pytest
from k3svirt_common import templates as t
from k3svirt_common.templates import FieldError, TemplateError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE0test user@example"


def tmpl(name="base", kind="Template", versions=None):
    return {
        "apiVersion": "k3svirt.io/v1alpha1",
        "kind": "VMTemplate",
        "metadata": {"name": name},
        "spec": {"kind": kind, "versions": versions or []},
    }


BASE_VM = {
    "cpu": {"cores": 1},
    "memory": {"size": "256Mi"},
    "disks": [{"name": "root", "size": "1Gi", "source": {"blank": {}}}],
    "networks": [{"name": "default", "nat": {}}],
}


def base_template():
    return tmpl(
        versions=[
            {"version": "1.0.0", "vm": copy.deepcopy(BASE_VM)},
            {"version": "1.1.0", "vm": {**copy.deepcopy(BASE_VM), "memory": {"size": "512Mi"}}},
        ]
    )


# --------------------------------------------------------------------------------------- semver
def test_semver_precedence():
    order = [
        "0.9.0",
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.2.0",
        "1.10.0",
        "2.0.0",
    ]
    shuffled = list(reversed(order))
    assert t.sort_versions(shuffled) == order
    assert t.parse_semver("1.0.0+build.1") == t.parse_semver("1.0.0")


@pytest.mark.parametrize("bad", ["1.0", "v1.0.0", "01.0.0", "1.0.0-", "", "1.0.0.0", None])
def test_semver_invalid(bad):
    with pytest.raises(TemplateError) as e:
        t.parse_semver(bad)
    assert e.value.errors[0].field == "version"


# --------------------------------------------------------------------------------------- resolve
def test_resolve_latest_and_pinned():
    obj = base_template()
    assert t.resolve(obj)[0] == "1.1.0"
    version, frag = t.resolve(obj, "1.0.0")
    assert version == "1.0.0" and frag["memory"]["size"] == "256Mi"
    frag["memory"]["size"] = "1Gi"  # a copy: the object is untouched
    assert obj["spec"]["versions"][0]["vm"]["memory"]["size"] == "256Mi"


def test_resolve_skips_deprecated_unless_pinned():
    obj = t.deprecate(base_template(), "1.1.0")
    assert t.resolve(obj)[0] == "1.0.0"
    assert t.resolve(obj, "1.1.0")[0] == "1.1.0"  # still resolvable when pinned
    obj = t.deprecate(obj, "1.0.0")
    with pytest.raises(TemplateError, match="no non-deprecated version"):
        t.resolve(obj)


def test_resolve_unknown_version_names_field():
    with pytest.raises(TemplateError) as e:
        t.resolve(base_template(), "3.0.0")
    assert e.value.errors[0].field == "template.version"
    assert "1.0.0, 1.1.0" in e.value.errors[0].message


def test_vm_keeps_pinned_version_after_new_version():
    store = {"base": base_template()}
    vm = {"template": {"name": "base", "version": "1.0.0"}}
    before = t.expand(vm, store.get)
    store["base"] = t.add_version(store["base"], "2.0.0", {**BASE_VM, "memory": {"size": "1Gi"}})
    after = t.expand(vm, store.get)
    assert before.template == after.template == {"name": "base", "version": "1.0.0"}
    assert after.spec["memory"]["size"] == "256Mi"
    # an unpinned VM keeps the version recorded in its status (sticky) ...
    sticky = t.expand({"template": {"name": "base"}}, store.get, resolved_template={"name": "base", "version": "1.1.0"})
    assert sticky.template["version"] == "1.1.0" and sticky.spec["memory"]["size"] == "512Mi"
    # ... and a new VM gets the latest
    assert t.expand({"template": {"name": "base"}}, store.get).template["version"] == "2.0.0"


# ----------------------------------------------------------------------------------------- merge
def test_merge_named_lists_by_name_and_scalars_override():
    tpl = {**BASE_VM, "disks": [{"name": "root", "size": "1Gi", "source": {"blank": {}}, "cache": "none"}]}
    out = t.merge(
        tpl,
        [],
        {
            "cpu": {"sockets": 2},
            "disks": [
                {"name": "root", "size": "5Gi"},
                {"name": "data", "size": "2Gi", "source": {"blank": {}}},
            ],
        },
    )
    assert out["cpu"] == {"cores": 1, "sockets": 2}
    assert [d["name"] for d in out["disks"]] == ["root", "data"]
    assert out["disks"][0] == {"name": "root", "size": "5Gi", "source": {"blank": {}}, "cache": "none"}


def test_merge_one_of_groups_are_replaced():
    tpl = {
        **BASE_VM,
        "disks": [
            {
                "name": "root",
                "source": {"image": {"url": "https://x/y.qcow2"}},
                "qcow2": {"clusterSize": "2Mi"},
            }
        ],
    }
    out = t.merge(
        tpl,
        [],
        {
            "disks": [{"name": "root", "format": "raw", "source": {"volume": {"path": "/dev/vg/r"}}}],
            "networks": [{"name": "default", "bridge": {"name": "br0"}}],
        },
    )
    assert out["disks"][0]["source"] == {"volume": {"path": "/dev/vg/r"}}
    assert "qcow2" not in out["disks"][0]  # format raw drops inherited qcow2 options
    assert out["networks"][0] == {"name": "default", "bridge": {"name": "br0"}}


def test_a_host_device_asked_for_by_kind_replaces_the_inherited_name():
    """vpp-router names PCIPassthroughs vpp-wan/vpp-lan; a VM asking for any device of a kind instead
    (hostDevices[].resource) must not inherit the name too (the CRD allows exactly one of them)."""
    tpl = {
        **BASE_VM,
        "hostDevices": [{"name": "wan", "pciPassthrough": "vpp-wan"}, {"name": "lan", "pciPassthrough": "vpp-lan"}],
    }
    out = t.merge(tpl, [], {"hostDevices": [{"name": "wan", "resource": "k3svirt.io/pci-8086-10fb"}]})
    assert out["hostDevices"] == [
        {"name": "wan", "resource": "k3svirt.io/pci-8086-10fb"},
        {"name": "lan", "pciPassthrough": "vpp-lan"},
    ]
    back = t.merge(
        {**BASE_VM, "hostDevices": out["hostDevices"]},
        [],
        {"hostDevices": [{"name": "wan", "pciPassthrough": "x520-p0"}]},
    )
    assert back["hostDevices"][0] == {"name": "wan", "pciPassthrough": "x520-p0"}


def test_merge_unnamed_lists_replace_and_none_deletes():
    tpl = {
        **BASE_VM,
        "devices": {"inputs": [{"type": "tablet"}], "rng": True},
        "cloudInit": {"sshAuthorizedKeys": [KEY]},
    }
    out = t.merge(tpl, [], {"devices": {"inputs": [{"type": "keyboard", "bus": "virtio"}], "rng": None}})
    assert out["devices"] == {"inputs": [{"type": "keyboard", "bus": "virtio"}]}


def test_disk_and_network_defaults():
    preset = {
        "iothreads": 2,
        "diskDefaults": {"cache": "unsafe", "iothread": "auto", "qcow2": {"lazyRefcounts": True}},
        "networkDefaults": {"model": "e1000e"},
    }
    vm = {
        "disks": [
            {"name": "scratch", "size": "1Gi", "source": {"blank": {}}, "format": "raw"},
            {"name": "cd", "bus": "sata", "size": "1Gi", "source": {"blank": {}}},
            {"name": "data", "size": "1Gi", "source": {"blank": {}}, "cache": "writeback"},
        ]
    }
    out = t.merge(BASE_VM, [preset], vm)
    disks = {d["name"]: d for d in out["disks"]}
    assert disks["root"]["cache"] == "unsafe" and disks["root"]["qcow2"] == {"lazyRefcounts": True}
    assert disks["root"]["iothread"] == 1 and disks["scratch"]["iothread"] == 2 and disks["data"]["iothread"] == 1
    assert "qcow2" not in disks["scratch"]  # raw disk: no qcow2 defaults
    assert "iothread" not in disks["cd"]  # not virtio
    assert disks["data"]["cache"] == "writeback"  # the VM's own value wins over the preset default
    assert disks["scratch"]["cache"] == "unsafe"  # a VM-only disk still gets the preset default
    assert out["networks"][0]["model"] == "e1000e"
    assert "diskDefaults" not in out and "networkDefaults" not in out


def test_later_preset_wins():
    out = t.merge(BASE_VM, [{"diskDefaults": {"cache": "unsafe"}}, {"diskDefaults": {"cache": "writethrough"}}], {})
    assert out["disks"][0]["cache"] == "writethrough"


# ---------------------------------------------------------------------------------- error naming
def test_errors_name_the_layer_and_field():
    with pytest.raises(TemplateError) as e:
        t.merge(BASE_VM, [{"diskDefaults": {"cache": "bogus"}}], {"cpu": {"cores": 0}})
    fields = {err.field for err in e.value.errors}
    assert fields == {"overrides.cpu.cores", "presets[0].diskDefaults.cache"}, e.value.errors


def test_error_in_template_and_missing_required():
    with pytest.raises(TemplateError) as e:
        t.merge({"cpu": {"cores": 1}, "networks": [{"name": "n", "model": "pcnet"}]}, [], {})
    fields = {err.field for err in e.value.errors}
    assert "template.networks[n].model" in fields
    assert "spec.memory.size" in fields  # set by nobody


def test_expand_errors_name_vm_fields_and_sources():
    store = {
        "base": base_template(),
        "fast": tmpl("fast", "Preset", [{"version": "1.0.0", "vm": {"iothreads": 2}}]),
    }
    with pytest.raises(TemplateError) as e:
        t.expand({"template": {"name": "base"}, "presets": [{"name": "fast"}], "cpu": {"cores": 999}}, store.get)
    # the field's maximum and the CRD's vCPU-count rule on spec.cpu, both set by the VM itself
    assert [err.field for err in e.value.errors] == ["spec.cpu", "spec.cpu.cores"]
    with pytest.raises(TemplateError) as e:
        t.expand({"template": {"name": "fast"}, "presets": [{"name": "nope"}, {"name": "base"}]}, store.get)
    assert [err.field for err in e.value.errors] == [
        "spec.template.name",
        "spec.presets[0].name",
        "spec.presets[1].name",
    ]


def test_required_parameter_enforced():
    obj = tmpl(
        versions=[
            {
                "version": "1.0.0",
                "vm": BASE_VM,
                "parameters": [{"name": "keys", "path": "cloudInit.sshAuthorizedKeys", "required": True}],
            }
        ]
    )
    with pytest.raises(TemplateError) as e:
        t.expand({"template": {"name": "base"}}, {"base": obj}.get)
    assert e.value.errors[0].field == "spec.cloudInit.sshAuthorizedKeys"
    ok = t.expand({"template": {"name": "base"}, "cloudInit": {"sshAuthorizedKeys": [KEY]}}, {"base": obj}.get)
    assert ok.spec["cloudInit"]["sshAuthorizedKeys"] == [KEY]


def test_validate_template_names_version_fields():
    obj = tmpl(
        versions=[
            {"version": "1.0.0", "vm": {**BASE_VM, "memory": {"size": "lots"}}},
            {"version": "1.0", "vm": BASE_VM, "parameters": [{"name": "x", "path": "cpu.nope"}]},
        ]
    )
    fields = {e.field for e in t.validate_template(obj)}
    assert "spec.versions[0].vm.memory.size" in fields
    assert "spec.versions[1].version" in fields
    assert "spec.versions[1].parameters[0].path" in fields
    preset = tmpl(kind="Preset", versions=[{"version": "1.0.0", "vm": {"diskDefaults": {"bus": "floppy"}}}])
    assert [e.field for e in t.validate_template(preset)] == ["spec.versions[0].vm.diskDefaults.bus"]


# --------------------------------------------------------------------------------------- export
def test_export_import_roundtrip_byte_identical():
    obj = base_template()
    obj["metadata"].update(
        namespace="ns1",
        uid="u",
        resourceVersion="7",
        generation=3,
        creationTimestamp="2024-01-01T00:00:00Z",
        managedFields=[{"manager": "kubectl"}],
        annotations={"kubectl.kubernetes.io/last-applied-configuration": "{}", "team": "net"},
    )
    obj["status"] = {"latestVersion": "1.1.0"}
    obj["spec"]["versions"][0]["vm"] = {
        **BASE_VM,
        "cloudInit": {"userData": "#cloud-config\nruncmd:\n  - [ls]\n"},
    }
    text = t.export_yaml(obj)
    assert "uid" not in text and "status" not in text and "ns1" not in text and "last-applied" not in text
    assert "team: net" in text and "userData: |" in text
    assert t.export_yaml(t.import_yaml(text)) == text
    assert t.import_yaml(text) == t.import_yaml(t.export_yaml(t.import_yaml(text)))
    single = t.export_yaml(obj, version="1.0.0")
    assert "1.1.0" not in single and t.export_yaml(t.import_yaml(single)) == single


def test_import_refuses_invalid():
    with pytest.raises(TemplateError) as e:
        t.import_yaml(
            "apiVersion: k3svirt.io/v1alpha1\nkind: VMTemplate\nmetadata: {name: x}\n"
            "spec: {kind: Template, versions: [{version: 1.0.0, vm: {cpu: {cores: -1}}}]}\n"
        )
    assert "spec.versions[0].vm.cpu.cores" in {err.field for err in e.value.errors}
    with pytest.raises(TemplateError):
        t.import_yaml("a: [")
    with pytest.raises(TemplateError):
        t.import_yaml("---\na: 1\n---\nb: 2\n")


# ------------------------------------------------------------------------------ version management
def test_add_version_rules():
    obj = base_template()
    new = t.add_version(obj, "1.2.0", BASE_VM, description="more")
    assert [v["version"] for v in new["spec"]["versions"]] == ["1.0.0", "1.1.0", "1.2.0"]
    assert len(obj["spec"]["versions"]) == 2  # pure
    for bad, why in [("1.1.0", "already published"), ("1.0.5", "greater"), ("1.2", "semantic version")]:
        with pytest.raises(TemplateError, match=why):
            t.add_version(obj, bad, BASE_VM)
    with pytest.raises(TemplateError) as e:
        t.add_version(obj, "2.0.0", {**BASE_VM, "cpu": {"cores": "two"}})
    assert e.value.errors[0].field == "version.vm.cpu.cores"
    # a deprecated highest version still counts
    with pytest.raises(TemplateError):
        t.add_version(t.deprecate(obj, "1.1.0"), "1.0.9", BASE_VM)


def test_deprecate_and_check_update():
    obj = base_template()
    dep = t.deprecate(obj, "1.0.0")
    assert t.check_update(obj, dep) == []
    assert t.check_update(obj, t.add_version(obj, "1.2.0", BASE_VM)) == []
    edited = copy.deepcopy(obj)
    edited["spec"]["versions"][0]["vm"]["cpu"]["cores"] = 4
    assert [e.field for e in t.check_update(obj, edited)] == ["spec.versions[0].vm"]
    removed = copy.deepcopy(obj)
    del removed["spec"]["versions"][0]
    assert "cannot be removed" in t.check_update(obj, removed)[0].message
    older = copy.deepcopy(obj)
    older["spec"]["versions"].append({"version": "1.0.1", "vm": BASE_VM})
    assert t.check_update(obj, older)[0].field == "spec.versions[2].version"
    kind = copy.deepcopy(obj)
    kind["spec"]["kind"] = "Preset"
    assert t.check_update(obj, kind) == [FieldError("spec.kind", "spec.kind is immutable")]
    with pytest.raises(TemplateError):
        t.deprecate(obj, "9.9.9")


def test_check_delete_and_status():
    obj = base_template()
    obj["metadata"]["namespace"] = "ns"
    vms = [
        {
            "metadata": {"name": "b", "namespace": "ns"},
            "spec": {"template": {"name": "base", "version": "1.0.0"}},
        },
        {
            "metadata": {"name": "a", "namespace": "ns"},
            "spec": {"template": {"name": "base"}},
            "status": {"resolvedTemplate": {"name": "base", "version": "1.1.0"}},
        },
        {"metadata": {"name": "c", "namespace": "other"}, "spec": {"template": {"name": "base"}}},
        {"metadata": {"name": "d", "namespace": "ns"}, "spec": {"template": {"name": "else"}}},
    ]
    msg = t.check_delete(obj, vms)
    assert msg and "2 VirtualMachine(s): a, b" in msg
    assert t.check_delete(obj, []) is None
    assert "used by 1" in t.check_delete(obj, ["x"])
    status = t.compute_status(t.deprecate(obj, "1.0.0"), vms)
    assert status["latestVersion"] == "1.1.0"
    assert status["versions"] == ["1.0.0", "1.1.0"] and status["deprecatedVersions"] == ["1.0.0"]
    assert status["usedBy"] == {
        "count": 2,
        "vms": [{"name": "a", "version": "1.1.0"}, {"name": "b", "version": "1.0.0"}],
    }
    assert status["conditions"][0]["status"] == "True"


def test_cache_change_drops_inherited_io_native():
    tpl = {
        **BASE_VM,
        "disks": [{"name": "root", "size": "1Gi", "source": {"blank": {}}, "cache": "none", "io": "native"}],
    }
    out = t.merge(tpl, [{"diskDefaults": {"cache": "unsafe"}}], {})
    assert out["disks"][0]["cache"] == "unsafe" and "io" not in out["disks"][0]
    out = t.merge(tpl, [{"diskDefaults": {"cache": "directsync"}}], {})
    assert out["disks"][0]["io"] == "native"


def test_merged_spec_is_held_to_the_crd_rules_without_its_references():
    """A merged spec keeps spec.template as a record only: the CRD's memory.size rule then applies."""
    merged = {"template": {"name": "t", "version": "1.0.0"}, "cpu": {"cores": 1}}
    assert [e.field for e in t.validate_merged(merged)] == ["spec.memory.size"]
    assert t.validate_merged({**merged, "memory": {"size": "1Gi"}}) == []


def test_cpu_and_memory_rules_hold_across_layers():
    """A template's topology and RAM meet the VM's pinning and hugepages only in the merged spec: the
    CRD's CEL rules refuse the combination there (the operator no longer checks it itself)."""
    effective = [
        ("template t@1.0.0", {"cpu": {"cores": 4}, "memory": {"size": "3Gi"}}),
        ("spec", {"cpu": {"dedicatedCpuSet": "0-1"}, "memory": {"hugepages": {"pageSize": "2Mi"}}}),
    ]
    merged = {
        "cpu": {"cores": 4, "dedicatedCpuSet": "0-1"},
        "memory": {"size": "3Gi", "hugepages": {"pageSize": "2Mi"}},
    }
    errors = t.validate_merged(merged, effective)
    assert [(e.field, "pinning is 1:1" in e.message) for e in errors] == [("spec.cpu.dedicatedCpuSet", True)]
    merged["memory"]["hugepages"] = {"pageSize": "1Gi"}
    merged["memory"]["size"] = "1536Mi"
    fields = {e.field for e in t.validate_merged(merged, effective)}
    assert "spec.memory.size" in fields or "template t@1.0.0.memory.size" in fields, fields
    merged["cpu"]["dedicatedCpuSet"] = "4-7"
    merged["memory"]["size"] = "3Gi"
    assert t.validate_merged(merged, effective) == []


def test_balloon_ceiling_below_the_ram_is_refused_across_layers():
    """A template's memory.maxSize and a VM's larger memory.size meet only in the merged spec: the
    CRD's maxSize >= size rule refuses it there, naming the layer that set maxSize (domain_xml no
    longer checks it)."""
    effective = [
        ("template t@1.0.0", {"memory": {"size": "256Mi", "maxSize": "512Mi"}}),
        ("spec", {"memory": {"size": "1Gi"}}),
    ]
    merged = {"cpu": {"cores": 1}, "memory": {"size": "1Gi", "maxSize": "512Mi"}}
    assert [e.field for e in t.validate_merged(merged, effective)] == ["template t@1.0.0.memory.maxSize"]
    merged["memory"]["size"] = "512Mi"
    assert t.validate_merged(merged, effective) == []
