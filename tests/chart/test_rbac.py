"""RBAC sanity: the ClusterRoles grant what the code calls, and the gateway's grants no wildcards.

Operator: the calls are read from the code (kopf handler decorators, the Runtime's API methods and
their call sites, kopf.event) plus what kopf itself needs to run clusterwide (listed below).
Gateway: every `kube().<method>(<path helper>(...))` call in its routes is parsed with `ast`.
"""

from __future__ import annotations

import ast
import re
import uuid
from collections.abc import Iterator

import pytest
import yaml
from k3svirt_common import names

from .conftest import REPO, find, run

OPERATOR_SRC = REPO / "operator" / "k3svirt_operator"
GATEWAY_SRC = REPO / "rest-gateway" / "k3svirt_gateway"
G = names.GROUP

Perm = tuple[str, str, str]  # (apiGroup, resource, verb)

# kopf 1.45 running with clusterwide=True, standalone=True (operator/k3svirt_operator/main.py):
KOPF_CLUSTERWIDE: set[Perm] = {
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),  # namespace observation
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),  # resource scanning
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}
# Granted on purpose beyond the calls found in the code (each with its reason).
OPERATOR_EXTRAS: set[Perm] = {
    ("", "nodes", "get"),  # its own Node's labels (nodeSelector matching)
    ("", "nodes/status", "patch"),
    # runtime.ensure_node_inventory: NodePCIInventory/<node> created once, owned by its Node (patch).
    (G, names.NODEPCIINVENTORY_PLURAL, "create"),
    (
        G,
        names.NODEPCIINVENTORY_PLURAL,
        "patch",
    ),  # its Node's k3svirt.io/pci-* extended resources (runtime.publish_device_capacity)
    ("", "events", "patch"),  # kopf aggregates repeated events
    ("events.k8s.io", "events", "create"),
    ("events.k8s.io", "events", "patch"),
    *{
        (G, f"{p}/status", "get")
        for p in (
            names.VM_PLURAL,
            names.VMTEMPLATE_PLURAL,
            names.PCIPASSTHROUGH_PLURAL,
            names.NODEPCIINVENTORY_PLURAL,
            names.PCIVF_POLICY_PLURAL,
        )
    },
    (G, names.NODEPCIINVENTORY_PLURAL, "get"),
    (G, names.PCIPASSTHROUGH_PLURAL, "get"),
    (G, names.VM_PLURAL, "get"),
    (G, names.PCIVF_POLICY_PLURAL, "get"),
}

RUNTIME_VERBS = {  # operator/k3svirt_operator/runtime.py: method -> (verb, subresource)
    "get_object": ("get", ""),
    "list_objects": ("list", ""),
    "patch_status": ("patch", "/status"),
    "create_object": ("create", ""),
    "delete_object": ("delete", ""),
}


# k3svirt_common.kube.reservations: function -> permission (create reads a pod that exists: get).
RESERVATION_CALLS: dict[str, Perm] = {
    "get": ("", "pods", "get"),
    "create": ("", "pods", "create"),
    "delete": ("", "pods", "delete"),
    "list_on_node": ("", "pods", "list"),
    "ensure_priority_class": ("scheduling.k8s.io", "priorityclasses", "create"),
}


def plural(const: str) -> str:
    return getattr(names, const)


