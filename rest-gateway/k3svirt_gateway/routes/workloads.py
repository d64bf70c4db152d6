"""/deployments, /services: plain K3s workloads, in small request/response shapes of our own
(shaped by deployview.py)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from k3svirt_common import vmservice

from ..api import check_name, created, json_body, namespace, op
from ..conventions import check_version, delete_options, if_match, versioned, with_version
from ..deployview import MANAGED_BY, apply_update, build_deployment, deployment_view
from ..errors import Problem, validation_problem
from ..k8s import core_path, group_path
from ..schemas import require_object, validate
from . import deletion_accepted, kube, list_items
from .vms import vm_path

deployments = Blueprint("deployments", __name__)
services = Blueprint("services", __name__)


def blueprints() -> list[Blueprint]:
    return [deployments, services]


def dep_path(ns: str, name: str | None = None, sub: str | None = None) -> str:
    return group_path("apps", "v1", "deployments", ns, name, sub)


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    md = obj.get("metadata") or {}
    out: dict[str, Any] = {"name": md.get("name", ""), "namespace": md.get("namespace", "")}
    if md.get("creationTimestamp"):
        out["created"] = md["creationTimestamp"]
    return out


# ----------------------------------------------------------------- deployments
@op(
    deployments,
    "/deployments",
    "POST",
    summary="Create a Deployment from an image",
    body="DeploymentCreate",
    response=(201, "Deployment", "created"),
    query=("namespace",),
)
def create_deployment():
    """imagePullPolicy defaults to IfNotPresent: images are imported on the node (no registry)."""
    ns = namespace()
    body = validate("DeploymentCreate", require_object(json_body()))
    out = kube().post(dep_path(ns), build_deployment(ns, body))
    return created(deployment_view(out), f"/api/v1/deployments/{body['name']}?namespace={ns}")


@op(
    deployments,
    "/deployments",
    "GET",
    summary="List Deployments",
    response=(200, "DeploymentList", "deployments"),
    query=("namespace", "labelSelector"),
    paged=True,
)
def list_deployments():
    return list_items(lambda ns, query: kube().get(dep_path(ns), query=query), deployment_view)


@op(
    deployments,
    "/deployments/<name>",
    "GET",
    summary="Get a Deployment",
    response=(200, "Deployment", "the deployment"),
    query=("namespace",),
    etag=True,
)
def get_deployment(name: str):
    ns = namespace()
    return deployment_view(versioned(kube().get(dep_path(ns, check_name(name)))))


def _scale(name: str) -> Any:
    ns = namespace()
    check_name(name)
    body = validate("Scale", require_object(json_body()))
    kube().patch(dep_path(ns, name, "scale"), with_version({"spec": {"replicas": body["replicas"]}}))
    return deployment_view(kube().get(dep_path(ns, name)))


@op(
    deployments,
    "/deployments/<name>/scale",
    "PATCH",
    role="operate",
    summary="Scale a Deployment",
    body="Scale",
    response=(200, "Deployment", "scaled"),
    query=("namespace",),
)
def scale_deployment(name: str):
    return _scale(name)


@op(
    deployments,
    "/deployments/<name>/scale",
    "POST",
    role="operate",
    summary="Scale a Deployment (POST alias of PATCH)",
    body="Scale",
    response=(200, "Deployment", "scaled"),
    query=("namespace",),
    operation_id="scale_deployment_post",
    conditional=True,
)
def scale_deployment_post(name: str):
    return _scale(name)


@op(
    deployments,
    "/deployments/<name>",
    "DELETE",
    summary="Delete a Deployment (and, in the foreground, its ReplicaSets and Pods)",
    response=(202, "Accepted", "deletion accepted"),
    query=("namespace",),
)
def delete_deployment(name: str):
    """propagationPolicy Foreground: the Deployment stays visible (`deleting: true`, `rollout: Deleting`)
    until the garbage collector has removed its ReplicaSets and their Pods, so `GET` answering 404
    means the pods are gone too."""
    ns = namespace()
    kube().request("DELETE", dep_path(ns, check_name(name)), body=delete_options(propagationPolicy="Foreground"))
    return deletion_accepted(
        "Deployment", name, ns, "deletion requested; the Deployment is gone (404) once its ReplicaSets and Pods are"
    )


@op(
    deployments,
    "/deployments/<name>",
    "PATCH",
    summary="Change a Deployment's image, env, command/args, resources or replicas",
    body="DeploymentUpdate",
    response=(200, "Deployment", "updated"),
    query=("namespace",),
)
def update_deployment(name: str):
    """Fields name the first container; `env`, `command`, `args` and `resources` replace what is there
    (an empty value clears it). A change to the pod template is a rolling update: the Deployment
    controller creates a new ReplicaSet and scales the old one down (watch `rollout` become
    Complete); `replicas` alone just scales. Read-modify-write with the object's resourceVersion
    (retried on a concurrent change; with If-Match: at that version only, else 412)."""
    ns = namespace()
    check_name(name)
    body = validate("DeploymentUpdate", require_object(json_body()))
    attempts = 1 if if_match() else 3
    for attempt in range(attempts):
        current = kube().get(dep_path(ns, name))
        check_version(current)  # with If-Match: 412 unless at that version; the PUT carries the version read
        try:
            return deployment_view(kube().put(dep_path(ns, name), apply_update(current, body)))
        except Problem as exc:
            if exc.status != 409 or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


# -------------------------------------------------------------------- services
def service_view(obj: dict[str, Any]) -> dict[str, Any]:
    out = _meta(obj)
    spec = obj.get("spec") or {}
    out.update(
        {
            "type": spec.get("type", "ClusterIP"),
            "clusterIP": spec.get("clusterIP", ""),
            "selector": spec.get("selector") or {},
            **({"vmSelector": vm_selector} if (vm_selector := _vm_selector_of(obj)) is not None else {}),
            "ports": [
                {k: p[k] for k in ("name", "port", "targetPort", "protocol", "nodePort") if k in p}
                for p in spec.get("ports") or []
            ],
        }
    )
    return out


def _vm_selector_of(obj: dict[str, Any]) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(vmservice.ANNOTATION_VM_SELECTOR)


def _vm_selector(ns: str, body: dict[str, Any]) -> str | None:
    """The VM selector of a Service that fronts VMs (None: one that selects pods). `vm` must name an
    existing VM of the namespace (as kubectl expose refuses a missing object)."""
    chosen = [k for k in ("selector", "deployment", "vm", "vmSelector") if k in body]
    if len(chosen) > 1:
        raise validation_problem([{"field": chosen[1], "message": f"give only one of {', '.join(chosen)}"}])
    if "vm" in body:
        kube().get(vm_path(ns, body["vm"]))  # 404 if missing
        return vmservice.vm_name_selector(body["vm"])
    if "vmSelector" in body:
        try:
            vmservice.parse_selector(body["vmSelector"])
        except vmservice.SelectorError as exc:
            raise validation_problem([{"field": "vmSelector", "message": str(exc)}]) from exc
        return body["vmSelector"]
    return None


@op(
    services,
    "/services",
    "POST",
    summary="Create a Service (e.g. expose a Deployment)",
    body="ServiceCreate",
    response=(201, "Service", "created"),
    query=("namespace",),
)
def create_service():
    ns = namespace()
    body = validate("ServiceCreate", require_object(json_body()))
    name = body["name"]
    vm_selector = _vm_selector(ns, body)
    ports = []
    for i, p in enumerate(body["ports"]):
        port = {
            "port": p["port"],
            "targetPort": p.get("targetPort", p["port"]),
            "protocol": p.get("protocol", "TCP"),
        }
        port["name"] = p.get("name") or f"p{i}-{p['port']}"
        if "nodePort" in p:
            if body.get("type") != "NodePort":
                raise validation_problem([{"field": f"ports[{i}].nodePort", "message": "needs type NodePort"}])
            port["nodePort"] = p["nodePort"]
        ports.append(port)
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": dict(MANAGED_BY)},
        "spec": {"type": body.get("type", "ClusterIP"), "ports": ports},
    }
    if vm_selector is None:
        obj["spec"]["selector"] = body.get("selector") or {"app": body.get("deployment") or name}
    else:  # selector-less: the node operators publish the VMs' endpoints (docs/services.md)
        obj["metadata"]["annotations"] = {vmservice.ANNOTATION_VM_SELECTOR: vm_selector}
    out = kube().post(core_path("services", ns), obj)
    return created(service_view(out), f"/api/v1/services/{name}?namespace={ns}")


@op(
    services,
    "/services",
    "GET",
    summary="List Services",
    response=(200, "ServiceList", "services"),
    query=("namespace", "labelSelector"),
    paged=True,
)
def list_services():
    return list_items(lambda ns, query: kube().get(core_path("services", ns), query=query), service_view)


@op(
    services,
    "/services/<name>",
    "GET",
    summary="Get a Service",
    response=(200, "Service", "the service"),
    query=("namespace",),
    names="label",
    etag=True,
)
def get_service(name: str):
    ns = namespace()
    return service_view(versioned(kube().get(core_path("services", ns, check_name(name, label=True)))))


@op(
    services,
    "/services/<name>",
    "DELETE",
    summary="Delete a Service",
    response=(202, "Accepted", "deletion accepted"),
    query=("namespace",),
    names="label",
)
def delete_service(name: str):
    ns = namespace()
    kube().delete(core_path("services", ns, check_name(name, label=True)), body=delete_options())
    return deletion_accepted("Service", name, ns)
