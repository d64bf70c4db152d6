"""docs/pci-passthrough.md, section 5 (fresh box -> VPP router VM with two NICs) holds together.

Every manifest of the document is checked against the CRDs (schema and CEL rules, the way the API
server admits it); the section's VMs are expanded with the shipped vpp-router template; the
section's PCIPassthroughs are bound by the operator's real PCI code on the N305 fixture sysfs
(operator/tests/fixtures/sysfs: its dual-port 82599 shares IOMMU group 2 with its root port, as
the document warns), and the VMs' hostDevices are resolved against them, by name, with the
template's parameters overridden, and by class; the kernel command line, the kubelet's reserved CPUs
and the operator's housekeeping CPUs in the section agree with each other and with the template.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from k3svirt_common import names, pci_resources, schema
from k3svirt_common import templates as t
from k3svirt_common.quantity import parse_quantity
from k3svirt_operator import pci

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator" / "tests"))
from fixtures.sysfs import pci_fakesys  # noqa: E402

DOC = REPO / "docs" / "pci-passthrough.md"
NODE = "n305"
X520 = pci_resources.resource_name("8086", "10fb")


def _blocks(text: str, lang: str) -> list[str]:
    return [b.split("```", 1)[0] for b in text.split(f"```{lang}\n")[1:]]


def _section(number: int) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {number}. ")
    return text[start : text.index("\n## ", start + 1)]


def _objects(text: str) -> list[dict[str, Any]]:
    return [o for b in _blocks(text, "yaml") for o in yaml.safe_load_all(b) if isinstance(o, dict)]


def _ours(objs: list[dict[str, Any]], kind: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("apiVersion") == names.API_VERSION and (kind is None or o.get("kind") == kind)]


def _store() -> dict[str, dict[str, Any]]:
    return {p.stem: yaml.safe_load(p.read_text()) for p in (REPO / "vm-templates").glob("*.yaml")}


def _expand(vm: dict[str, Any]) -> dict[str, Any]:
    return t.expand(vm["spec"], _store().get).spec


def test_every_manifest_in_the_document_is_valid_against_its_crd():
    objs = _ours(_objects(DOC.read_text()))
    kinds = {o["kind"] for o in objs}
    assert {"PCIPassthrough", "VirtualMachine", "PCIVirtualFunctionPolicy"} <= kinds, kinds
    for obj in objs:
        assert schema.validate_object(obj["kind"], obj) == [], (obj["kind"], obj["metadata"])
    for vm in _ours(objs, "VirtualMachine"):
        if vm["spec"].get("template"):
            _expand(vm)  # raises TemplateError naming the field when the merged spec breaks a CRD rule


def _walkthrough() -> dict[str, Any]:
    objs = _objects(_section(5))
    pcips = _ours(objs, "PCIPassthrough")
    vms = _ours(objs, "VirtualMachine")
    fragments = [o for o in objs if "apiVersion" not in o and set(o) == {"spec"}]
    assert len(vms) == 2 and len(pcips) == 4 and len(fragments) == 1, (len(vms), len(pcips), len(fragments))
    by_name = [p for p in pcips if "assignTo" in p["spec"]]
    by_class = [p for p in pcips if "namespaces" in p["spec"]]
    named_vm = next(v for v in vms if not any("resource" in h for h in v["spec"].get("hostDevices") or []))
    class_vm = next(v for v in vms if v is not named_vm)
    return {"by_name": by_name, "by_class": by_class, "named_vm": named_vm, "class_vm": class_vm,
            "override": fragments[0]}  # fmt: skip


def _bind(pcips: list[dict[str, Any]], root: Path) -> list[dict[str, Any]]:
    """The node's operator on the fixture: each object reconciled with the others' addresses as
    claimed, twice (the first object of a shared group waits for the second: PartialGroup)."""
    host = pci_fakesys.build_n305(root)
    kernel = pci_fakesys.FakeKernel(host)
    objs = copy.deepcopy(pcips)
    for _ in range(2):
        for o in objs:
            claimed = {
                p["status"]["address"]: p["metadata"]["name"]
                for p in objs
                if p is not o and (p.get("status") or {}).get("address")
            }
            o["status"] = pci.reconcile_passthrough(o["spec"], o.get("status"), sys_root=host.sys,
                                                    proc_root=host.proc, denylist=(), claimed=claimed,
                                                    write=kernel.write)  # fmt: skip
    for o in objs:
        assert o["status"]["phase"] == "Bound", (o["metadata"]["name"], o["status"].get("conditions"))
        assert host.driver_of(o["status"]["address"]) == "vfio-pci"
    return objs


def _resolve(vm: dict[str, Any], spec: dict[str, Any], pcips: list[dict[str, Any]]) -> dict[str, str]:
    meta = vm["metadata"]
    got = pci.resolve_host_devices(spec, pcips, spec["nodeName"], vm_namespace=meta["namespace"], vm_name=meta["name"])
    return {d.name: d.passthrough for d in got}


def test_by_name_the_passthroughs_carry_the_templates_default_names_and_are_open_to_the_vm(tmp_path: Path):
    w = _walkthrough()
    vm = w["named_vm"]
    spec = _expand(vm)
    wanted = {h["name"]: h["pciPassthrough"] for h in spec["hostDevices"]}
    assert wanted == {"wan": "vpp-wan", "lan": "vpp-lan"}  # the template's defaults, not overridden
    for p in w["by_name"]:
        assert p["spec"]["nodeName"] == spec["nodeName"] == NODE
        assert p["spec"]["assignTo"] == {"namespace": vm["metadata"]["namespace"], "name": vm["metadata"]["name"]}
    bound = _bind(w["by_name"], tmp_path)
    assert {o["status"]["address"] for o in bound} == {"0000:03:00.0", "0000:03:00.1"}  # both 82599 ports
    assert _resolve(vm, spec, bound) == {"wan": "vpp-wan", "lan": "vpp-lan"}
    assert pci_resources.node_capacity(bound, NODE) == {X520: 2}  # what step 7 reads back with kubectl
    assert pci_resources.device_requests(spec, bound) == {X520: 2}  # the VM's reservation asks for both


def test_the_parameter_override_renames_both_devices(tmp_path: Path):
    w = _walkthrough()
    vm = copy.deepcopy(w["named_vm"])
    vm["spec"].update(w["override"]["spec"])
    spec = _expand(vm)
    assert {h["name"]: h["pciPassthrough"] for h in spec["hostDevices"]} == {"wan": "x520-p0", "lan": "x520-p1"}
    params = {p["path"] for v in _store()["vpp-router"]["spec"]["versions"] if v["version"] == "1.2.0"
              for p in v["parameters"]}  # fmt: skip
    assert {"hostDevices[wan].pciPassthrough", "hostDevices[lan].pciPassthrough"} <= params
    renamed = []
    for old, new in (("vpp-wan", "x520-p0"), ("vpp-lan", "x520-p1")):
        p = copy.deepcopy(next(o for o in w["by_name"] if o["metadata"]["name"] == old))
        p["metadata"]["name"] = new
        renamed.append(p)
    assert _resolve(vm, spec, _bind(renamed, tmp_path)) == {"wan": "x520-p0", "lan": "x520-p1"}


def test_by_class_the_vm_gets_any_two_free_ports_of_the_kind(tmp_path: Path):
    w = _walkthrough()
    vm = w["class_vm"]
    spec = _expand(vm)
    assert spec["hostDevices"] == [{"name": "wan", "resource": X520}, {"name": "lan", "resource": X520}]
    for p in w["by_class"]:
        assert vm["metadata"]["namespace"] in p["spec"]["namespaces"] and p["spec"]["nodeName"] == spec["nodeName"]
    bound = _bind(w["by_class"], tmp_path)
    assert pci_resources.node_capacity(bound, NODE) == {X520: 2}
    assert pci_resources.device_requests(spec, bound) == {X520: 2}
    assert _resolve(vm, spec, bound) == {"wan": "x520-p0", "lan": "x520-p1"}  # first free by name, in order
    # a second router finds none free once the first holds both (what the document says it gets)
    held = copy.deepcopy(bound)
    for o in held:
        o["status"]["assignedTo"] = {"namespace": "net", "name": "vpp"}
    other = {"metadata": {"name": "vpp2", "namespace": "net"}}
    with pytest.raises(pci.HostDeviceResolutionError) as err:
        _resolve(other, spec, held)
    assert {e.reason for e in err.value.errors} == {"NoFreeDevice"}


def _cmdline() -> dict[str, list[str]]:
    line = next(b for b in _blocks(_section(5), "sh") if "GRUB_CMDLINE_LINUX" in b)
    args = re.search(r'GRUB_CMDLINE_LINUX="([^"]*)"', line)
    assert args is not None
    out: dict[str, list[str]] = {}
    for arg in args.group(1).split():
        key, _, value = arg.partition("=")
        out.setdefault(key, []).append(value)
    return out


def _cpus(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out |= set(range(int(lo), int(hi or lo) + 1))
    return out


def test_the_host_preparation_fits_the_vm():
    w = _walkthrough()
    spec = _expand(w["named_vm"])
    args = _cmdline()
    assert args["intel_iommu"] == ["on"] and args["iommu"] == ["pt"]
    # hugepagesz=1G is followed by its count: enough 1 GiB pages for the VM's memory
    sizes, counts = args["hugepagesz"], args["hugepages"]
    gib_pages = int(counts[sizes.index("1G")])
    assert spec["memory"]["hugepages"]["pageSize"] == "1Gi"
    assert gib_pages * 2**30 >= parse_quantity(spec["memory"]["size"])
    kubelet = next(o for o in _objects(_section(5)) if "kubelet-arg" in o)["kubelet-arg"]
    reserved = _cpus(next(a.split("=", 1)[1] for a in kubelet if a.startswith("reserved-cpus=")))
    assert "cpu-manager-policy=static" in kubelet
    values = next(o for o in _objects(_section(5)) if "operator" in o)["operator"]["extraEnv"]
    housekeeping = _cpus(next(e["value"] for e in values if e["name"] == "K3SVIRT_HOUSEKEEPING_CPUS"))
    isolated = _cpus(args["nohz_full"][0])
    assert reserved == housekeeping == _cpus(args["irqaffinity"][0]) == {6, 7}
    assert isolated == _cpus(args["rcu_nocbs"][0]) and not isolated & housekeeping
    # the kubelet's pool (8 CPUs of the N305 minus the reserved) holds the VM's dedicated cores
    assert spec["cpu"]["dedicatedCores"] <= 8 - len(reserved)
