"""/namespaces."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from ..api import check_name, created, json_body, op
from ..conventions import delete_options, versioned
from ..errors import Problem
from ..k8s import core_path
from ..schemas import require_object, validate
from . import deletion_accepted, kube, list_items

bp = Blueprint("namespaces", __name__)

PROTECTED = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})


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
    if name in PROTECTED:
        raise Problem(409, f"namespace {name!r} is a system namespace and cannot be deleted", reason="Protected")
    kube().delete(core_path("namespaces", name=name), body=delete_options())
    return deletion_accepted("Namespace", name)