def operator_needs() -> set[Perm]:
    need = set(KOPF_CLUSTERWIDE)
    code = "\n".join(p.read_text() for p in OPERATOR_SRC.rglob("*.py") if "tests" not in p.parts)
    # Every resource kopf handles: it lists/watches it, patches finalizers onto it, and keeps its
    # progress in status.kopf (StatusProgressStorage) through the status subresource.
    handled = set(re.findall(r"@kopf\.[\w.]+\(names\.GROUP,\s*names\.VERSION,\s*names\.(\w+)", code))
    assert handled, "no kopf handlers found: update this test"
    for const in handled:
        p = plural(const)
        need |= {(G, p, "list"), (G, p, "watch"), (G, p, "patch"), (G, f"{p}/status", "patch")}
    calls = re.findall(
        r"\b(get_object|list_objects|patch_status|create_object|delete_object)\b,?\(?\s*names\.(\w+)",
        code,
    )
    assert {m for m, _ in calls} == set(RUNTIME_VERBS), calls
    for method, const in calls:
        verb, sub = RUNTIME_VERBS[method]
        need.add((G, plural(const) + sub, verb))
    if "RT.create_vm" in code:  # a restore into a new VM creates it (snapshot_worker.py)
        need.add((G, names.VM_PLURAL, "create"))
    if "kopf.event(" in code:
        need.add(("", "events", "create"))
    # Reservation pods (operator/k3svirt_operator/reservations.py -> k3svirt_common.kube.reservations):
    # kopf's index and event handler on pods, then the calls of the layer it uses.
    if re.search(r'@kopf\.(index|on\.event)\("", "v1", "pods"', code):
        need |= {("", "pods", "list"), ("", "pods", "watch")}
    layer = (REPO / "common" / "k3svirt_common" / "kube" / "reservations.py").read_text()
    if "api_rsv." in code:
        for fn, perm in RESERVATION_CALLS.items():
            assert f"def {fn}(" in layer, f"k3svirt_common.kube.reservations.{fn} is gone: update this test"
            if f"api_rsv.{fn}(" in code or (fn == "get" and "api_rsv.create(" in code):
                need.add(perm)
        if "k3svirt_path(names.VM_PLURAL" in code:  # the sweep reads VMs
            need.add((G, names.VM_PLURAL, "get"))
    # Services that select VMs (vmservices.py, docs/services.md): kopf indexes/events on Services,
    # EndpointSlices and Nodes, then the calls of k3svirt_common.kube.endpointslices.
    for group, res in (("", "services"), ("discovery.k8s.io", "endpointslices"), ("", "nodes")):
        if re.search(rf'@kopf\.(index|on\.event)\("{re.escape(group)}", "v1", "{res}"', code):
            need |= {(group, res, "list"), (group, res, "watch")}
    slices = (REPO / "common" / "k3svirt_common" / "kube" / "endpointslices.py").read_text()
    if "slices.put(" in code:
        assert "api.create(" in slices and "api.replace(" in slices and "api.get(" in slices, "update this test"
        need |= {("discovery.k8s.io", "endpointslices", v) for v in ("create", "update", "get")}
    if "slices.delete(" in code:
        need.add(("discovery.k8s.io", "endpointslices", "delete"))
    # Usage records (usage.py): all listed once at start, one created per VM, then its status patched.
    if "names.VMUSAGE_PLURAL" in code:
        usage = (OPERATOR_SRC / "usage.py").read_text()
        assert "list_all(" in usage and ".create(" in usage and '"status")' in usage, "update this test"
        assert "self.api.get(" in usage, "update this test"  # a VM seen again: its records are read
        need |= {(G, names.VMUSAGE_PLURAL, "list"), (G, names.VMUSAGE_PLURAL, "create"),
                 (G, names.VMUSAGE_PLURAL, "get"), (G, f"{names.VMUSAGE_PLURAL}/status", "patch")}  # fmt: skip
    # Any other Kubernetes client use would need a rule the test does not know about.
    assert not re.search(r"client\.(CoreV1Api|AppsV1Api|RbacAuthorizationV1Api)\(", code), "update this test"
    return need


def grants(role: dict) -> set[Perm]:
    out: set[Perm] = set()
    for rule in role["rules"]:
        for group in rule.get("apiGroups", []):
            for res in rule.get("resources", []):
                for verb in rule["verbs"]:
                    out.add((group, res, verb))
    return out


def no_wildcards(role: dict) -> None:
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs", "nonResourceURLs", "resourceNames"):
            assert "*" not in rule.get(field, []), f"{role['metadata']['name']}: wildcard in {field}: {rule}"


def test_operator_role_covers_the_code(rendered) -> None:
    role = find(rendered, "ClusterRole", "-operator")
    no_wildcards(role)
    need, have = operator_needs(), grants(role)
    assert not need - have, f"operator ClusterRole is missing {sorted(need - have)}"
    unused = have - need - OPERATOR_EXTRAS
    assert not unused, f"operator ClusterRole grants unused {sorted(unused)}"


