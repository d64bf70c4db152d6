"""/nodes and container monitoring (/pods/{name}/stats, /stats/pods).

Figures come from the kubelet's Summary API read through the API server's node proxy
(`/api/v1/nodes/{node}/proxy/stats/summary`, RBAC `nodes/proxy` get): the gateway never talks to a
node directly. Shaping is pure (podstats.py, nodeview.py); rates: see podstats.py."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Blueprint, current_app
from k3svirt_common import schema as crd_schema
from k3svirt_common import templates as tmod

from ..api import check_name, namespace, op, query_str
from ..errors import Problem
from ..k8s import core_path
from ..nodeview import node_usage, node_view, resources
from ..podstats import RateTracker, find_pod, pod_stats_view, totals, unavailable
from ..podview import pod_view
from . import kube
from .pods import pod_state_conflict
from .vms import template_path, vm_path

log = logging.getLogger(__name__)

nodes = Blueprint("nodes", __name__)
stats = Blueprint("stats", __name__)

SOURCE = "kubelet Summary API via the API server's node proxy (/api/v1/nodes/{node}/proxy/stats/summary)"


def blueprints() -> list[Blueprint]:
    return [nodes, stats]


def rates() -> RateTracker:
    return current_app.extensions.setdefault("k3svirt.rates", RateTracker())


# ------------------------------------------------------------------------------- kubelet access
def node_summary(node: str) -> dict[str, Any]:
    try:
        out = kube().get(core_path("nodes", None, node, "proxy/stats/summary"))
    except Problem as exc:
        # 400 is the API server refusing the proxy itself (e.g. "address not allowed": the node's
        # preferred address is loopback); the path is ours, so neither is the caller's fault.
        if exc.status in (400, 503):
            raise Problem(
                503,
                f"the kubelet of node {node!r} did not answer through the API server: {exc.detail}",
                headers={"Retry-After": "10"},
            ) from exc
        raise
    if not isinstance(out, dict):
        raise Problem(503, f"the kubelet of node {node!r} answered a non-object Summary", headers={"Retry-After": "10"})
    return out


def node_capacity(node: str) -> dict[str, float | None]:
    cap = resources((kube().get(core_path("nodes", None, node)).get("status") or {}).get("capacity"))
    return {"cpu": cap["cpuCores"], "memory": cap["memoryBytes"]}


# --------------------------------------------------------------------------------- pod stats
def _not_measurable(name: str, pod: dict[str, Any], why: str) -> Problem:
    return pod_state_conflict("stats", name, pod, why, "PodNotRunning")


@op(
    stats,
    "/pods/<name>/stats",
    "GET",
    summary="A Pod's CPU, memory, network and filesystem figures (kubelet Summary API)",
    response=(200, "PodStats", "the pod's figures"),
    query=("namespace",),
)
def pod_stats(name: str):
    """CPU in cores and % of the node's cores (and of the pod's CPU limit when every container has
    one), memory working set (and % of the memory limit), network rx/tx bytes (cumulative) and
    bytes/s (from two kubelet samples this gateway process has seen, with their window; null until
    then), filesystem usage (container rootfs + logs). 409 when the pod is not on a node or the kubelet
    has not measured it; 503 when the kubelet cannot be reached through the API server."""
    ns = namespace()
    pod = kube().get(core_path("pods", ns, check_name(name)))
    node = (pod.get("spec") or {}).get("nodeName")
    if not node:
        raise _not_measurable(name, pod, "it is not scheduled on a node yet")
    entry = find_pod(node_summary(node), pod)
    if entry is None:
        if (pod.get("status") or {}).get("phase") == "Running":
            raise Problem(
                503,
                f"the kubelet of node {node!r} has not measured pod {name!r} yet",
                headers={"Retry-After": "10"},
            )
        raise _not_measurable(name, pod, f"the kubelet of node {node!r} has no figures for it")
    out = pod_stats_view(entry, pod, node_capacity(node), rates())
    out["status"] = pod_view(pod)["status"]
    out["source"] = SOURCE.replace("{node}", node)
    return out


@op(
    stats,
    "/stats/pods",
    "GET",
    summary="CPU, memory, network and filesystem figures of every Pod in a namespace, with totals",
    response=(200, "PodStatsList", "figures per pod and namespace totals"),
    query=("namespace", "labelSelector"),
)
def namespace_pod_stats():
    """One Summary per node that runs a selected pod. Pods without figures (not scheduled, not yet
    measured, kubelet unreachable) are listed with `available: false` and the reason; totals sum the
    pods that have figures."""
    ns = namespace()
    listed = kube().get(core_path("pods", ns), query={"labelSelector": query_str("labelSelector") or None})
    by_node: dict[str, list[dict[str, Any]]] = {}
    items: list[dict[str, Any]] = []
    for pod in listed.get("items", []):
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            by_node.setdefault(node, []).append(pod)
        else:
            items.append({**unavailable(pod, "not scheduled on a node yet"), "status": pod_view(pod)["status"]})
    for node, node_pods in sorted(by_node.items()):
        try:
            summary, capacity = node_summary(node), node_capacity(node)
        except Problem as exc:
            items += [{**unavailable(p, exc.detail), "status": pod_view(p)["status"]} for p in node_pods]
            continue
        for pod in node_pods:
            entry = find_pod(summary, pod)
            status = pod_view(pod)["status"]
            if entry is None:
                items.append(
                    {**unavailable(pod, f"the kubelet of node {node!r} has no figures for it"), "status": status}
                )
            else:
                items.append({**pod_stats_view(entry, pod, capacity, rates()), "status": status})
    items.sort(key=lambda i: i["name"])
    return {"namespace": ns, "items": items, "totals": totals(items), "source": SOURCE}


# -------------------------------------------------------------------------------------- nodes
def _merged_specs(vms: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Each placed VM with its effective spec (template + presets + own fields + defaults), or None
    when its template cannot be resolved. Templates are read once per request."""
    seen: dict[tuple[str, str], dict[str, Any] | None] = {}

    def getter(ns: str) -> Callable[[str], dict[str, Any] | None]:
        def get(name: str) -> dict[str, Any] | None:
            if (ns, name) not in seen:
                try:
                    seen[(ns, name)] = kube().get(template_path(ns, name))
                except Problem as exc:
                    if exc.status != 404:
                        raise
                    seen[(ns, name)] = None
            return seen[(ns, name)]

        return get

    out: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
    for vm in vms:
        status = vm.get("status") or {}
        if not status.get("node"):
            continue
        spec = vm.get("spec") or {}
        try:
            if spec.get("template") or spec.get("presets"):
                spec = tmod.expand(
                    spec,
                    getter((vm.get("metadata") or {}).get("namespace", "")),
                    resolved_template=status.get("resolvedTemplate"),
                    resolved_presets=status.get("resolvedPresets") or [],
                    validate=False,
                ).spec
            out.append((vm, crd_schema.apply_vm_defaults(spec)))
        except tmod.TemplateError:
            out.append((vm, None))
    return out


