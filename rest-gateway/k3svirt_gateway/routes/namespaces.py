"""/namespaces."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

from ..api import check_name, created, json_body, op
from ..conventions import delete_options, versioned
from ..errors import Problem
from ..k8s import core_path
from ..schemas import require_object, validate
from . import deletion_accepted, kube, list_items

bp = Blueprint("namespaces", __name__)

# Namespaces the cluster or k3svirt itself lives in: never deleted through the gateway (403).
PROTECTED = frozenset({"default", "kube-system", "kube-public", "kube-node-lease", "k3svirt-system"})
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def protected_namespaces() -> frozenset[str]:
    """PROTECTED, the gateway's own namespace (its pod's service account namespace, and the one of
    its API-key Secret) and any listed in K3SVIRT_PROTECTED_NAMESPACES."""
    cfg = current_app.config
    extra = {n.strip() for n in (cfg.get("PROTECTED_NAMESPACES") or "").split(",") if n.strip()}
    if cfg.get("API_KEYS_SECRET"):
        extra.add(str(cfg["API_KEYS_SECRET"]).partition("/")[0])
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as fh:
            extra.add(fh.read().strip())
    except OSError:
        pass  # not running in a pod
    return PROTECTED | {n for n in extra if n}


def blueprints() -> list[Blueprint]:
    return [bp]


def view(obj: dict[str, Any]) -> dict[str, Any]:
    md = obj.get("metadata") or {}
    out = {
        "name": md.get("name", ""),
        "phase": (obj.get("status") or {}).get("phase", ""),
        "labels": md.get("labels") or {},
    }
    if md.get("creationTimestamp"):
        out["created"] = md["creationTimestamp"]
    return out


@op(
    bp,
    "/namespaces",
    "GET",
    summary="List namespaces",
    response=(200, "NamespaceList", "namespaces"),
    query=("labelSelector",),
    paged=True,
)
def list_namespaces():
    return list_items(lambda _ns, query: kube().get(core_path("namespaces"), query=query), view, namespaced=False)


@op(
    bp,
    "/namespaces",
    "POST",
    summary="Create a namespace",
    body="NamespaceCreate",
    response=(201, "Namespace", "created"),
)
def create_namespace():
    body = validate("NamespaceCreate", require_object(json_body()))
    labels = {**(body.get("labels") or {}), "app.kubernetes.io/managed-by": "k3svirt-gateway"}
    obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": body["name"], "labels": labels}}
    out = kube().post(core_path("namespaces"), obj)
    return created(view(out), f"/api/v1/namespaces/{body['name']}")


@op(
    bp,
    "/namespaces/<name>",
    "GET",
    summary="Get a namespace",
    response=(200, "Namespace", "the namespace"),
    names="label",
    etag=True,
    namespace_param="name",
)
def get_namespace(name: str):
    return view(versioned(kube().get(core_path("namespaces", name=check_name(name, label=True)))))


@op(
    bp,
    "/namespaces/<name>",
    "DELETE",
    summary="Delete a namespace and everything in it (system namespaces refused)",
    response=(202, "Accepted", "deletion accepted"),
    names="label",
)
def delete_namespace(name: str):
    check_name(name, label=True)
    if name in protected_namespaces():
        raise Problem(
            403,
            f"namespace {name!r} is a system namespace (the cluster's or k3svirt's own) and cannot be "
            "deleted through the gateway",
            reason="SystemNamespace",
        )
    kube().delete(core_path("namespaces", name=name), body=delete_options())
    return deletion_accepted("Namespace", name)