# ------------------------------------------------------------------------------------- gateway
HELPERS = {  # path helper -> (apiGroup, resource, index of the name argument, index of sub)
    "vm_path": (G, names.VM_PLURAL, 1, 2),
    "template_path": (G, names.VMTEMPLATE_PLURAL, 1, None),
    "pcip_path": (G, names.PCIPASSTHROUGH_PLURAL, 0, None),
    "inventory_path": (G, names.NODEPCIINVENTORY_PLURAL, 0, None),
    "dep_path": ("apps", "deployments", 1, 2),
    "snapshot_path": (G, names.VMSNAPSHOT_PLURAL, 1, None),
    "restore_path": (G, names.VMRESTORE_PLURAL, 1, None),
    "usage_path": (G, names.VMUSAGE_PLURAL, 1, None),
}
METHOD_VERB = {"post": "create", "put": "update", "patch": "patch", "delete": "delete"}
KUBE_METHODS = {"get", "get_or_none", "post", "put", "patch", "delete", "request", "text"}  # k8s.Kube's verbs


def _arg(call: ast.Call, index: int | None, keyword: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    if index is not None and index < len(call.args):
        return call.args[index]
    return None


def _present(node: ast.expr | None) -> bool:
    return node is not None and not (isinstance(node, ast.Constant) and node.value is None)


def gateway_calls() -> list[tuple[str, Perm]]:
    out = []
    for path in sorted(GATEWAY_SRC.rglob("*.py")):
        if "tests" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            target = node.func.value
            is_kube = (isinstance(target, ast.Call) and getattr(target.func, "id", "") == "kube") or (
                isinstance(target, ast.Attribute) and target.attr == "kube"
            )
            if not is_kube or node.func.attr not in KUBE_METHODS:
                continue
            args = list(node.args)
            method = node.func.attr
            if method == "request":
                method = args.pop(0).value.lower()
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            helper = args[0]
            if path.name == "cache.py":
                continue  # the list cache's list+watch calls are listed in CACHE_CALLS below
            assert isinstance(helper, ast.Call), f"{where}: path is not a helper call; update this test"
            fn = helper.func.id
            if fn == "core_path":
                group, res = "", helper.args[0].value
                name, sub = _arg(helper, 2, "name"), _arg(helper, 3, "sub")
            else:
                assert fn in HELPERS, f"{where}: unknown path helper {fn}; update this test"
                group, res, ni, si = HELPERS[fn]
                name, sub = _arg(helper, ni, "name"), _arg(helper, si, "sub")
            if _present(sub):  # "proxy/stats/summary" is the subresource "proxy"
                res = f"{res}/{sub.value.split('/')[0]}"
            verb = METHOD_VERB.get(method) or ("get" if _present(name) or "/" in res else "list")
            out.append((where, (group, res, verb)))
    out += CACHE_CALLS
    return out


# k3svirt_gateway/cache.py lists and watches these kinds cluster-wide (one informer each).
CACHE_CALLS = [
    (f"rest-gateway/k3svirt_gateway/cache.py ({plural})", (G, plural, verb))
    for plural in (names.VM_PLURAL, names.VMTEMPLATE_PLURAL)
    for verb in ("list", "watch")
]


def test_gateway_calls_are_found() -> None:
    calls = gateway_calls()
    found = {p for _, p in calls}
    assert len(calls) > 30
    assert ("", "pods/log", "get") in found and ("apps", "deployments/scale", "patch") in found
    assert ("", "nodes/proxy", "get") in found and ("apps", "deployments", "update") in found
    assert ("", "secrets", "get") in found


def test_gateway_role_covers_the_code_without_wildcards(rendered) -> None:
    role = find(rendered, "ClusterRole", "-gateway")
    no_wildcards(role)
    have = grants(role)
    need = {p for _, p in gateway_calls() if p[1] != "secrets"}
    missing = [(w, p) for w, p in gateway_calls() if p in need - have]
    assert not missing, f"gateway ClusterRole is missing: {missing}"
    assert not have - need, f"gateway ClusterRole grants unused {sorted(have - need)}"
    assert all(res != "secrets" for _, res, _ in have), "Secrets only through the namespaced Role"


@pytest.mark.parametrize("existing", ["", "my-keys"])
def test_gateway_reads_only_its_own_secret(render, existing: str) -> None:
    objs = render("--set", f"gateway.apiKeys.existingSecret={existing}")
    role = find(objs, "Role", "-api-keys")
    no_wildcards(role)
    (rule,) = role["rules"]
    name = existing or find(objs, "Secret", "-api-keys")["metadata"]["name"]
    assert rule == {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [name], "verbs": ["get"]}
    env = {
        e["name"]: e.get("value")
        for e in find(objs, "Deployment", "-gateway")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["K3SVIRT_API_KEYS_SECRET"] == f"k3svirt-system/{name}"


def test_bindings_point_at_the_service_accounts(rendered) -> None:
    sas = {o["metadata"]["name"] for o in rendered if o["kind"] == "ServiceAccount"}
    for b in (o for o in rendered if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        (subject,) = b["subjects"]
        assert subject["name"] in sas and subject["namespace"] == "k3svirt-system"
    for kind, suffix in (("DaemonSet", "-operator"), ("Deployment", "-gateway")):
        assert find(rendered, kind, suffix)["spec"]["template"]["spec"]["serviceAccountName"] in sas


# ------------------------------------------------------------------- against the real API server
@pytest.fixture
def installed_rbac(kubeconfig: str, render) -> Iterator[tuple[str, list[dict]]]:
    """The chart's ServiceAccounts, Secret and (Cluster)Roles + bindings created for real, then removed."""
    ns = f"t-rbac-{uuid.uuid4().hex[:8]}"
    objs = [
        o
        for o in render(namespace=ns, release=ns)
        if o["kind"] in {"ServiceAccount", "Secret", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    ]
    kube = ["kubectl", "--kubeconfig", kubeconfig]
    run([*kube, "create", "namespace", ns])
    try:
        run([*kube, "apply", "-f", "-"], input=yaml.safe_dump_all(objs))
        yield ns, objs
    finally:
        cluster = [f"{o['kind'].lower()}/{o['metadata']['name']}" for o in objs if o["kind"].startswith("Cluster")]
        run([*kube, "delete", "--ignore-not-found", "--wait=false", *cluster], check=False)
        run([*kube, "delete", "namespace", ns, "--wait=false"], check=False)


def _allowed(api_client, ns: str, sa: str, perm: Perm, namespace: str = "", name: str = "") -> bool:
    from kubernetes import client

    group, res, verb = perm
    resource, _, sub = res.partition("/")
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=f"system:serviceaccount:{ns}:{sa}",
            groups=["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
            resource_attributes=client.V1ResourceAttributes(
                group=group,
                resource=resource,
                subresource=sub or None,
                verb=verb,
                namespace=namespace or None,
                name=name or None,
            ),
        )
    )
    return client.AuthorizationV1Api(api_client).create_subject_access_review(review).status.allowed


def test_api_server_authorizes_what_the_code_needs(installed_rbac, k8s_api_client) -> None:
    ns, objs = installed_rbac
    sa = {o["metadata"]["name"].rsplit("-", 1)[1]: o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"}
    denied = [("operator", p) for p in sorted(operator_needs()) if not _allowed(k8s_api_client, ns, sa["operator"], p)]
    gw = {p for _, p in gateway_calls() if p[1] != "secrets"}
    denied += [("gateway", p) for p in sorted(gw) if not _allowed(k8s_api_client, ns, sa["gateway"], p)]
    assert not denied, f"the API server denies: {denied}"


def test_api_server_limits_the_gateway_to_its_own_secret(installed_rbac, k8s_api_client) -> None:
    ns, objs = installed_rbac
    gw = next(
        o["metadata"]["name"]
        for o in objs
        if o["kind"] == "ServiceAccount" and o["metadata"]["name"].endswith("-gateway")
    )
    secret = next(
        o["metadata"]["name"] for o in objs if o["kind"] == "Secret" and "console" not in o["metadata"]["name"]
    )
    # The console key is mounted, never read through the API.
    assert not _allowed(k8s_api_client, ns, gw, ("", "secrets", "get"), namespace=ns, name="k3svirt-console-key")
    get = ("", "secrets", "get")
    assert _allowed(k8s_api_client, ns, gw, get, namespace=ns, name=secret)
    assert not _allowed(k8s_api_client, ns, gw, get, namespace=ns, name="someone-elses")
    assert not _allowed(k8s_api_client, ns, gw, ("", "secrets", "list"), namespace=ns)
    assert not _allowed(k8s_api_client, ns, gw, get, namespace="kube-system", name=secret)
