"""Services that select VMs: the annotation's selector (hostile input) and the slice decisions."""

from __future__ import annotations

import pytest
from k3svirt_common import vmservice as vs


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("app=web", [("app", "=", "web")]),
        ("app==web, tier!=db", [("app", "=", "web"), ("tier", "!=", "db")]),
        ("k3svirt.io/vm-name=vm1", [("k3svirt.io/vm-name", "=", "vm1")]),
        ("gpu,!spot", [("gpu", "exists", ""), ("spot", "!exists", "")]),
        ("app=", [("app", "=", "")]),
    ],
)
def test_selectors_we_accept(text, expected):
    assert [(r.key, r.op, r.value) for r in vs.parse_selector(text)] == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty"),
        ("  ,  ", "empty"),
        ("a=b,,c=d", "empty requirement"),
        ("app in (a,b)", "set-based"),
        ("tier notin (x)", "set-based"),
        ("a" * 2000, "longer than"),
        (",".join(f"k{i}=v" for i in range(40)), "more than"),
        ("bad key=x", "not a label key"),
        ("-x=y", "not a label key"),
        ("UPPER.Case/x=y", "not a label key"),
        ("x=" + "v" * 64, "not a label value"),
        ("x=a b", "not a label value"),
        ("x=\u00e9", "not a label value"),
        ("x=$(rm -rf /)", "not a label value"),
        (None, "must be a string"),
        (["a=b"], "must be a string"),
    ],
)
def test_selectors_we_refuse_say_why(text, words):
    with pytest.raises(vs.SelectorError, match=words):
        vs.parse_selector(text)


def vm(name: str, *, node: str = "n1", ip: str = "192.168.122.5", ready: bool = True, labels=None, deleting=False):
    return vs.VMView(name, f"uid-{name}", labels or {"app": "web"}, node, ip, ready, deleting)


def svc(selector: str = "app=web", **kw) -> vs.ServiceView:
    base = {"namespace": "ns", "name": "web", "uid": "svc-uid", "selector": selector, "has_pod_selector": False,
            "ports": ({"name": "http", "port": 80, "targetPort": 8080},), "local_only": False}  # fmt: skip
    return vs.ServiceView(**{**base, **kw})


def nat(ip: str) -> bool:
    return ip.startswith("192.168.122.")


def plan(service, vms, single=True):
    return vs.plan(service, vms, node="n1", node_local=nat, single_node=single)


def test_a_ready_vm_is_a_ready_endpoint_with_its_port_opened():
    p = plan(svc(), [vm("a"), vm("other", labels={"app": "db"})])
    assert p.slice is not None and not p.warnings
    (ep,) = p.slice["endpoints"]
    assert ep["addresses"] == ["192.168.122.5"] and ep["conditions"] == {"ready": True, "serving": True,
                                                                         "terminating": False}  # fmt: skip
    assert ep["targetRef"]["name"] == "a" and ep["nodeName"] == "n1"
    assert p.slice["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    md = p.slice["metadata"]
    assert md["labels"][vs.LABEL_MANAGED_BY] == vs.MANAGED_BY and md["labels"][vs.LABEL_SERVICE_NAME] == "web"
    assert md["ownerReferences"][0]["uid"] == "svc-uid"
    assert p.open_ports == [("192.168.122.5", "TCP", 8080)]


def test_not_ready_stopped_and_other_nodes():
    p = plan(svc(), [vm("a", ready=False), vm("b", ip=""), vm("c", node="n2")])
    assert [e["targetRef"]["name"] for e in p.slice["endpoints"]] == ["a"]
    assert p.slice["endpoints"][0]["conditions"]["ready"] is False
    assert p.open_ports == []  # nothing opened for an endpoint that is not ready
    assert plan(svc(), [vm("c", node="n2")]).slice is None  # none of this node's VMs: no slice


def test_vm_name_label_selects_exactly_one():
    p = plan(svc(vs.vm_name_selector("b")), [vm("a"), vm("b")])
    assert [e["targetRef"]["name"] for e in p.slice["endpoints"]] == ["b"]


def test_node_local_address_in_a_cluster_of_several_nodes():
    p = plan(svc(), [vm("a")], single=False)
    assert p.slice["endpoints"] == [] and p.warnings[0][0] == "VMAddressNodeLocal"
    assert plan(svc(local_only=True), [vm("a")], single=False).slice["endpoints"]  # traffic policies Local
    assert plan(svc(), [vm("a", ip="10.1.2.3")], single=False).slice["endpoints"]  # a bridged address


def test_bad_inputs_are_warnings_never_exceptions():
    assert plan(svc("app in (x)"), [vm("a")]).warnings[0][0] == "InvalidVMSelector"
    assert plan(svc(has_pod_selector=True), [vm("a")]).warnings[0][0] == "VMSelectorIgnored"
    named = plan(svc(ports=({"name": "http", "port": 80, "targetPort": "http"},)), [vm("a")])
    assert named.slice["ports"] == [] and named.warnings[0][0] == "VMTargetPortNotNumeric"
    odd = plan(svc(), [vm("a", ip="fe80::1"), vm("b", ip="not-an-ip")])
    assert odd.slice["endpoints"] == []


def test_views_from_hostile_objects():
    assert vs.service_view({"metadata": {"name": "x"}}) is None
    status = {
        "interfaces": [None, {"ipAddress": 5}, {"ipAddress": "192.168.122.9"}],
        "conditions": ["x", {"type": "Ready", "status": "True"}],
    }
    v = vs.vm_view({"metadata": {"name": "a", "labels": {"k": 1}}, "status": status})
    assert v.address == "192.168.122.9" and v.ready and v.labels == {"k": "1"}


def test_differs_only_on_what_we_own():
    p = plan(svc(), [vm("a")])
    current = {**p.slice, "metadata": {**p.slice["metadata"], "resourceVersion": "7", "generation": 3}}
    assert not vs.differs(p.slice, current)
    flipped = plan(svc(), [vm("a", ready=False)]).slice
    assert vs.differs(flipped, current) and vs.differs(p.slice, None)


def test_slice_names_are_valid_for_any_service_and_node():
    name = vs.slice_name("s" * 253, "node-" + "x" * 300)
    assert len(name) <= 253 and name.endswith(name[-10:]) and "-k3svirt-" in name
    assert vs.slice_name("web", "a") != vs.slice_name("web", "b")
