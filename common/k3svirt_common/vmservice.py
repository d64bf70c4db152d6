"""Services that front VirtualMachines: the convention and the pure decisions (no API calls).

Convention (docs/services.md): a Service WITHOUT `spec.selector` carrying the annotation
`k3svirt.io/vm-selector: <label selector>` selects the VirtualMachines of its namespace whose labels
match. Every VM also carries the implicit label `k3svirt.io/vm-name: <its name>` for the match, so
`k3svirt.io/vm-name=web` selects exactly one VM (what `kubectl k3svirt expose` and the gateway write).

Why this and not `spec.selector`: a VM is not a pod, and a Service with a selector makes the
built-in EndpointSlice controller publish the pods it matches; a selector-less Service is the
Kubernetes way to bring one's own endpoints, stays a plain v1 Service (kubectl, Helm, GitOps) and
leaves the user's VM labels free. Each node's operator publishes one EndpointSlice per Service for
the VMs it runs (label `endpointslice.kubernetes.io/managed-by: operator.k3svirt.io`, owner = the
Service, so deleting the Service removes it).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import labelselector, names
from .labelselector import Requirement, SelectorError  # SelectorError: what callers of parse_selector catch

ANNOTATION_VM_SELECTOR = f"{names.GROUP}/vm-selector"
LABEL_VM_NAME = f"{names.GROUP}/vm-name"  # implicit: every VM matches it with its own name
MANAGED_BY = f"operator.{names.GROUP}"  # a label value: no "/" (as endpointslice-controller.k8s.io)
LABEL_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_NODE = f"{names.GROUP}/endpoint-node"  # the node whose operator publishes the slice

MAX_SELECTOR_CHARS = 1024
MAX_REQUIREMENTS = 16
MAX_ENDPOINTS = 1000  # the EndpointSlice API's limit
PROTOCOLS = ("TCP", "UDP", "SCTP")


def parse_selector(text: Any) -> tuple[Requirement, ...]:
    """`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated (kubectl's equality-based selectors), parsed
    by k3svirt_common.labelselector with this annotation's limits.

    Set-based forms (`in`, `notin`) are refused with a clear error rather than half-understood; an
    empty selector is refused too (it would select every VM of the namespace by accident)."""
    if not isinstance(text, str):
        raise SelectorError("the selector must be a string")
    if len(text) > MAX_SELECTOR_CHARS:
        raise SelectorError(f"the selector is longer than {MAX_SELECTOR_CHARS} characters")
    parts = labelselector.split(text)
    if not any(parts):
        raise SelectorError("the selector is empty (it would select every VM of the namespace)")
    if len(parts) > MAX_REQUIREMENTS:
        raise SelectorError(f"the selector has more than {MAX_REQUIREMENTS} requirements")
    return tuple(labelselector.parse(text, set_based=False))


def vm_name_selector(vm: str) -> str:
    """The selector of exactly one VM (what `expose` writes)."""
    return f"{LABEL_VM_NAME}={vm}"


def matches(requirements: Iterable[Requirement], vm_name: str, labels: Mapping[str, str]) -> bool:
    return labelselector.matches(requirements, {**labels, LABEL_VM_NAME: vm_name})


# ---------------------------------------------------------------------------------- what is indexed
@dataclass(frozen=True)
class VMView:
    """What a Service's endpoints need of one VM (kept in the operator's index)."""

    name: str
    uid: str
    labels: Mapping[str, str]
    node: str  # status.node, else spec.nodeName, else ""
    address: str  # first interface's IPv4 from status.interfaces, else ""
    ready: bool
    deleting: bool


def vm_view(body: Mapping[str, Any]) -> VMView:
    md, spec, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    address = ""
    for iface in status.get("interfaces") or []:
        if isinstance(iface, Mapping) and isinstance(iface.get("ipAddress"), str) and iface["ipAddress"]:
            address = iface["ipAddress"]
            break
    ready = any(
        isinstance(c, Mapping) and c.get("type") == names.COND_READY and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return VMView(
        name=md.get("name", ""),
        uid=md.get("uid", ""),
        labels={str(k): str(v) for k, v in (md.get("labels") or {}).items()},
        node=str(status.get("node") or spec.get("nodeName") or ""),
        address=address,
        ready=ready,
        deleting=bool(md.get("deletionTimestamp")),
    )


@dataclass(frozen=True)
class ServiceView:
    """A Service that selects VMs (annotation present), as the operator's index keeps it."""

    namespace: str
    name: str
    uid: str
    selector: str
    has_pod_selector: bool
    ports: tuple[Mapping[str, Any], ...]
    local_only: bool  # internal and external traffic policies both Local


def service_view(body: Mapping[str, Any]) -> ServiceView | None:
    md, spec = body.get("metadata") or {}, body.get("spec") or {}
    selector = (md.get("annotations") or {}).get(ANNOTATION_VM_SELECTOR)
    if selector is None:
        return None
    external = spec.get("externalTrafficPolicy")
    local = spec.get("internalTrafficPolicy") == "Local" and external in (None, "Local")
    return ServiceView(
        namespace=md.get("namespace", ""),
        name=md.get("name", ""),
        uid=md.get("uid", ""),
        selector=selector,
        has_pod_selector=bool(spec.get("selector")),
        ports=tuple(dict(p) for p in spec.get("ports") or [] if isinstance(p, Mapping)),
        local_only=local,
    )


# ---------------------------------------------------------------------------------- the decision
@dataclass
class Plan:
    """The EndpointSlice this node should publish for one Service (None: none), and why not more."""

    slice: dict[str, Any] | None
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (reason, message) for Events
    open_ports: list[tuple[str, str, int]] = field(default_factory=list)  # (ip, protocol, port) to admit


def slice_name(service: str, node: str) -> str:
    """<service>-k3svirt-<hash of the node>: one slice per Service and node, a valid name always."""
    digest = hashlib.sha256(node.encode()).hexdigest()[:10]
    return f"{service[: 253 - 19].rstrip('-.')}-k3svirt-{digest}"


def _slice_ports(svc: ServiceView) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    ports, warnings = [], []
    for p in svc.ports:
        target = p.get("targetPort", p.get("port"))
        if isinstance(target, str) and target.isdigit():
            target = int(target)
        if not isinstance(target, int) or isinstance(target, bool) or not 1 <= target <= 65535:
            warnings.append(
                (
                    "VMTargetPortNotNumeric",
                    f"port {p.get('name') or p.get('port')}: targetPort "
                    f"{target!r} is not a port number; a VM has no named ports",
                )
            )
            continue
        protocol = p.get("protocol") or "TCP"
        if protocol not in PROTOCOLS:
            continue
        entry: dict[str, Any] = {"port": target, "protocol": protocol}
        if p.get("name"):
            entry["name"] = p["name"]
        elif len(svc.ports) == 1:
            entry["name"] = ""
        ports.append(entry)
    return ports, warnings


def plan(
    svc: ServiceView,
    vms: Iterable[VMView],
    *,
    node: str,
    node_local: Any,
    single_node: bool,
) -> Plan:
    """The slice of `node` for `svc`: one endpoint per matching VM of this node with an address.

    node_local(ip) -> True when the address is reachable only from this node (libvirt's NAT
    networks). Such an address is published only when every client reaches the VM through this node:
    a one-node cluster, or a Service whose traffic policies are both Local; otherwise kube-proxy on
    another node would send the traffic to whatever holds that address there, so the VM gets no
    endpoint and a Warning says why. A VM without an address (stopped, no lease yet) has none either.
    """
    out = Plan(slice=None)
    if svc.has_pod_selector:
        out.warnings.append(
            (
                "VMSelectorIgnored",
                f"{ANNOTATION_VM_SELECTOR} is ignored on a Service with "
                "spec.selector (its pods' endpoints are Kubernetes'); remove spec.selector",
            )
        )
        return out
    try:
        reqs = parse_selector(svc.selector)
    except SelectorError as exc:
        out.warnings.append(("InvalidVMSelector", f"annotation {ANNOTATION_VM_SELECTOR}: {exc}"))
        return out
    mine = sorted((v for v in vms if v.node == node and matches(reqs, v.name, v.labels)), key=lambda v: v.name)
    if not mine:
        return out  # no VM of this node: no slice (another node's operator publishes its own)
    ports, port_warnings = _slice_ports(svc)
    out.warnings += port_warnings
    endpoints = []
    for vm in mine:
        if not vm.address:
            continue
        try:
            if ipaddress.ip_address(vm.address).version != 4:
                continue
        except ValueError:
            continue
        if node_local(vm.address) and not (single_node or svc.local_only):
            out.warnings.append(
                (
                    "VMAddressNodeLocal",
                    f"VM {vm.name} has {vm.address} on a NAT network of node "
                    f"{node}, which other nodes cannot reach: no endpoint (use a bridged network, or "
                    "set internalTrafficPolicy and externalTrafficPolicy to Local)",
                )
            )
            continue
        ready = vm.ready and not vm.deleting
        endpoints.append(
            {
                "addresses": [vm.address],
                "conditions": {"ready": ready, "serving": ready, "terminating": vm.deleting},
                "nodeName": node,
                "targetRef": {
                    "apiVersion": names.API_VERSION,
                    "kind": names.VM_KIND,
                    "namespace": svc.namespace,
                    "name": vm.name,
                    "uid": vm.uid,
                },
            }
        )
        if ready:
            out.open_ports += [(vm.address, p["protocol"], p["port"]) for p in ports]
    if len(endpoints) > MAX_ENDPOINTS:
        out.warnings.append(("TooManyVMs", f"{len(endpoints)} VMs match; the first {MAX_ENDPOINTS} are published"))
        endpoints = endpoints[:MAX_ENDPOINTS]
    out.slice = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(svc.name, node),
            "namespace": svc.namespace,
            "labels": {LABEL_SERVICE_NAME: svc.name, LABEL_MANAGED_BY: MANAGED_BY, LABEL_NODE: node},
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "name": svc.name,
                    "uid": svc.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    }
    return out


def differs(desired: Mapping[str, Any], current: Mapping[str, Any] | None) -> bool:
    """True when the published slice must be rewritten (only the parts we own are compared)."""
    if current is None:
        return True
    md, cmd = desired["metadata"], current.get("metadata") or {}

    def norm_eps(eps: Any) -> list[Any]:
        return [
            (
                tuple(e.get("addresses") or ()),
                tuple(sorted((e.get("conditions") or {}).items())),
                e.get("nodeName"),
                (e.get("targetRef") or {}).get("uid"),
            )
            for e in eps or []
        ]

    def norm_ports(ports: Any) -> list[Any]:
        return [(p.get("name") or "", p.get("port"), p.get("protocol") or "TCP") for p in ports or []]

    return (
        any((cmd.get("labels") or {}).get(k) != v for k, v in md["labels"].items())
        or [o.get("uid") for o in cmd.get("ownerReferences") or []] != [o["uid"] for o in md["ownerReferences"]]
        or norm_eps(desired["endpoints"]) != norm_eps(current.get("endpoints"))
        or norm_ports(desired["ports"]) != norm_ports(current.get("ports"))
    )