def _with_usage(node: dict[str, Any], vms: list[tuple[dict[str, Any], Any]], pods: list[dict[str, Any]]):
    return {**node_view(node), "usage": node_usage(node, vms, pods)}


@op(
    nodes,
    "/nodes",
    "GET",
    summary="List Nodes: capacity, allocatable, conditions, and what VMs and pods take",
    response=(200, "NodeList", "nodes"),
    query=("labelSelector",),
)
def list_nodes():
    listed = kube().get(core_path("nodes"), query={"labelSelector": query_str("labelSelector") or None})
    vms = _merged_specs(kube().get(vm_path(None)).get("items", []))
    pods = kube().get(core_path("pods")).get("items", [])
    return {"items": [_with_usage(n, vms, pods) for n in listed.get("items", [])]}


@op(
    nodes,
    "/nodes/<name>",
    "GET",
    summary="Get a Node: capacity, allocatable, conditions, addresses, versions, VM and pod usage",
    response=(200, "Node", "the node"),
)
def get_node(name: str):
    """usage.vms sums vCPUs and guest RAM of the VirtualMachines whose status.node is this node and
    that hold a domain (Running, Paused, Starting, Stopping); usage.pods sums the requests of its
    non-terminated pods; usage.total compares both with allocatable."""
    node = kube().get(core_path("nodes", None, check_name(name)))
    vms = _merged_specs(kube().get(vm_path(None)).get("items", []))
    pods = kube().get(core_path("pods"), query={"fieldSelector": f"spec.nodeName={name}"}).get("items", [])
    return _with_usage(node, vms, pods)
