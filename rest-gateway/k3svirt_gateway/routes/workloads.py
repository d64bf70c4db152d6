"""/deployments, /services, /pods: plain K3s workloads, in small request/response shapes of our own."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from ..api import check_name, created, json_body, namespace, op
from ..errors import Problem
from ..k8s import core_path, group_path
from ..schemas import require_object, validate
from . import kube

deployments = Blueprint("deployments", __name__)
services = Blueprint("services", __name__)
pods = Blueprint("pods", __name__)

MANAGED_BY = {"app.kubernetes.io/managed-by": "k3svirt-gateway"}


def blueprints() -> list[Blueprint]:
    return [deployments, services, pods]


def dep_path(ns: str, name: str | None = None, sub: str | None = None) -> str:
    return group_path("apps", "v1", "deployments", ns, name, sub)


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    md = obj.get("metadata") or {}
    out: dict[str, Any] = {"name": md.get("name", ""), "namespace": md.get("namespace", "")}
    if md.get("creationTimestamp"):
        out["created"] = md["creationTimestamp"]
    return out


# ----------------------------------------------------------------- deployments
def deployment_view(obj: dict[str, Any]) -> dict[str, Any]:
    out = _meta(obj)
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    first = containers[0]
    out.update(
        {
            "image": first.get("image", ""),
            "replicas": spec.get("replicas", 1),
            "readyReplicas": status.get("readyReplicas", 0),
            "availableReplicas": status.get("availableReplicas", 0),
            "ports": [
                {k: p[k] for k in ("name", "containerPort", "protocol") if k in p} for p in first.get("ports") or []
            ],
            "env": {e["name"]: e.get("value", "") for e in first.get("env") or [] if "name" in e},
            "labels": (obj.get("metadata") or {}).get("labels") or {},
        }
    )
    return out


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
    ns = namespace()
    body = validate("DeploymentCreate", require_object(json_body()))
    name = body["name"]
    labels = {"app": name}
    container: dict[str, Any] = {"name": name, "image": body["image"]}
    if body.get("ports"):
        container["ports"] = [
            {
                k: v
                for k, v in {
                    "name": p.get("name"),
                    "containerPort": p["port"],
                    "protocol": p.get("protocol", "TCP"),
                }.items()
                if v is not None
            }
            for p in body["ports"]
        ]
    if body.get("env"):
        container["env"] = [{"name": k, "value": v} for k, v in body["env"].items()]
    for key in ("command", "args"):
        if body.get(key):
            container[key] = body[key]
    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {**(body.get("labels") or {}), **labels, **MANAGED_BY},
        },
        "spec": {
            "replicas": body.get("replicas", 1),
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }
    out = kube().post(dep_path(ns), obj)
    return created(deployment_view(out), f"/api/v1/deployments/{name}?namespace={ns}")


@op(
    deployments,
    "/deployments",
    "GET",
    summary="List Deployments",
    response=(200, "DeploymentList", "deployments"),
    query=("namespace", "labelSelector"),
)
def list_deployments():
    ns = namespace()
    out = kube().get(dep_path(ns), query={"labelSelector": request.args.get("labelSelector") or None})
    return {"items": [deployment_view(o) for o in out.get("items", [])]}


@op(
    deployments,
    "/deployments/<name>",
    "GET",
    summary="Get a Deployment",
    response=(200, "Deployment", "the deployment"),
    query=("namespace",),
)
def get_deployment(name: str):
    ns = namespace()
    return deployment_view(kube().get(dep_path(ns, check_name(name))))


def _scale(name: str) -> Any:
    ns = namespace()
    check_name(name)
    body = validate("Scale", require_object(json_body()))
    kube().patch(dep_path(ns, name, "scale"), {"spec": {"replicas": body["replicas"]}})
    return deployment_view(kube().get(dep_path(ns, name)))


@op(
    deployments,
    "/deployments/<name>/scale",
    "PATCH",
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
    summary="Scale a Deployment (POST alias of PATCH)",
    body="Scale",
    response=(200, "Deployment", "scaled"),
    query=("namespace",),
    operation_id="scale_deployment_post",
)
def scale_deployment_post(name: str):
    return _scale(name)


@op(
    deployments,
    "/deployments/<name>",
    "DELETE",
    summary="Delete a Deployment (and its pods)",
    response=(202, "Accepted", "deletion accepted"),
    query=("namespace",),
)
def delete_deployment(name: str):
    ns = namespace()
    kube().request("DELETE", dep_path(ns, check_name(name)), body={"propagationPolicy": "Background"})
    return {"kind": "Deployment", "name": name, "namespace": ns, "message": "deletion requested"}, 202


# -------------------------------------------------------------------- services
def service_view(obj: dict[str, Any]) -> dict[str, Any]:
    out = _meta(obj)
    spec = obj.get("spec") or {}
    out.update(
        {
            "type": spec.get("type", "ClusterIP"),
            "clusterIP": spec.get("clusterIP", ""),
            "selector": spec.get("selector") or {},
            "ports": [
                {k: p[k] for k in ("name", "port", "targetPort", "protocol", "nodePort") if k in p}
                for p in spec.get("ports") or []
            ],
        }
    )
    return out


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
    selector = body.get("selector") or {"app": body.get("deployment") or name}
    ports = []
    for i, p in enumerate(body["ports"]):
        port = {
            "port": p["port"],
            "targetPort": p.get("targetPort", p["port"]),
            "protocol": p.get("protocol", "TCP"),
        }
        port["name"] = p.get("name") or f"p{i}-{p['port']}"
        ports.append(port)
    obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": dict(MANAGED_BY)},
        "spec": {"type": body.get("type", "ClusterIP"), "selector": selector, "ports": ports},
    }
    out = kube().post(core_path("services", ns), obj)
    return created(service_view(out), f"/api/v1/services/{name}?namespace={ns}")


@op(
    services,
    "/services",
    "GET",
    summary="List Services",
    response=(200, "ServiceList", "services"),
    query=("namespace", "labelSelector"),
)
def list_services():
    ns = namespace()
    out = kube().get(core_path("services", ns), query={"labelSelector": request.args.get("labelSelector") or None})
    return {"items": [service_view(o) for o in out.get("items", [])]}


@op(
    services,
    "/services/<name>",
    "GET",
    summary="Get a Service",
    response=(200, "Service", "the service"),
    query=("namespace",),
    names="label",
)
def get_service(name: str):
    ns = namespace()
    return service_view(kube().get(core_path("services", ns, check_name(name, label=True))))


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
    kube().delete(core_path("services", ns, check_name(name, label=True)))
    return {"kind": "Service", "name": name, "namespace": ns, "message": "deletion requested"}, 202


# ------------------------------------------------------------------------ pods
def pod_view(obj: dict[str, Any]) -> dict[str, Any]:
    out = _meta(obj)
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    cstat = status.get("containerStatuses") or []
    out.update(
        {
            "phase": status.get("phase", "Unknown"),
            "node": spec.get("nodeName", ""),
            "podIP": status.get("podIP", ""),
            "ready": bool(cstat) and all(cs.get("ready") for cs in cstat),
            "restarts": sum(int(cs.get("restartCount", 0)) for cs in cstat),
            "containers": [ct.get("name", "") for ct in spec.get("containers") or []],
            "labels": (obj.get("metadata") or {}).get("labels") or {},
            "conditions": [
                {k: cond[k] for k in ("type", "status", "reason", "message") if k in cond}
                for cond in status.get("conditions") or []
            ],
        }
    )
    return out


@op(
    pods,
    "/pods",
    "GET",
    summary="List Pods with their status",
    response=(200, "PodList", "pods"),
    query=("namespace", "labelSelector"),
)
def list_pods():
    ns = namespace()
    out = kube().get(core_path("pods", ns), query={"labelSelector": request.args.get("labelSelector") or None})
    return {"items": [pod_view(o) for o in out.get("items", [])]}


@op(pods, "/pods/<name>", "GET", summary="Get a Pod", response=(200, "Pod", "the pod"), query=("namespace",))
def get_pod(name: str):
    ns = namespace()
    return pod_view(kube().get(core_path("pods", ns, check_name(name))))


@op(
    pods,
    "/pods/<name>/logs",
    "GET",
    summary="A Pod's container log (text)",
    response=(200, None, "log text"),
    response_type="text/plain",
    query=("namespace", "container", "tailLines"),
)
def pod_logs(name: str):
    ns = namespace()
    pod = kube().get(core_path("pods", ns, check_name(name)))
    status = pod.get("status") or {}
    node = (pod.get("spec") or {}).get("nodeName")
    phase = status.get("phase", "Unknown")
    if not node or phase == "Pending" and not status.get("containerStatuses"):
        raise Problem(
            409,
            f"pod {name!r} has not started (phase {phase}, node {node or 'none'}); no logs yet",
            reason="PodNotStarted",
        )
    query: dict[str, Any] = {}
    container = request.args.get("container")
    if container:
        query["container"] = check_name(container, "container", label=True)
    tail = request.args.get("tailLines")
    if tail is not None:
        if not tail.isdigit() or int(tail) > 100000:
            raise Problem(
                422,
                "tailLines must be an integer between 0 and 100000",
                title="Validation failed",
                errors=[{"field": "tailLines", "message": "integer 0..100000"}],
            )
        query["tailLines"] = tail
    try:
        text = kube().request("GET", core_path("pods", ns, name, "log"), query=query, accept="text/plain", raw=True)
    except Problem as exc:
        if exc.status in (400, 404) and "container" not in query:
            raise Problem(409, f"logs of pod {name!r} are not available: {exc.detail}") from exc
        if exc.status >= 500:
            raise Problem(
                503,
                f"logs of pod {name!r} unavailable (kubelet unreachable): {exc.detail}",
                headers={"Retry-After": "10"},
            ) from exc
        raise
    return Response(text, mimetype="text/plain")
