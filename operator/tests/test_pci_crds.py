"""The PCIPassthrough and NodePCIInventory CRDs: structural, documented, and matching what the
operator actually writes into status."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from fixtures.sysfs import pci_fakesys as fakesys  # operator/tests is on sys.path
from k3svirt_common import names, schema
from k3svirt_operator import pci

CRDS = Path(__file__).resolve().parents[2] / "crds"


def _crd(plural):
    return yaml.safe_load((CRDS / f"{plural}.yaml").read_text())


def _walk(node, path):
    """Yield (path, schema) for every property schema."""
    yield path, node
    for k, v in (node.get("properties") or {}).items():
        yield from _walk(v, f"{path}.{k}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")


@pytest.mark.parametrize(
    "kind,plural,short",
    [
        (names.PCIPASSTHROUGH_KIND, names.PCIPASSTHROUGH_PLURAL, "pcip"),
        (names.NODEPCIINVENTORY_KIND, names.NODEPCIINVENTORY_PLURAL, "npi"),
        (names.PCIVF_POLICY_KIND, names.PCIVF_POLICY_PLURAL, "pcivf"),
    ],
)
def test_crd_is_structural_and_documented(kind, plural, short):
    crd = _crd(plural)
    assert crd["metadata"]["name"] == f"{plural}.{names.GROUP}"
    assert crd["spec"]["group"] == names.GROUP and crd["spec"]["scope"] == "Cluster"
    assert crd["spec"]["names"]["kind"] == kind and short in crd["spec"]["names"]["shortNames"]
    (version,) = crd["spec"]["versions"]
    assert version["name"] == names.VERSION and version["subresources"] == {"status": {}}
    root = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(root, ""):
        if path == ".metadata":
            continue
        assert "type" in node, f"{kind}{path} has no type (not structural)"
        if path.endswith("[]") and node["type"] != "object":
            continue  # items of a documented list of scalars
        assert node.get("description"), f"{kind}{path} has no description"
    for col in version["additionalPrinterColumns"]:
        if col["jsonPath"].startswith(".metadata"):
            continue
        node = root
        for part in re.sub(r"\[[^\]]*\]", "", col["jsonPath"]).lstrip(".").split("."):
            node = node["properties"][part]
            if node.get("type") == "array":
                node = node["items"]


def test_pcipassthrough_spec_validation():
    ok = {"nodeName": "n305", "address": "0000:03:00.0"}
    assert schema.validate_spec(names.PCIPASSTHROUGH_KIND, ok) == []
    sel = {
        "nodeName": "n305",
        "selector": {"vendor": "8086", "device": "10fb", "index": 1},
        "groupPolicy": "BindGroup",
        "assignTo": {"namespace": "net", "name": "vpp"},
    }
    assert schema.validate_spec(names.PCIPASSTHROUGH_KIND, sel) == []
    both = {**ok, "selector": {"vendor": "8086", "device": "10fb"}}
    assert schema.validate_spec(names.PCIPASSTHROUGH_KIND, both)
    assert schema.validate_spec(names.PCIPASSTHROUGH_KIND, {"nodeName": "n305", "address": "3:0.0"})
    assert schema.validate_spec(names.PCIPASSTHROUGH_KIND, {"address": "0000:03:00.0"})


def test_statuses_the_operator_writes_validate_against_the_crds(tmp_path):

    h = fakesys.build_n305(tmp_path)
    k = fakesys.FakeKernel(h)
    npi = {
        "apiVersion": names.API_VERSION,
        "kind": names.NODEPCIINVENTORY_KIND,
        "metadata": {"name": "n305"},
        "spec": {},
        "status": pci.node_inventory_status(h.sys, h.proc, denylist=()),
    }
    assert schema.validate_object(names.NODEPCIINVENTORY_KIND, npi) == []
    spec = {"nodeName": "n305", "address": "0000:00:02.0"}
    statuses = []
    st = pci.reconcile_passthrough(
        spec, None, generation=1, sys_root=h.sys, proc_root=h.proc, denylist=(), write=k.write
    )
    statuses.append(st)
    statuses.append(pci.assigned_status(st, "net", "vpp", "uid-1"))
    statuses.append(pci.unassigned_status(statuses[-1]))
    statuses.append(pci.release_passthrough(statuses[-1], sys_root=h.sys, write=k.write))
    statuses.append(
        pci.reconcile_passthrough(
            {"nodeName": "n305", "address": "0000:01:00.0"},
            None,
            sys_root=h.sys,
            proc_root=h.proc,
            denylist=(),
            write=k.write,
        )
    )
    for st in statuses:
        obj = {
            "apiVersion": names.API_VERSION,
            "kind": names.PCIPASSTHROUGH_KIND,
            "metadata": {"name": "p"},
            "spec": spec,
            "status": st,
        }
        assert schema.validate_object(names.PCIPASSTHROUGH_KIND, obj) == [], st


def test_pcipassthrough_namespaces_grant_validation():
    ok = {"nodeName": "n305", "address": "0000:03:00.0", "namespaces": ["net", "lab-2"]}
    assert schema.validate_spec(names.PCIPASSTHROUGH_KIND, ok) == []
    for bad in (["Net"], ["a/b"], [""], ["x" * 64], ["ns"] * 2, [f"n{i}" for i in range(65)]):
        assert schema.validate_spec(names.PCIPASSTHROUGH_KIND, {**ok, "namespaces": bad}), bad


def test_api_server_keeps_the_namespaces_grant(k8s_api_client):
    """The field is in the CRD (an unknown field would be pruned silently, and the device then refused
    to everyone); a malformed entry is refused by the API server."""
    import uuid

    from kubernetes import client
    from kubernetes.client.rest import ApiException

    api = client.CustomObjectsApi(k8s_api_client)
    name = f"t-grant-{uuid.uuid4().hex[:8]}"
    body = {
        "apiVersion": names.API_VERSION,
        "kind": names.PCIPASSTHROUGH_KIND,
        "metadata": {"name": name},
        "spec": {"nodeName": "no-such-node", "address": "0000:03:00.0", "namespaces": ["net", "lab"]},
    }
    args = (names.GROUP, names.VERSION, names.PCIPASSTHROUGH_PLURAL)
    api.create_cluster_custom_object(*args, body)
    try:
        assert api.get_cluster_custom_object(*args, name)["spec"]["namespaces"] == ["net", "lab"]
    finally:
        api.delete_cluster_custom_object(*args, name)
    bad = {**body, "metadata": {"name": name + "-bad"}, "spec": {**body["spec"], "namespaces": ["Net_1"]}}
    with pytest.raises(ApiException) as e:
        api.create_cluster_custom_object(*args, bad)
    assert e.value.status == 422
