"""Pure Deployment shaping: the object the gateway creates from a request, the changes a PATCH makes to
it, and the view (with rollout progress like `kubectl rollout status`) it answers with."""

from __future__ import annotations

import copy
from typing import Any

MANAGED_BY = {"app.kubernetes.io/managed-by": "k3svirt-gateway"}
# No registry is reachable from a k3svirt node: images are imported, so never pull what is present.
DEFAULT_PULL_POLICY = "IfNotPresent"


def _ports(ports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in ports:
        port = {"containerPort": p["port"], "protocol": p.get("protocol", "TCP")}
        if p.get("name"):
            port = {"name": p["name"], **port}
        out.append(port)
    return out


def _apply_container_fields(container: dict[str, Any], body: dict[str, Any]) -> None:
    """Set the container fields a request names; an empty env/command/args/resources clears them."""
    if "image" in body:
        container["image"] = body["image"]
    if "imagePullPolicy" in body:
        container["imagePullPolicy"] = body["imagePullPolicy"]
    if "env" in body:
        container["env"] = [{"name": k, "value": v} for k, v in body["env"].items()]
    for key in ("command", "args"):
        if key in body:
            container[key] = list(body[key])
    if "resources" in body:
        container["resources"] = copy.deepcopy(body["resources"])
    for key in ("env", "command", "args", "resources"):
        if key in container and not container[key]:
            del container[key]


def build_deployment(ns: str, body: dict[str, Any]) -> dict[str, Any]:
    """The apps/v1 Deployment for a validated DeploymentCreate body."""
    name = body["name"]
    labels = {"app": name}
    container: dict[str, Any] = {"name": name, "image": body["image"], "imagePullPolicy": DEFAULT_PULL_POLICY}
    if body.get("ports"):
        container["ports"] = _ports(body["ports"])
    _apply_container_fields(container, {k: v for k, v in body.items() if k != "image"})
    return {
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


def apply_update(obj: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """`obj` (a Deployment as read) with a validated DeploymentUpdate applied to its first container
    and replica count. Any pod-template change makes the Deployment controller roll out a new
    ReplicaSet; a replicas-only change just scales."""
    out = copy.deepcopy(obj)
    spec = out.setdefault("spec", {})
    if "replicas" in body:
        spec["replicas"] = body["replicas"]
    containers = spec.setdefault("template", {}).setdefault("spec", {}).setdefault("containers", [{}])
    _apply_container_fields(containers[0], body)
    return out


def rollout(obj: dict[str, Any]) -> str:
    """Complete, Progressing, Failed (progress deadline exceeded) or Deleting - the checks of
    `kubectl rollout status`: the controller saw the spec, every wanted replica runs the new template
    and is available, and no old replica is left."""
    md = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    st = obj.get("status") or {}
    if md.get("deletionTimestamp"):
        return "Deleting"
    if int(st.get("observedGeneration", 0)) < int(md.get("generation", 0)):
        return "Progressing"
    for cond in st.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return "Failed"
    want = int(spec.get("replicas", 1))
    updated = int(st.get("updatedReplicas", 0))
    if updated < want or int(st.get("replicas", 0)) > updated or int(st.get("availableReplicas", 0)) < updated:
        return "Progressing"
    return "Complete"


def deployment_view(obj: dict[str, Any]) -> dict[str, Any]:
    md = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    first = containers[0]
    out: dict[str, Any] = {"name": md.get("name", ""), "namespace": md.get("namespace", "")}
    if md.get("creationTimestamp"):
        out["created"] = md["creationTimestamp"]
    out.update(
        {
            "image": first.get("image", ""),
            "imagePullPolicy": first.get("imagePullPolicy", ""),
            "replicas": spec.get("replicas", 1),
            "readyReplicas": status.get("readyReplicas", 0),
            "availableReplicas": status.get("availableReplicas", 0),
            "updatedReplicas": status.get("updatedReplicas", 0),
            "unavailableReplicas": status.get("unavailableReplicas", 0),
            "generation": md.get("generation", 0),
            "observedGeneration": status.get("observedGeneration", 0),
            "rollout": rollout(obj),
            "deleting": bool(md.get("deletionTimestamp")),
            "ports": [
                {k: p[k] for k in ("name", "containerPort", "protocol") if k in p} for p in first.get("ports") or []
            ],
            "env": {e["name"]: e.get("value", "") for e in first.get("env") or [] if "name" in e},
            "command": first.get("command") or [],
            "args": first.get("args") or [],
            "resources": first.get("resources") or {},
            "labels": md.get("labels") or {},
            "conditions": [
                {k: c[k] for k in ("type", "status", "reason", "message") if k in c}
                for c in status.get("conditions") or []
            ],
        }
    )
    return out
